//! The workloads: each spawns user processes, runs them to the end, checks the counts it can
//! predict exactly, and returns a checksum over the programs' exit values (digests of what they
//! read back), the workload's own results and the kernel's event counts.

use grt::println;

use crate::frames::PAGE;
use crate::kernel::{Kernel, Stats};
use crate::paging;
use crate::user::{self, Program};

pub struct Workload {
    pub name: &'static str,
    pub default_rounds: u64,
    pub max_rounds: u64,
    pub run: fn(&mut Kernel, u64) -> u64,
}

pub const NAMES: &str = "pagefault, forkwait, cr3switch, invlpg, compute, garbage, print, tamper";

const WORKLOADS: [Workload; 8] = [
    Workload {
        name: "pagefault",
        default_rounds: 20,
        max_rounds: 1 << 20,
        run: pagefault,
    },
    Workload {
        name: "forkwait",
        default_rounds: 1000,
        max_rounds: 1 << 24,
        run: forkwait,
    },
    Workload {
        name: "cr3switch",
        default_rounds: 3000,
        max_rounds: 1 << 24,
        run: cr3switch,
    },
    Workload {
        name: "invlpg",
        default_rounds: 20000,
        max_rounds: 1 << 28,
        run: invlpg,
    },
    Workload {
        name: "compute",
        default_rounds: 500,
        max_rounds: 1 << 24,
        run: compute,
    },
    Workload {
        name: "garbage",
        default_rounds: 2000,
        max_rounds: 1 << 24,
        run: crate::garbage::run,
    },
    Workload {
        name: "print",
        default_rounds: 400,
        max_rounds: 1 << 20,
        run: print,
    },
    Workload {
        name: "tamper",
        default_rounds: 8,
        max_rounds: 1 << 20,
        run: tamper,
    },
];

/// Where the hypervisor's DMP window lives in guest-physical memory (the vmm-server's
/// `vmm::layout::DMP_WINDOW_PHYSICAL`, 16 pages) and where its stubs start (after the 64 bytes of
/// words). This OS knows it only to attack it.
const DMP_WINDOW: u64 = 0xf_0000;
const DMP_STUBS: u64 = 64;
const DMP_WINDOW_BYTES: u64 = 15 * 4096;

/// `tamper` (a DMP security test): runs `pagefault` for `rounds` rounds, long enough for a DMP
/// service to forward its page faults to a stub and patch its hot sites; then overwrites every
/// stub in the window's guest-physical pages (reachable through the kernel's identity map, so
/// this needs no privilege beyond the guest's own) with INT3 and faults again. With DMP active
/// the next page fault reaches the garbage and this OS dies of an unexpected #BP (exit 3): the
/// tampering hurts this guest only, which the `dmp` scenarios check by running the other
/// workloads beside it. Without DMP it finishes normally.
fn tamper(kernel: &mut Kernel, rounds: u64) -> u64 {
    let sum = pagefault(kernel, rounds);
    let stubs = (DMP_WINDOW + DMP_STUBS..DMP_WINDOW + DMP_WINDOW_BYTES)
        .step_by(8)
        // SAFETY: the window's pages are ordinary RAM of this guest, identity-mapped.
        .filter(|&pa| unsafe { core::ptr::read_volatile(pa as *const u64) } != 0)
        .count();
    println!(
        "pagingos: tamper: {} non-zero stub words in the DMP window; overwriting them with INT3",
        stubs
    );
    for pa in (DMP_WINDOW + DMP_STUBS..DMP_WINDOW + DMP_WINDOW_BYTES).step_by(8) {
        // SAFETY: as above; only this guest's own memory changes.
        unsafe { core::ptr::write_volatile(pa as *mut u64, 0xcccc_cccc_cccc_cccc) };
    }
    // The second run checks its own counts.
    kernel.stats = Default::default();
    pagefault(kernel, 1) ^ sum
}

pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

/// FNV-1a over the little-endian bytes of 64-bit words.
pub struct Checksum(u64);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    pub fn add(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds the kernel's counts, prints them, and returns the final value.
    pub fn finish(mut self, stats: &Stats) -> u64 {
        println!(
            "pagingos: page faults {} (demand-zero {}, copy-on-write {} copied + {} reused, window {}), system calls {}, CR3 loads {}, forks {}, INVLPGs {}",
            stats.faults,
            stats.demand_zero,
            stats.cow_copy,
            stats.cow_reuse,
            stats.window,
            stats.syscalls,
            stats.cr3_loads,
            stats.forks,
            stats.invlpgs
        );
        for value in [
            stats.faults,
            stats.demand_zero,
            stats.cow_copy,
            stats.cow_reuse,
            stats.window,
            stats.syscalls,
            stats.cr3_loads,
            stats.forks,
            stats.invlpgs,
        ] {
            self.add(value);
        }
        self.0
    }
}

/// Ends the guest unless `actual == expected`.
pub fn expect(kernel: &Kernel, what: &str, actual: u64, expected: u64) {
    if actual != expected {
        kernel.fatal(format_args!("{} {}, expected {}", what, actual, expected));
    }
}

/// Pages the pagefault program touches per round, and their spacing: each lies in its own leaf
/// page table (and at its own index in it), 1 GiB + 2 MiB of address space in all.
const PF_PAGES: u64 = 512;
const PF_STRIDE: u64 = (2 << 20) + PAGE;

/// `pagefault`: one process; each round it writes `PF_PAGES` pages spread `PF_STRIDE` apart
/// (a demand-zero fault each), reads them back and unmaps them all (frames freed, entries
/// cleared, INVLPG each); the page tables stay, so the next round faults again into the same
/// tables.
fn pagefault(kernel: &mut Kernel, rounds: u64) -> u64 {
    let id = kernel.spawn(
        Program::PageFault,
        [rounds, PF_PAGES, PF_STRIDE, user::HEAP],
    );
    kernel.run();
    let [pts, pds, pdpts] = paging::count_tables(kernel.pml4(id));
    println!(
        "pagingos: pagefault: {} pages per round over {} MiB of address space; page tables: {} PT, {} PD, {} PDPT",
        PF_PAGES,
        (PF_PAGES * PF_STRIDE) >> 20,
        pts,
        pds,
        pdpts
    );
    let mut sum = Checksum::new();
    sum.add(kernel.exit_code(id));
    kernel.reap();
    let s = kernel.stats;
    expect(kernel, "page faults", s.faults, rounds * PF_PAGES);
    expect(
        kernel,
        "demand-zero faults",
        s.demand_zero,
        rounds * PF_PAGES,
    );
    expect(kernel, "INVLPGs", s.invlpgs, rounds * PF_PAGES);
    sum.finish(&s)
}

/// forkwait's data pages, pages the child rewrites, fresh pages the child touches.
const FW_DATA: u64 = 16;
const FW_CHILD_WRITES: u64 = 8;
const FW_CHILD_FRESH: u64 = 4;

/// `forkwait` (Adams & Agesen's fork/wait microbenchmark): one parent; each round it writes a
/// data page and its stack, forks (page tables copied, writable pages copy-on-write in both),
/// and waits. The child checks the shared pages, rewrites `FW_CHILD_WRITES` of them and its
/// stack (copy-on-write copies), touches `FW_CHILD_FRESH` fresh pages (demand-zero) and exits;
/// the parent reaps it (its address space torn down) and checks that its own pages are
/// unchanged.
fn forkwait(kernel: &mut Kernel, rounds: u64) -> u64 {
    let id = kernel.spawn(
        Program::ForkWait,
        [rounds, FW_DATA, FW_CHILD_WRITES, FW_CHILD_FRESH],
    );
    kernel.run();
    let mut sum = Checksum::new();
    sum.add(kernel.exit_code(id));
    kernel.reap();
    let s = kernel.stats;
    expect(kernel, "forks", s.forks, rounds);
    // Per round: fork, wait (blocks), the child's exit, wait again (reaps); then the exit.
    expect(kernel, "system calls", s.syscalls, 4 * rounds + 1);
    // Per round: to the child when the parent blocks, back when the child exits.
    expect(kernel, "CR3 loads", s.cr3_loads, 2 * rounds + 1);
    // The parent's data pages and stack page, then per round the child's fresh pages.
    expect(
        kernel,
        "demand-zero faults",
        s.demand_zero,
        FW_DATA + 1 + rounds * FW_CHILD_FRESH,
    );
    // Per round the child's writes and its stack.
    expect(
        kernel,
        "copy-on-write copies",
        s.cow_copy,
        rounds * (FW_CHILD_WRITES + 1),
    );
    // From the second round on, the parent's data page and stack, sole owner again.
    expect(
        kernel,
        "copy-on-write reuses",
        s.cow_reuse,
        2 * (rounds - 1),
    );
    sum.finish(&s)
}

/// cr3switch's processes and the pages each touches per turn.
const CS_PROCS: u64 = 6;
const CS_PAGES: u64 = 4;

/// `cr3switch`: `CS_PROCS` processes, each in its own address space; on each turn a process
/// checks and rewrites one word in each of `CS_PAGES` pages (at the same virtual addresses in
/// every process, in different leaf tables) and yields, so every yield loads CR3.
fn cr3switch(kernel: &mut Kernel, rounds: u64) -> u64 {
    let mut ids = [0; CS_PROCS as usize];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = kernel.spawn(Program::Cr3Switch, [rounds, CS_PAGES, i as u64 + 1, 0]);
    }
    kernel.run();
    let mut sum = Checksum::new();
    for &id in &ids {
        sum.add(kernel.exit_code(id));
    }
    kernel.reap();
    let s = kernel.stats;
    expect(kernel, "page faults", s.faults, CS_PROCS * CS_PAGES);
    expect(kernel, "system calls", s.syscalls, CS_PROCS * (rounds + 1));
    // One load per turn: each yield and each exit passes to another process.
    expect(kernel, "CR3 loads", s.cr3_loads, CS_PROCS * (rounds + 1));
    sum.finish(&s)
}

/// invlpg's window slots used and pool frames.
const INV_SLOTS: u64 = 16;
const INV_POOL: u64 = 64;

/// `invlpg`: one process and a pool of `INV_POOL` frames, each tagged with its number. Each
/// step (a round here) remaps a window slot to a pseudo-random pool frame and invalidates it
/// with INVLPG (odd steps leave the slot unmapped, to be mapped by the page-fault handler);
/// the program reads the frame's tag through the slot, which must be the new frame's, and
/// increments the frame's counter. At the end the counters must add up to the steps.
fn invlpg(kernel: &mut Kernel, rounds: u64) -> u64 {
    for f in 0..INV_POOL {
        let frame = kernel.frames.alloc_zeroed();
        kernel.frames.get(frame);
        // SAFETY: a frame just allocated, identity-mapped, owned by the kernel.
        unsafe { (frame as *mut u64).write(user::POOL_TAG + f) };
        kernel.pool[f as usize] = frame;
    }
    kernel.pool_len = INV_POOL as usize;
    let id = kernel.spawn(Program::Invlpg, [rounds, INV_SLOTS, INV_POOL, 0]);
    kernel.run();
    let mut sum = Checksum::new();
    sum.add(kernel.exit_code(id));
    kernel.reap();
    let mut visits = 0;
    for f in 0..INV_POOL as usize {
        let frame = kernel.pool[f];
        // SAFETY: a pool frame, identity-mapped; no process maps it any more.
        let (tag, count) = unsafe {
            (
                (frame as *const u64).read(),
                (frame as *const u64).add(1).read(),
            )
        };
        expect(kernel, "pool frame tag", tag, user::POOL_TAG + f as u64);
        sum.add(count);
        visits += count;
        kernel.frames.put(frame);
    }
    kernel.pool_len = 0;
    let s = kernel.stats;
    expect(kernel, "pool visits", visits, rounds);
    expect(kernel, "window faults", s.window, rounds / 2);
    expect(kernel, "page faults", s.faults, rounds / 2);
    expect(kernel, "INVLPGs", s.invlpgs, rounds);
    sum.finish(&s)
}

/// `compute`: the control: one process running 65,536 steps of a 64-bit mixing function per
/// round in registers; no page faults, one system call (exit).
fn compute(kernel: &mut Kernel, rounds: u64) -> u64 {
    let id = kernel.spawn(Program::Compute, [rounds, 0, 0, 0]);
    kernel.run();
    let mut sum = Checksum::new();
    sum.add(kernel.exit_code(id));
    kernel.reap();
    let s = kernel.stats;
    expect(kernel, "page faults", s.faults, 0);
    sum.finish(&s)
}

/// Words the `print` lines are made of.
const WORDS: [&str; 32] = [
    "page",
    "table",
    "frame",
    "fault",
    "shadow",
    "nested",
    "exit",
    "patch",
    "stub",
    "window",
    "guest",
    "kernel",
    "serial",
    "line",
    "status",
    "holding",
    "register",
    "byte",
    "ring",
    "flush",
    "hypercall",
    "port",
    "poll",
    "ready",
    "empty",
    "transmit",
    "divisor",
    "latch",
    "model",
    "console",
    "output",
    "text",
];
/// The longest `print` line, newline included.
const PRINT_MAX: usize = 128;

/// `print`: the kernel writes `rounds` lines of text through its UART routine (grt's polled
/// `print!`: for every byte an LSR poll, then the THR write), of varied length: `print <i>:`
/// and pseudo-random words (a fixed xorshift sequence) up to 12..=100 bytes, about 62 bytes per
/// line with the newline. Then `pagingos: print: <lines> lines, <bytes> bytes` (the bytes of
/// those lines). No process runs, nothing faults; the checksum covers every byte of the text.
fn print(kernel: &mut Kernel, rounds: u64) -> u64 {
    let mut sum = Checksum::new();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut bytes = 0u64;
    let mut line = [0u8; PRINT_MAX];
    for i in 0..rounds {
        let target = 12 + (next() % 89) as usize;
        let mut len = 0;
        let mut put = |text: &[u8], len: &mut usize| {
            let n = text.len().min(PRINT_MAX - 1 - *len);
            line[*len..*len + n].copy_from_slice(&text[..n]);
            *len += n;
        };
        put(b"print ", &mut len);
        let mut digits = [0u8; 20];
        let mut d = digits.len();
        let mut v = i;
        loop {
            d -= 1;
            digits[d] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(&digits[d..], &mut len);
        put(b":", &mut len);
        while len < target {
            put(b" ", &mut len);
            put(
                WORDS[(next() % WORDS.len() as u64) as usize].as_bytes(),
                &mut len,
            );
        }
        // ASCII only: always valid UTF-8.
        let text = core::str::from_utf8(&line[..len]).unwrap_or("?");
        grt::print!("{}\n", text);
        for &b in &line[..len] {
            sum.add(u64::from(b));
        }
        bytes += len as u64 + 1;
    }
    println!("pagingos: print: {} lines, {} bytes", rounds, bytes);
    sum.add(rounds);
    sum.add(bytes);
    let s = kernel.stats;
    expect(kernel, "page faults", s.faults, 0);
    sum.finish(&s)
}
