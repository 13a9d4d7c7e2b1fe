//! Experiments on faults: memory that is not mapped or not writable or not executable, ports
//! not granted, and a thread that faults forever.

use alloc::format;

use isolation::proto::{self, mode};
use rt::{syscall, Start};

use crate::{ensure, ok, probe, Ctx, Fault, Outcome, GO};

const PAGE_FAULT: u64 = 14;
const GENERAL_PROTECTION: u64 = 13;
/// Page-fault error code bits.
const PF_PRESENT: u64 = 1;
const PF_WRITE: u64 = 2;
const PF_USER: u64 = 4;
const PF_FETCH: u64 = 16;

/// What a probe's fault must look like.
#[derive(Clone, Copy)]
struct Expect {
    what: &'static str,
    vector: u64,
    rip: u64,
    /// The faulting address, where the vector reports one.
    address: Option<u64>,
    /// Error-code bits compared, and their expected value.
    mask: u64,
    error: u64,
}

/// Runs `probe`, which must fault exactly once, and checks what the handler recorded.
fn trap(
    ctx: &mut Ctx,
    expect: Expect,
    probe: fn() -> bool,
) -> Result<Fault, alloc::string::String> {
    let before = ctx.last_fault()?.count;
    let faulted = probe();
    check_trap(ctx, expect, before, faulted)
}

/// Checks that a probe made after the handler counted `before` faults faulted exactly once, as
/// `expect` says.
fn check_trap(
    ctx: &mut Ctx,
    expect: Expect,
    before: u64,
    faulted: bool,
) -> Result<Fault, alloc::string::String> {
    let fault = ctx.last_fault()?;
    let what = expect.what;
    ensure!(faulted, "{what}: no trap");
    ensure!(
        fault.count == before + 1,
        "{what}: the handler saw {} fault messages, expected 1",
        fault.count - before
    );
    ensure!(
        fault.vector == expect.vector,
        "{what}: vector {}, expected {}",
        fault.vector,
        expect.vector
    );
    ensure!(
        fault.rip == expect.rip,
        "{what}: rip {:#x}, expected {:#x}",
        fault.rip,
        expect.rip
    );
    if let Some(address) = expect.address {
        ensure!(
            fault.address == address,
            "{what}: address {:#x}, expected {address:#x}",
            fault.address
        );
    }
    ensure!(
        fault.error & expect.mask == expect.error,
        "{what}: error code {:#x}, expected {:#x} in bits {:#x}",
        fault.error,
        expect.error,
        expect.mask
    );
    Ok(fault)
}

/// (3) Reads and writes of unmapped memory, a read of the kernel's half, a write to this
/// program's text and a jump into read-only data each trap as a page fault with the right error
/// code, address and RIP, reach the fault handler (the target) once, and the thread resumes.
pub fn memory(ctx: &mut Ctx) -> Outcome {
    ctx.set_mode(mode::RESUME_AT, probe::recover_addr())?;
    let all = PF_PRESENT | PF_WRITE | PF_USER | PF_FETCH;
    trap(
        ctx,
        Expect {
            what: "read of unmapped memory",
            vector: PAGE_FAULT,
            rip: probe::read_insn(),
            address: Some(probe::UNMAPPED),
            mask: all,
            error: PF_USER,
        },
        || probe::read(probe::UNMAPPED),
    )?;
    trap(
        ctx,
        Expect {
            what: "write of unmapped memory",
            vector: PAGE_FAULT,
            rip: probe::write_insn(),
            address: Some(probe::UNMAPPED),
            mask: all,
            error: PF_USER | PF_WRITE,
        },
        probe::write_unmapped,
    )?;
    trap(
        ctx,
        Expect {
            what: "read of the kernel's half",
            vector: PAGE_FAULT,
            rip: probe::read_insn(),
            address: Some(probe::KERNEL),
            mask: PF_WRITE | PF_USER | PF_FETCH,
            error: PF_USER,
        },
        || probe::read(probe::KERNEL),
    )?;
    trap(
        ctx,
        Expect {
            what: "write to read-only text",
            vector: PAGE_FAULT,
            rip: probe::rewrite_insn(),
            address: Some(probe::read_insn()),
            mask: all,
            error: PF_PRESENT | PF_USER | PF_WRITE,
        },
        probe::rewrite_text,
    )?;
    trap(
        ctx,
        Expect {
            what: "execution of read-only data",
            vector: PAGE_FAULT,
            rip: probe::not_code_addr(),
            address: Some(probe::not_code_addr()),
            mask: all,
            error: PF_PRESENT | PF_USER | PF_FETCH,
        },
        probe::exec_data,
    )?;
    Ok("5 page faults reported and resumed".into())
}

/// The attacker's I/O-port capability (manifest: the POST port 0x80 alone).
const PORTS: abi::Sel = abi::Sel::new(52);

/// (4) Port I/O outside the granted range traps as #GP at the I/O instruction and reaches the
/// fault handler: a port of another server (COM1), and the ports right before and right after
/// the attacker's own grant (0x80 alone), while the granted port works.
pub fn ports(ctx: &mut Ctx) -> Outcome {
    ok(
        "get the granted port",
        rt::bootstrap::get_resource(&mut ctx.utcb, "io_ports", PORTS),
    )?;
    ctx.set_mode(mode::RESUME_AT, probe::recover_addr())?;
    let before = ctx.last_fault()?.count;
    ensure!(!probe::outb_post(), "out to the granted POST port faulted");
    ensure!(
        ctx.last_fault()?.count == before,
        "the granted port reached the fault handler"
    );
    for (what, rip, probe) in [
        (
            "in from COM1 (serial's port)",
            probe::inb_insn(),
            probe::inb_com1 as fn() -> bool,
        ),
        (
            "out to port 0x81, one past the grant",
            probe::outb_insn(),
            || probe::outb(probe::POST + 1),
        ),
        (
            "out to port 0x7f, one before the grant",
            probe::outb_insn(),
            || probe::outb(probe::POST - 1),
        ),
    ] {
        trap(
            ctx,
            Expect {
                what,
                vector: GENERAL_PROTECTION,
                rip,
                address: None,
                mask: u64::MAX,
                error: 0,
            },
            probe,
        )?;
    }
    Ok(format!(
        "3 #GP reported (ports {:#x}, {:#x}, {:#x}); granted {:#x} works",
        probe::COM1_DATA,
        probe::POST + 1,
        probe::POST - 1,
        probe::POST
    ))
}

/// Body of the looping thread: waits until (9) releases it, then faults forever.
pub fn looper_main(_start: Start) -> ! {
    let _ = syscall::sem_down(GO, 0);
    probe::fault_forever()
}

/// Echo calls (9) makes while the looping thread faults.
const CALLS: u64 = 1000;

/// (9) A second thread of this domain, at the same priority, faults in a loop (the handler
/// resumes it at the faulting instruction) while this thread makes 1000 echo calls: all must be
/// answered, the looping thread must have faulted meanwhile (so both really ran), and once the
/// handler stops resuming it, the faults must stop.
pub fn fault_loop(ctx: &mut Ctx) -> Outcome {
    ok("preparing the looping thread", ctx.looper)?;
    ctx.set_mode(mode::RETRY, 0)?;
    let before = ctx.last_fault()?.count;
    ok("releasing the looping thread", syscall::sem_up(GO))?;
    for i in 0..CALLS {
        let (_, words) = ok("echo while a thread faults", ctx.echo(proto::ECHO, &[i]))?;
        ensure!(words == [i + 1], "echo {i} answered {words:?}");
    }
    let during = ctx.last_fault()?.count - before;
    ctx.set_mode(mode::STOP, 0)?;
    // Let the looping thread fault once more, which ends it.
    for _ in 0..10 {
        syscall::yield_now();
    }
    let settled = ctx.last_fault()?.count;
    for _ in 0..10 {
        syscall::yield_now();
        let _ = ctx.echo(proto::ECHO, &[0]);
    }
    let after = ctx.last_fault()?.count;
    ensure!(
        during > 0,
        "the looping thread never faulted during {CALLS} calls (is its priority, {}, the attacker's?)",
        crate::PRIORITY
    );
    ensure!(
        after == settled,
        "faults went on after the handler stopped resuming ({settled} -> {after})"
    );
    Ok(format!("{CALLS} calls answered during {during} faults"))
}

/// The scratch memory capability from init and a copy derived from it.
const SCRATCH: abi::Sel = abi::Sel::new(50);
const SCRATCH_COPY: abi::Sel = abi::Sel::new(51);
/// Where the two are mapped (one page each).
const THROUGH_ORIGINAL: u64 = 0x0000_4444_0000_0000;
const THROUGH_COPY: u64 = 0x0000_4444_0001_0000;

/// (10) Memory stops being reachable when the capability it was mapped through is revoked:
/// the attacker maps its scratch page (manifest `scratch`) once through the capability init
/// gave it and once through a copy derived from that; revoking the derived copies unmaps the
/// second mapping only, and revoking the capability itself unmaps the first. Each access after a
/// revoke must fault as not present.
pub fn revoked_memory(ctx: &mut Ctx) -> Outcome {
    use abi::{well_known::SELF_PD, Rights};
    let rw = Rights::READ | Rights::WRITE;
    ok(
        "get scratch memory",
        rt::bootstrap::get_resource(&mut ctx.utcb, "memory", SCRATCH),
    )?;
    ok(
        "derive a copy",
        syscall::delegate(SCRATCH, SELF_PD, SCRATCH_COPY, rw),
    )?;
    ok(
        "map through the capability",
        syscall::map(SCRATCH, SELF_PD, THROUGH_ORIGINAL, 0, 1, rw),
    )?;
    ok(
        "map through the copy",
        syscall::map(SCRATCH_COPY, SELF_PD, THROUGH_COPY, 0, 1, rw),
    )?;
    ctx.set_mode(mode::RESUME_AT, probe::recover_addr())?;
    let before = ctx.last_fault()?.count;
    // Both pages are read (and so in the TLB) right before the revoke, and read again right
    // after it with no IPC between (an IPC switches address spaces, which would flush the
    // TLB and hide a missing flush): only the kernel's own flush can make the read fault.
    ensure!(
        !probe::read(THROUGH_ORIGINAL) && !probe::read(THROUGH_COPY),
        "reading freshly mapped memory faulted"
    );
    let removed = syscall::revoke(SCRATCH, false);
    let faulted = probe::read(THROUGH_COPY);
    let removed = ok("revoke the copies", removed)?;
    ensure!(
        removed == 1,
        "revoke removed {removed} capabilities, expected 1"
    );
    let not_present = Expect {
        what: "read through the revoked copy, right after the revoke",
        vector: PAGE_FAULT,
        rip: probe::read_insn(),
        address: Some(THROUGH_COPY),
        mask: PF_PRESENT | PF_WRITE | PF_USER | PF_FETCH,
        error: PF_USER,
    };
    check_trap(ctx, not_present, before, faulted)?;
    ensure!(
        !probe::read(THROUGH_ORIGINAL),
        "memory mapped through the kept capability faulted"
    );
    let before = ctx.last_fault()?.count;
    ensure!(
        !probe::read(THROUGH_ORIGINAL),
        "memory mapped through the kept capability faulted"
    );
    let revoked = syscall::revoke(SCRATCH, true);
    let faulted = probe::read(THROUGH_ORIGINAL);
    ok("revoke the capability", revoked)?;
    let gone = Expect {
        what: "read through the revoked capability, right after the revoke",
        address: Some(THROUGH_ORIGINAL),
        ..not_present
    };
    check_trap(ctx, gone, before, faulted)?;
    Ok("2 mappings gone with their capabilities, each at the first access after its revoke".into())
}

/// Pages of scratch memory mapped through a read-only copy.
const THROUGH_READ_ONLY: u64 = 0x0000_4444_0002_0000;
const SCRATCH_READ_ONLY: abi::Sel = abi::Sel::new(53);

/// (11) A capability with reduced rights maps with those rights only: a read-only copy of the
/// scratch memory refuses a writable mapping (`NoRights`), maps read-only, and a write through
/// that mapping traps as a protection fault.
pub fn reduced_rights(ctx: &mut Ctx) -> Outcome {
    use abi::{well_known::SELF_PD, Rights, Status};
    ok(
        "get scratch memory",
        rt::bootstrap::get_resource(&mut ctx.utcb, "memory", SCRATCH),
    )?;
    ok(
        "derive a read-only copy",
        syscall::delegate(SCRATCH, SELF_PD, SCRATCH_READ_ONLY, Rights::READ),
    )?;
    let rw = Rights::READ | Rights::WRITE;
    crate::refused(
        "writable mapping through the read-only copy",
        syscall::map(SCRATCH_READ_ONLY, SELF_PD, THROUGH_READ_ONLY, 0, 1, rw),
        Status::NoRights,
    )?;
    ok(
        "read-only mapping through the read-only copy",
        syscall::map(
            SCRATCH_READ_ONLY,
            SELF_PD,
            THROUGH_READ_ONLY,
            0,
            1,
            Rights::READ,
        ),
    )?;
    ctx.set_mode(mode::RESUME_AT, probe::recover_addr())?;
    ensure!(
        !probe::read(THROUGH_READ_ONLY),
        "reading the read-only mapping faulted"
    );
    trap(
        ctx,
        Expect {
            what: "write through the read-only mapping",
            vector: PAGE_FAULT,
            rip: probe::write_insn(),
            address: Some(THROUGH_READ_ONLY),
            mask: PF_PRESENT | PF_WRITE | PF_USER | PF_FETCH,
            error: PF_PRESENT | PF_WRITE | PF_USER,
        },
        || probe::write(THROUGH_READ_ONLY),
    )?;
    ok("revoke the scratch memory", syscall::revoke(SCRATCH, true))?;
    Ok("writable mapping refused (NoRights); a write through the read-only one traps".into())
}
