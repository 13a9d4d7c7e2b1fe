//! (12) The VM syscalls with seeded random arguments: CreateVm, CreateVcpu, VmMap,
//! VcpuControl, VmPatch, VmWindow, VmRead, VmDmp and KernelStats, each with a mix of random
//! words and values near what the kernel checks (selectors of live Vms and vCPUs, page-aligned
//! addresses, the guest-physical limit, small counts). Every call must return `Ok` or a defined
//! status; afterwards VM creation, IPC and vCPUs still work.
//!
//! The generator keeps the calls away from this server's own infrastructure: objects are only
//! created at selectors of [`ZONE`] (removed afterwards), only the garbage page or garbage
//! capabilities can be mapped (never the scratch capability), and exit portals are this
//! server's own (the proxy stops every vCPU meanwhile) or empty selectors.

use core::sync::atomic::Ordering;

use abi::syscall::Syscall;
use abi::vm::{MemoryMode, GUEST_PHYS_LIMIT};
use abi::{well_known, Rights, Sel, Status};
use alloc::format;
use alloc::string::String;
use rt::{syscall, vm};

use crate::exits::{self, AUTO_STOP, AUTO_STOPPED};
use crate::mem::page;
use crate::vcpu::{self, remove};
use crate::{ensure, ok, Ctx, Outcome, ECHO, EXIT_BASE, SCRATCH};

/// Where the garbage may create objects (and the fixed garbage objects live), as raw selector
/// words (the garbage makes raw syscalls).
const ZONE: core::ops::Range<u64> = 600..640;
const G_VM: Sel = Sel::new(600);
const G_SVM: Sel = Sel::new(601);
const G_MEM: Sel = Sel::new(602);
const G_VCPU: Sel = Sel::new(603);
/// Empty selectors (exit bases whose portals do not exist), raw.
const EMPTY: core::ops::Range<u64> = 700..760;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A selector argument: mostly the zone, sometimes anything.
    fn sel(&mut self) -> u64 {
        match self.below(10) {
            0..=5 => ZONE.start + self.below(ZONE.end - ZONE.start),
            6 => self.pick(&[G_VM, G_SVM, G_VCPU, G_MEM].map(Sel::raw)),
            7 => self.below(1100),
            8 => self.next(),
            _ => self.pick(&[0, 1, 15, 1023, 1024, u64::MAX]),
        }
    }

    /// A selector for an object to be created: inside the zone only.
    fn dest(&mut self) -> u64 {
        ZONE.start + 4 + self.below(ZONE.end - ZONE.start - 4)
    }

    /// A memory capability: never the scratch capability.
    fn mem(&mut self) -> u64 {
        let s = self.sel();
        if s == SCRATCH.raw() {
            G_MEM.raw()
        } else {
            s
        }
    }

    /// A Vm argument: mostly the garbage Vms, sometimes anything.
    fn vm(&mut self) -> u64 {
        if self.below(3) == 0 {
            self.sel()
        } else {
            self.pick(&[G_VM, G_SVM].map(Sel::raw))
        }
    }

    fn pd(&mut self) -> u64 {
        match self.below(4) {
            0 | 1 => well_known::SELF_PD.raw(),
            2 => self.sel(),
            _ => G_VM.raw(),
        }
    }

    fn exit_base(&mut self) -> u64 {
        match self.below(5) {
            0 | 1 => EXIT_BASE.raw(),
            2 => EMPTY.start + self.below(EMPTY.end - EMPTY.start - 18),
            3 => self.pick(&[1023, 1024, 5000]),
            _ => self.next(),
        }
    }

    fn gpa(&mut self) -> u64 {
        match self.below(6) {
            0 => self.below(64) * 4096,
            1 => (self.next() % GUEST_PHYS_LIMIT) & !0xfff,
            2 => self.pick(&[GUEST_PHYS_LIMIT - 4096, GUEST_PHYS_LIMIT, !0xfff]),
            3 => self.below(1 << 20),
            _ => self.next(),
        }
    }

    fn count(&mut self) -> u64 {
        match self.below(5) {
            0 => 0,
            1 => 1,
            2 => self.below(600),
            3 => 1 << self.below(64),
            _ => self.next(),
        }
    }

    fn small(&mut self) -> u64 {
        match self.below(3) {
            0 => self.below(8),
            1 => self.below(70),
            _ => self.next(),
        }
    }

    fn linear(&mut self) -> u64 {
        match self.below(4) {
            0 => vmm::layout::DMP_WINDOW_LINEAR,
            1 => 0xffff_8000_0000_0000 + (self.below(1 << 20) << 12),
            2 => self.below(1 << 20) << 12,
            _ => self.next(),
        }
    }
}

const CALLS: [Syscall; 9] = [
    Syscall::CreateVm,
    Syscall::CreateVcpu,
    Syscall::VmMap,
    Syscall::VcpuControl,
    Syscall::VmPatch,
    Syscall::VmWindow,
    Syscall::VmRead,
    Syscall::VmDmp,
    Syscall::KernelStats,
];

fn args(rng: &mut Rng, call: Syscall) -> [u64; 6] {
    match call {
        Syscall::CreateVm => [rng.dest(), rng.pd(), rng.small(), rng.next(), 0, 0],
        Syscall::CreateVcpu => [
            rng.dest(),
            rng.vm(),
            rng.pd(),
            rng.pick(&[0, 1, 10, 31, 32, 1000]),
            rng.exit_base(),
            rng.next(),
        ],
        Syscall::VmMap => [
            rng.vm(),
            rng.mem(),
            rng.count(),
            rng.count(),
            rng.gpa(),
            rng.small(),
        ],
        Syscall::VcpuControl => [
            rng.sel(),
            rng.small(),
            rng.small(),
            rng.next(),
            rng.next(),
            0,
        ],
        Syscall::VmPatch => [
            rng.vm(),
            rng.gpa(),
            rng.small() | (rng.below(2) << 63),
            {
                let any = rng.next();
                rng.pick(&[0, 1, any])
            },
            rng.linear(),
            0,
        ],
        Syscall::VmWindow => [rng.vm(), rng.linear(), rng.gpa(), rng.count(), 0, 0],
        Syscall::VmRead => [
            rng.vm(),
            rng.gpa(),
            rng.small() | (rng.below(2) << 63),
            0,
            0,
            0,
        ],
        Syscall::VmDmp => [
            rng.vm(),
            rng.small(),
            {
                let any = rng.next();
                rng.pick(&[0, 1, 2, 1 << 30, 0xffff_ff80_0000_0000, any])
            },
            0,
            0,
            0,
        ],
        _ => [rng.small(), rng.next(), 0, 0, 0, 0],
    }
}

pub fn garbage(ctx: &mut Ctx) -> Outcome {
    let calls = ctx.scale.garbage_calls;
    let seed = rt::cpu::rdtsc() ^ 0x005e_ed0f_bad0_c0de;
    let seed = if seed == 0 { 1 } else { seed };
    rt::println!(
        &mut ctx.utcb,
        "hostile: syscall-garbage-vm: seed {seed:#018x}, {calls} calls"
    );
    let mut rng = Rng(seed);
    let mut by_status = [0u64; 15];
    let mut unknown = 0u64;
    let mut first_unknown = None;
    AUTO_STOPPED.store(0, Ordering::Release);
    let setup = (|| {
        vcpu::vm_with_page(
            G_VM,
            MemoryMode::Nested,
            G_MEM,
            page::GARBAGE,
            0,
            Rights::READ | Rights::WRITE,
        )?;
        ok(
            "create shadow vm",
            vm::create_vm(G_SVM, well_known::SELF_PD, MemoryMode::Shadow),
        )?;
        ok(
            "map into the shadow vm",
            vm::vm_map(G_SVM, G_MEM, 0, 1, 0, Rights::READ | Rights::WRITE),
        )?;
        Ok::<(), String>(())
    })();
    if let Err(why) = setup {
        remove(&[G_VM, G_SVM, G_MEM]);
        return Err(why);
    }
    AUTO_STOP.store(true, Ordering::Release);
    // A vCPU that the proxy stops at once: a stale vCPU capability for the calls.
    let _ = vm::create_vcpu(G_VCPU, G_VM, well_known::SELF_PD, 10, EXIT_BASE);
    for _ in 0..calls {
        let call = rng.pick(&CALLS);
        let a = args(&mut rng, call);
        if call == Syscall::VmPatch {
            let words: [u64; 16] =
                core::array::from_fn(|_| if rng.below(2) == 0 { 0 } else { rng.next() });
            ctx.utcb.set_msg(0, &words);
        }
        let (status, _) = crate::raw::garbage_call(call, a);
        match Status::from_u64(status) {
            Some(s) => by_status[s as usize] += 1,
            None => {
                unknown += 1;
                first_unknown.get_or_insert((call, a, status));
            }
        }
        // Let vCPUs the calls made reach the proxy now and then.
        if rng.below(50) == 0 {
            syscall::yield_now();
        }
    }
    crate::sleep(5);
    for sel in ZONE.clone().rev() {
        let _ = syscall::revoke(Sel::new(sel), true);
    }
    crate::sleep(2);
    AUTO_STOP.store(false, Ordering::Release);
    exits::settle(ctx);
    let stopped = AUTO_STOPPED.load(Ordering::Acquire);
    ensure!(
        unknown == 0,
        "{unknown} calls returned an undefined status; first: {:?}",
        first_unknown
    );
    // The kernel still works: IPC, objects, a vCPU.
    ok("echo after the garbage", ctx.utcb.call(ECHO, 1, &[1]))?;
    ok(
        "semaphore after the garbage",
        syscall::create_semaphore(G_VM, 1),
    )?;
    let _ = syscall::revoke(G_VM, true);
    vcpu::still_runs(ctx).map_err(|e| format!("a vCPU after the garbage: {e}"))?;
    let s = |x: Status| by_status[x as usize];
    Ok(format!(
        "seed {seed:#x}: {calls} calls: ok {}, bad selector {}, wrong kind {}, no rights {}, quota {}, bad argument {}, in use {}, bad address {}, out of memory {}, busy {}, other {}; {stopped} vCPUs stopped; IPC, objects and a vCPU work afterwards",
        s(Status::Ok),
        s(Status::BadSelector),
        s(Status::WrongKind),
        s(Status::NoRights),
        s(Status::QuotaExceeded),
        s(Status::BadArgument),
        s(Status::SelectorInUse),
        s(Status::BadAddress),
        s(Status::OutOfMemory),
        s(Status::Busy),
        s(Status::BadSyscall) + s(Status::Timeout) + s(Status::Aborted) + s(Status::NoPartner) + s(Status::Mismatch),
    ))
}
