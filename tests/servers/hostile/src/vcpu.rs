//! Experiments that run vCPUs: refused replies, recall storms, ASID exhaustion, exit portals at
//! the end of the capability space, unconfined starts (shadow mode without its paging state),
//! a handler that dies while serving Startup, and a foreign domain's portal as exit portal.
//!
//! Every vCPU here has no executable guest memory (the scratch capability has no EXEC right):
//! a nested-mode guest started in real mode at 0x7c00 takes a memory-fault exit with EXEC
//! access at once, which shows it was entered; a guest that must never be entered is given
//! code that would make an I/O exit.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::vm::{self as vmabi, entry_error, mtd, word, Exit, MemoryMode};
use abi::{well_known, Rights, Sel, Status};
use alloc::format;
use alloc::string::String;
use rt::{syscall, thread, vm, Error, Start};

use crate::exits::{self, Event};
use crate::mem::{self, page};
use crate::{ensure, ok, sleep, Ctx, Outcome, EXIT_BASE, LOG, PRIORITY, PROXY_THREAD, SCRATCH};

/// Where nested vCPUs start (real mode, `vmm::boot::real_mode`) and the page mapped there.
pub const NESTED_RIP: u64 = vmm::layout::FLAT_LOAD;
pub const NESTED_GPA: u64 = 0x7000;
/// Where the unconfined experiments' guest code lies.
pub const CODE_GPA: u64 = 0x1000;
/// `out 0x80, al; hlt; jmp` back to the `out`: an I/O exit, then HLT, if the guest ever runs.
pub const CODE: [u8; 5] = [0xe6, 0x80, 0xf4, 0xeb, 0xfb];

/// Selectors of the vCPU experiments.
pub const VM: Sel = Sel::new(100);
pub const VCPU: Sel = Sel::new(101);
pub const MEM: Sel = Sel::new(102);
pub const VCPU2: Sel = Sel::new(103);
/// A second set of exit portals (handler death): EXIT2 is bound to a helper thread, the rest
/// to the proxy.
const EXIT2: Sel = Sel::new(70);
const HELPER: Sel = Sel::new(104);
/// The ASID experiment's Vms.
const ASID_VMS: Sel = Sel::new(200);
/// The last selector of the space, for exit-base-edge.
const LAST: Sel = Sel::new(abi::CAP_SPACE_SLOTS - 1);

/// Whether the kernel runs VMX (`KernelStats` `VIRT_BACKEND`).
pub fn backend_is_vmx() -> bool {
    let backend = syscall::kernel_stats(abi::syscall::stats::VIRT_BACKEND).ok();
    backend.and_then(vmabi::Backend::from_stat) == Some(vmabi::Backend::Vmx)
}

/// A real-mode reply (every group) that starts the guest at `rip`.
pub fn real_mode(rip: u64) -> [u64; word::COUNT] {
    let mut s = vmm::boot::real_mode();
    s.set_rip(rip);
    s.words[word::MASK] = mtd::ALL;
    s.words
}

/// Removes every capability at `sels` (errors ignored: some were never made).
pub fn remove(sels: &[Sel]) {
    for &sel in sels {
        let _ = syscall::revoke(sel, true);
    }
}

/// A Vm at `vm` in `mode` with scratch page `page` carved at `mem` and mapped at `gpa`
/// with `rights`.
pub fn vm_with_page(
    vm_sel: Sel,
    mode: MemoryMode,
    mem_sel: Sel,
    scratch_page: u64,
    gpa: u64,
    rights: Rights,
) -> Result<(), String> {
    ok(
        "create vm",
        vm::create_vm(vm_sel, well_known::SELF_PD, mode),
    )?;
    ok("carve", syscall::carve(SCRATCH, mem_sel, scratch_page, 1))?;
    ok("vm map", vm::vm_map(vm_sel, mem_sel, 0, 1, gpa, rights))
}

/// Creates vCPU `vcpu_sel` of `vm_sel` with `exit_base` and waits for its Startup exit.
pub fn start(ctx: &mut Ctx, vcpu_sel: Sel, vm_sel: Sel, exit_base: Sel) -> Result<Event, String> {
    ok(
        "create vcpu",
        vm::create_vcpu(
            vcpu_sel,
            vm_sel,
            well_known::SELF_PD,
            u64::from(PRIORITY),
            exit_base,
        ),
    )?;
    match exits::next_exit(ctx, ctx.scale.expected) {
        Some(e) if e.is(Exit::Startup) => Ok(e),
        Some(e) => Err(format!(
            "the first message was {}, not startup",
            e.describe()
        )),
        None => Err(format!(
            "no startup exit within {} ticks",
            ctx.scale.expected
        )),
    }
}

/// Answers the pending Startup with real mode at [`NESTED_RIP`] and checks that the guest
/// takes the memory-fault exit of its first fetch; leaves that exit pending.
pub fn run_nested(ctx: &mut Ctx) -> Result<Event, String> {
    exits::answer(ctx, &real_mode(NESTED_RIP));
    fetch_fault(ctx)
}

/// Waits for the memory-fault exit of an instruction fetch at [`NESTED_RIP`].
fn fetch_fault(ctx: &mut Ctx) -> Result<Event, String> {
    match exits::next_exit(ctx, ctx.scale.expected) {
        Some(e) => check_fetch_fault(&e).map(|()| e),
        None => Err(format!(
            "the guest did not exit within {} ticks",
            ctx.scale.expected
        )),
    }
}

/// `Ok` if `e` is the memory-fault exit of an instruction fetch at [`NESTED_RIP`].
fn check_fetch_fault(e: &Event) -> Result<(), String> {
    ensure!(
        e.is(Exit::MemoryFault),
        "expected the memory-fault exit of the first fetch, got {}",
        e.describe()
    );
    let (gpa, access) = e.qual();
    ensure!(
        gpa == NESTED_RIP && access & vmabi::access::EXEC != 0,
        "the guest's first fetch faulted at {gpa:#x} with access {access:#x}, expected {NESTED_RIP:#x} with EXEC"
    );
    Ok(())
}

/// (6) Replies the kernel must refuse: CR0.PG without PE and reserved EFER bits, then a reply
/// whose tag carries 3 words while its mask names all groups (the words beyond the tag hold a
/// valid state, so a kernel that reads past the tag would accept it). Each refusal must come
/// back from `ReplyWait` at once, and a valid reply afterwards must still run the vCPU.
pub fn refused_reply(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        vm_with_page(
            VM,
            MemoryMode::Nested,
            MEM,
            page::NESTED,
            NESTED_GPA,
            Rights::READ | Rights::WRITE,
        )?;
        start(ctx, VCPU, VM, EXIT_BASE)?;
        let mut bad = real_mode(NESTED_RIP);
        bad[word::CR0] = 0x8000_0010; // PG without PE
        bad[word::EFER] = 0xffff_0000_0000_f000; // reserved bits
        exits::answer(ctx, &bad);
        let first = match exits::next_exit(ctx, ctx.scale.expected) {
            Some(Event {
                result: Err(Error::Kernel(s)),
                ..
            }) => s,
            Some(e) => {
                return Err(format!(
                "a reply with CR0.PG without PE and reserved EFER bits was not refused: then {}",
                e.describe()
            ))
            }
            None => return Err("the bad reply neither came back refused nor ran the guest".into()),
        };
        exits::answer_short(ctx, &real_mode(NESTED_RIP), 3);
        let second = match exits::next_exit(ctx, ctx.scale.expected) {
            Some(Event {
                result: Err(Error::Kernel(s)),
                ..
            }) => s,
            Some(e) => {
                return Err(format!(
                    "a reply whose tag has 3 words but whose mask names all groups was applied (words beyond the tag read): then {}",
                    e.describe()
                ))
            }
            None => return Err("the short reply neither came back refused nor ran the guest".into()),
        };
        run_nested(ctx)?;
        exits::stop(ctx);
        Ok(format!(
            "bad control registers refused ({first}), 3-word reply for a full mask refused ({second}), then a valid reply ran the vCPU to its fetch fault"
        ))
    })();
    exits::settle(ctx);
    remove(&[VCPU, VM, MEM]);
    result
}

/// (13) 10,000 recalls of a vCPU that waits for its Startup reply: each is accepted, and they
/// make one Recall exit when it resumes, not 10,000; the kernel heap does not grow with them.
pub fn recall_storm(ctx: &mut Ctx) -> Outcome {
    let n = ctx.scale.recalls;
    let result = (|| {
        vm_with_page(
            VM,
            MemoryMode::Nested,
            MEM,
            page::NESTED,
            NESTED_GPA,
            Rights::READ | Rights::WRITE,
        )?;
        start(ctx, VCPU, VM, EXIT_BASE)?;
        let heap = crate::stat(abi::syscall::stats::HEAP_USED);
        for i in 0..n {
            ok(&format!("recall {i}"), vm::vcpu_recall(VCPU))?;
        }
        let grown = crate::stat(abi::syscall::stats::HEAP_USED) as i64 - heap as i64;
        exits::answer(ctx, &real_mode(NESTED_RIP));
        let mut recalls = 0;
        let mut other = None;
        loop {
            match exits::next_exit(ctx, ctx.scale.expected) {
                Some(e) if e.is(Exit::Recall) => {
                    recalls += 1;
                    if recalls > 16 {
                        break;
                    }
                    let mut w = e.words;
                    w[word::MASK] = mtd::GPRS | mtd::RIP;
                    exits::answer(ctx, &w[..word::COUNT]);
                }
                Some(e) => {
                    other = Some(e);
                    break;
                }
                None => break,
            }
        }
        let Some(fault) = other else {
            return Err(format!(
                "after {n} recalls: {recalls} recall exits and then nothing within {} ticks",
                ctx.scale.expected
            ));
        };
        ensure!(
            fault.is(Exit::MemoryFault) && fault.qual().0 == NESTED_RIP,
            "after the recall exits the guest's exit was {}",
            fault.describe()
        );
        ensure!(
            recalls == 1,
            "{n} recalls made {recalls} recall exits, expected one"
        );
        ensure!(
            grown <= 0,
            "the kernel heap grew by {grown} bytes during {n} recalls"
        );
        exits::stop(ctx);
        Ok(format!(
            "{n} recalls made 1 recall exit, then the fetch fault; heap {grown:+} bytes"
        ))
    })();
    exits::settle(ctx);
    remove(&[VCPU, VM, MEM]);
    result
}

/// (7) `scale.vms` nested Vms at once (more than the tags, ASIDs or VPIDs, a CPU may have):
/// every creation succeeds, and every Vm's vCPU runs, twice (once more after all the others ran
/// with the same tags); everything back after they are removed.
pub fn asid_exhaustion(ctx: &mut Ctx) -> Outcome {
    let n = ctx.scale.vms;
    let before = crate::Memory::now();
    let mut made = 0;
    let result = (|| {
        ok("carve", syscall::carve(SCRATCH, MEM, page::NESTED, 1))?;
        for i in 0..n {
            let sel = ASID_VMS.offset(i);
            vm::create_vm(sel, well_known::SELF_PD, MemoryMode::Nested)
                .map_err(|e| format!("creating Vm {} of {n} refused: {e}", i + 1))?;
            made += 1;
            ok(
                "vm map",
                vm::vm_map(sel, MEM, 0, 1, NESTED_GPA, Rights::READ | Rights::WRITE),
            )?;
        }
        for pass in 1..=2 {
            for i in 0..n {
                let sel = ASID_VMS.offset(i);
                let step = exits::scripted_run(ctx, real_mode(NESTED_RIP), || {
                    vm::create_vcpu(
                        VCPU,
                        sel,
                        well_known::SELF_PD,
                        u64::from(PRIORITY),
                        EXIT_BASE,
                    )
                })
                .and_then(|(_, e)| check_fetch_fault(&e));
                if step.is_err() {
                    exits::settle(ctx);
                }
                let _ = syscall::revoke(VCPU, true);
                step.map_err(|e| format!("pass {pass}, vCPU of Vm {} of {n}: {e}", i + 1))?;
            }
        }
        Ok::<(), String>(())
    })();
    for i in 0..made {
        let _ = syscall::revoke(ASID_VMS.offset(i), true);
    }
    remove(&[VCPU, MEM]);
    result?;
    let after = crate::Memory::now();
    ensure!(
        // Frames: at least as many free (an innocent guest that ended meanwhile gave some back).
        after.quota == before.quota && after.frames >= before.frames,
        "after removing the {n} Vms: quota used {} (before {}), free frames {} (before {})",
        after.quota,
        before.quota,
        after.frames,
        before.frames
    );
    Ok(format!(
        "{n} Vms alive at once, each vCPU ran twice ({} runs); quota and {} free frames back",
        2 * n,
        after.frames
    ))
}

/// (14) A vCPU whose exit portals would lie beyond the capability space: its Startup portal
/// is the last selector (1023), so its memory-fault exit names selector 1031. The kernel must
/// stop it (no portal) without faulting; `exit_base` 1024 is refused outright.
pub fn exit_base_edge(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        vm_with_page(
            VM,
            MemoryMode::Nested,
            MEM,
            page::NESTED,
            NESTED_GPA,
            Rights::READ | Rights::WRITE,
        )?;
        crate::refused(
            "create_vcpu with exit_base 1024",
            vm::create_vcpu(
                VCPU2,
                VM,
                well_known::SELF_PD,
                u64::from(PRIORITY),
                Sel::new(abi::CAP_SPACE_SLOTS),
            ),
            Status::BadArgument,
        )?;
        ok(
            "portal at the last selector",
            syscall::create_portal(LAST, PROXY_THREAD, 0),
        )?;
        start(ctx, VCPU, VM, LAST)?;
        exits::answer(ctx, &real_mode(NESTED_RIP));
        if let Some(e) = exits::next_exit(ctx, ctx.scale.unexpected) {
            return Err(format!(
                "an exit whose portal lies beyond the space arrived anyway: {}",
                e.describe()
            ));
        }
        let recall = vm::vcpu_recall(VCPU);
        if recall.is_ok() {
            if let Some(e) = exits::next_exit(ctx, ctx.scale.unexpected) {
                return Err(format!(
                    "the vCPU lived on after its exit found no portal: {}",
                    e.describe()
                ));
            }
        }
        Ok(format!(
            "exit_base 1024 refused; Startup at selector 1023 served, the memory-fault exit (selector 1031) stopped the vCPU; recall then: {}",
            match recall {
                Ok(()) => String::from("accepted, no exit"),
                Err(e) => format!("{e}"),
            }
        ))
    })();
    exits::settle(ctx);
    remove(&[VCPU, VCPU2, VM, MEM, LAST]);
    result
}

/// Writes [`CODE`] into the code page and makes a shadow-mode Vm with it at [`CODE_GPA`].
fn shadow_vm_with_code() -> Result<(), String> {
    mem::write(page::CODE, 0, &CODE);
    vm_with_page(
        VM,
        MemoryMode::Shadow,
        MEM,
        page::CODE,
        CODE_GPA,
        Rights::READ | Rights::WRITE,
    )
}

/// After the guest must have been refused entry: any exit that still comes, or a recall
/// answered, shows the guest ran (or lives on). Returns what was seen.
fn check_never_ran(ctx: &mut Ctx, vcpu_sel: Sel, what: &str) -> Outcome {
    if let Some(e) = exits::next_exit(ctx, ctx.scale.unexpected) {
        return Err(format!("{what}: the guest ran anyway: {}", e.describe()));
    }
    match vm::vcpu_recall(vcpu_sel) {
        Err(e) => Ok(format!("recall refused ({e})")),
        Ok(()) => match exits::next_exit(ctx, ctx.scale.unexpected) {
            None => Ok("recall accepted, no exit ever arrived".into()),
            Some(e) => Err(format!(
                "{what}: the vCPU is alive: a recall made {}",
                e.describe()
            )),
        },
    }
}

/// (1) A shadow-mode vCPU whose Startup reply sets only GPRS and RIP, so the hardware would run
/// it without the shadow root and long-mode paging (on guest-physical = host-physical memory):
/// the kernel must not enter it; its next exit is EntryFailure with qualification UNCONFINED.
/// STOP then ends it.
pub fn unconfined_startup(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        shadow_vm_with_code()?;
        let startup = start(ctx, VCPU, VM, EXIT_BASE)?;
        let mut w = startup.words;
        w[word::MASK] = mtd::GPRS | mtd::RIP;
        w[word::RIP] = CODE_GPA;
        w[word::RFLAGS] = 2;
        exits::answer(ctx, &w[..word::COUNT]);
        let e = match exits::next_exit(ctx, ctx.scale.expected) {
            Some(e) => e,
            None => {
                let recall = vm::vcpu_recall(VCPU);
                let late = exits::next_exit(ctx, ctx.scale.expected);
                return Err(format!(
                    "no exit within {} ticks after a GPRS|RIP-only Startup reply (the guest may be running unconfined); recall {recall:?}, then {}",
                    ctx.scale.expected,
                    late.map_or(String::from("nothing"), |e| e.describe())
                ));
            }
        };
        if !e.is(Exit::EntryFailure) {
            return Err(format!(
                "after a Startup reply without CONTROL the next message was {}, expected entry-failure (unconfined)",
                e.describe()
            ));
        }
        let (q0, q1) = e.qual();
        ensure!(
            q0 == entry_error::UNCONFINED,
            "entry-failure with qualification {q0:#x} ({q1:#x}), expected {} (unconfined)",
            entry_error::UNCONFINED
        );
        exits::stop(ctx);
        let after = check_never_ran(ctx, VCPU, "after STOP")?;
        Ok::<String, String>(format!(
            "entry refused: entry-failure unconfined (rule {q1:#x}), no I/O exit; after STOP {after}"
        ))
    })();
    exits::settle(ctx);
    remove(&[VCPU, VM, MEM]);
    result
}

/// (1b) The same with CONTROL in the reply but paging off (CR0 = ET, EFER = 0, real mode): a
/// shadow-mode guest with its paging off runs on its Vm's nested tables (never on
/// guest-physical = host-physical memory), which map the code page without EXEC: its first
/// fetch at [`CODE_GPA`] is a memory-fault exit, never the I/O exit its code would make if the
/// hardware ran it without nested paging. STOP then ends it.
pub fn unconfined_paging_off(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        shadow_vm_with_code()?;
        start(ctx, VCPU, VM, EXIT_BASE)?;
        let w = real_mode(CODE_GPA);
        exits::answer(ctx, &w);
        let Some(e) = exits::next_exit(ctx, ctx.scale.expected) else {
            return Err(format!(
                "a shadow-mode Startup reply with paging off was answered by no exit within {} ticks",
                ctx.scale.expected
            ));
        };
        ensure!(
            e.is(Exit::MemoryFault),
            "a shadow-mode Startup reply with paging off (CR0 {:#x}, EFER 0): then {}, expected the memory-fault exit of the first fetch",
            w[word::CR0],
            e.describe()
        );
        let (gpa, access) = e.qual();
        ensure!(
            gpa == CODE_GPA && access & vmabi::access::EXEC != 0,
            "the guest's first fetch faulted at {gpa:#x} with access {access:#x}, expected {CODE_GPA:#x} with EXEC"
        );
        exits::stop(ctx);
        let after = check_never_ran(ctx, VCPU, "after STOP")?;
        Ok(format!(
            "paging off runs on the nested tables: {}; after STOP {after}",
            e.describe()
        ))
    })();
    exits::settle(ctx);
    remove(&[VCPU, VM, MEM]);
    result
}

static HELPER_MEM: [thread::ThreadMem<{ 8 * 1024 }>; 2] =
    [thread::ThreadMem::new(), thread::ThreadMem::new()];
/// What the helper received: 0 nothing, else the exit reason + 1.
static HELPER_GOT: AtomicU64 = AtomicU64::new(0);

/// The helper of handler-death: takes one call on its portal (`arg`) and ends without replying.
fn helper_main(start: Start) -> ! {
    let mut utcb = start.utcb;
    let portal = Sel::new(start.arg);
    while syscall::lookup(portal).is_err() {
        syscall::yield_now();
    }
    utcb.set_msg(0, &[]);
    loop {
        if utcb.reply_wait(portal).is_ok() {
            HELPER_GOT.store(utcb.word(word::REASON) + 1, Ordering::Release);
            syscall::thread_exit()
        }
    }
}

/// (2) A shadow-mode vCPU whose Startup portal is served by a thread that ends while serving it,
/// without a reply: the kernel must stop the vCPU (it was never given a confined state), so no
/// exit ever comes and a recall is refused or makes none.
pub fn unconfined_handler_death(ctx: &mut Ctx) -> Outcome {
    HELPER_GOT.store(0, Ordering::Release);
    let result = (|| {
        shadow_vm_with_code()?;
        let mem = &HELPER_MEM[(ctx.round as usize - 1).min(1)];
        ok(
            "start the helper",
            thread::spawn(mem, HELPER, PRIORITY, helper_main, EXIT2.raw()),
        )?;
        for reason in 1..vmabi::EXIT_COUNT {
            ok(
                "create exit portal",
                syscall::create_portal(EXIT2.offset(reason), PROXY_THREAD, reason),
            )?;
        }
        ok("helper's portal", syscall::create_portal(EXIT2, HELPER, 0))?;
        ok(
            "create vcpu",
            vm::create_vcpu(VCPU, VM, well_known::SELF_PD, u64::from(PRIORITY), EXIT2),
        )?;
        let mut waited = 0;
        while HELPER_GOT.load(Ordering::Acquire) == 0 && waited < ctx.scale.expected {
            sleep(1);
            waited += 1;
        }
        let got = HELPER_GOT.load(Ordering::Acquire);
        ensure!(got != 0, "the helper never received the Startup exit");
        ensure!(
            got == Exit::Startup as u64 + 1,
            "the helper received exit {} first, not startup",
            got - 1
        );
        let after = check_never_ran(ctx, VCPU, "after its handler ended while serving Startup")?;
        Ok(format!(
            "the handler ended while serving Startup; no exit followed; {after}"
        ))
    })();
    exits::settle(ctx);
    let mut sels = [Sel::new(0); vmabi::EXIT_COUNT as usize];
    for (i, s) in sels.iter_mut().enumerate() {
        *s = EXIT2.offset(i as u64);
    }
    remove(&sels);
    remove(&[VCPU, HELPER, VM, MEM]);
    result
}

/// (5) A vCPU whose Startup portal is the serial driver's `log` portal (another domain's; this
/// server holds it with CALL only): the kernel must stop the vCPU instead of calling the driver
/// with an exit message. Its other exit portals are this server's, so a guest that ran after
/// the driver answered would show up here; the log must still work.
pub fn exit_portal_foreign(ctx: &mut Ctx) -> Outcome {
    let result = (|| {
        vm_with_page(
            VM,
            MemoryMode::Nested,
            MEM,
            page::NESTED,
            NESTED_GPA,
            Rights::READ | Rights::WRITE,
        )?;
        ok(
            "create vcpu",
            vm::create_vcpu(VCPU, VM, well_known::SELF_PD, u64::from(PRIORITY), LOG),
        )?;
        let seen = exits::next_exit(ctx, ctx.scale.unexpected);
        let log = rt::log::write_str(
            &mut ctx.utcb,
            "hostile: (exit-portal-foreign: the log still answers)\n",
        );
        if let Some(e) = seen {
            return Err(format!(
                "the serial driver's portal served the vCPU's Startup and the guest ran: {}",
                e.describe()
            ));
        }
        ok("the log after the experiment", log)?;
        let after = check_never_ran(ctx, VCPU, "with the serial driver's portal at exit_base")?;
        Ok(format!("no exit came back, the log still answers; {after}"))
    })();
    exits::settle(ctx);
    remove(&[VCPU, VM, MEM]);
    result
}

/// Sanity for the garbage experiment: a fresh nested vCPU still starts and runs.
pub fn still_runs(ctx: &mut Ctx) -> Result<(), String> {
    let result = (|| {
        vm_with_page(
            VM,
            MemoryMode::Nested,
            MEM,
            page::NESTED,
            NESTED_GPA,
            Rights::READ | Rights::WRITE,
        )?;
        start(ctx, VCPU, VM, EXIT_BASE)?;
        run_nested(ctx)?;
        exits::stop(ctx);
        Ok(())
    })();
    exits::settle(ctx);
    remove(&[VCPU, VM, MEM]);
    result
}

/// The status a refusal carries, for notes.
pub fn status_of<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e}"),
    }
}
