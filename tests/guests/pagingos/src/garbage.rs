//! The `garbage` workload: page-fault fidelity when the OS writes garbage into its own page
//! tables.
//!
//! One process and a test region of its own (PML4 slot 4, [`user::TEST`]) with three test
//! pages that share their PML4E, PDPTE and PDE (PDPT index 5, PD index 6, PT indices 7, 256
//! and 511). Each round, driven by a fixed-seed generator, the kernel maps one test page to
//! one of 512 test frames, corrupts one entry on its path (PML4E, PDPTE, PDE or PTE) with one
//! or two mutations (toggle P, R/W, U/S or XD; set a reserved bit from MAXPHYADDR to 51; PS in
//! the PML4E (reserved) or the PDE (a 2 MiB page, sometimes with one of the reserved bits
//! 20:13); a new address, always one of the test frames; an ignored bit, or G in a PTE),
//! invalidates (INVLPG or a CR3 reload, pseudo-randomly), and has the page accessed once: a
//! read, a write or an instruction fetch in ring 3 (the program, see [`Program::Garbage`]), or
//! a read or write by the kernel itself (CR0.WP is set). The outcome is either success (and
//! the value read) or the page fault's error code and CR2; then the entry is restored and the
//! page invalidated, so rounds are independent. Every tenth round is a write-protect check:
//! only R/W cleared, a kernel write, which must fault with error 0x3.
//!
//! Nothing a walk can reach lies outside memory this workload owns and filled: the 512 test
//! frames are one 2 MiB-aligned block, and each of them is at once a page the test pages may
//! map (word 0: `mov eax, tag; ret`, for fetches; word 1: data, read and written at offset 8)
//! and a page table (every other word an entry pointing at a test frame, with pseudo-random
//! P, R/W, U/S, XD and reserved bits, never PS). A test page never maps a page table, so a
//! write never lands in one. Only words 5, 6, 7, 256 and 511 of a test frame are ever used as
//! entries (by the CPU, which may set their accessed and dirty bits); words 0 and 1 never are,
//! and entries are rebuilt from their known clean values, never read back, so A/D bits never
//! reach the outcomes.
//!
//! The checksum folds every outcome (success flag and value, or error code and CR2), so it is
//! the same under nested paging, shadow paging and on bare hardware. Alongside, the kernel
//! predicts each outcome with its own model of the 4-level walk (SDM vol. 3 §4.5-4.7) and
//! counts the rounds where the CPU disagreed; `verbose=1` prints the first 16 of them,
//! `verbose=2` every round.

use grt::println;

use crate::arch;
use crate::frames::PAGE;
use crate::kernel::Kernel;
use crate::paging::{self, ADDR, G, P, PS, U, W};
use crate::user::{self, Program};
use crate::workloads::{expect, Checksum};

const XD: u64 = 1 << 63;
const LARGE: u64 = 2 << 20;
/// Test frames: one 2 MiB-aligned block.
const FRAMES: u64 = 512;
/// Table indices of the test pages below PML4 slot 4.
const PDPT_INDEX: u64 = 5;
const PD_INDEX: u64 = 6;
const PT_INDICES: [u64; 3] = [7, 0x100, 0x1ff];
/// Reads and writes go to word 1 of the page.
const DATA: u64 = 8;
/// Word 1 of test frame `j` starts as `DATA_TAG + j`; fetches return `FETCH_TAG + j` in EAX.
const DATA_TAG: u64 = 0x6461_7461_0000_0000;
const FETCH_TAG: u32 = 0x6761_0000;
/// What writes store: `WRITE_TAG + round`; what a kernel pre-touch writes: `TOUCH_TAG + round`.
const WRITE_TAG: u64 = 0x7772_6974_0000_0000;
const TOUCH_TAG: u64 = 0x746f_7563_0000_0000;
/// Every `WP_EVERY`th round is a write-protect check.
const WP_EVERY: u64 = 10;
/// Rounds differing from the model printed with `verbose=1`.
const PRINT_DIFFERENCES: u64 = 16;
const SEED: u64 = 0x6761_7262_6167_6521;

/// The address of the test page whose PT index is `pt_index`.
fn test_page(pt_index: u64) -> u64 {
    user::TEST | PDPT_INDEX << 30 | PD_INDEX << 21 | pt_index << 12
}

/// The test region: everything PML4 slot 4 maps.
fn in_test_region(va: u64) -> bool {
    (user::TEST..user::TEST + (1 << 39)).contains(&va)
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    UserRead,
    UserWrite,
    UserFetch,
    KernelRead,
    KernelWrite,
}

impl Op {
    fn user(self) -> bool {
        matches!(self, Op::UserRead | Op::UserWrite | Op::UserFetch)
    }

    fn write(self) -> bool {
        matches!(self, Op::UserWrite | Op::KernelWrite)
    }

    fn name(self) -> &'static str {
        match self {
            Op::UserRead => "user read",
            Op::UserWrite => "user write",
            Op::UserFetch => "user fetch",
            Op::KernelRead => "kernel read",
            Op::KernelWrite => "kernel write",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The access completed; the value read (0 for a write).
    Ok(u64),
    Fault {
        error: u64,
        cr2: u64,
    },
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match *self {
            Outcome::Ok(value) => write!(f, "ok {:#x}", value),
            Outcome::Fault { error, cr2 } => write!(f, "#PF error {:#x} cr2 {:#x}", error, cr2),
        }
    }
}

/// Page-fault error code bits.
const ERR_P: u64 = 1;
const ERR_W: u64 = 2;
const ERR_U: u64 = 4;
const ERR_RSVD: u64 = 8;
const ERR_ID: u64 = 16;

/// One round, as generated.
#[derive(Clone, Copy, Debug)]
struct Round {
    index: u64,
    op: Op,
    /// The corrupted entry's level: 4 PML4E, 3 PDPTE, 2 PDE, 1 PTE.
    level: u32,
    pt_index: u64,
    /// The test frame the clean PTE maps.
    frame: u64,
    clean: u64,
    corrupted: u64,
    mutations: [&'static str; 2],
    mutation_count: usize,
    /// Before the corruption, the kernel reads (1) or writes (2) the page through the clean
    /// mapping, so that a translation of it may be cached; 0: no.
    pretouch: u8,
    /// Invalidation before the access: CR3 reload (else INVLPG).
    flush_cr3: bool,
    write_protect_check: bool,
    predicted: Outcome,
}

impl Round {
    fn page(&self) -> u64 {
        test_page(self.pt_index)
    }

    /// The address accessed.
    fn address(&self) -> u64 {
        if self.op == Op::UserFetch {
            self.page()
        } else {
            self.page() + DATA
        }
    }

    fn value(&self) -> u64 {
        WRITE_TAG + self.index
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    ok: u64,
    not_present: u64,
    protection: u64,
    reserved: u64,
    /// Reserved-bit faults reported without P (see [`Garbage::finish`]).
    reserved_without_p: u64,
    fetch: u64,
    kernel: u64,
    write_protect: u64,
    write_protect_failed: u64,
    differ: u64,
}

/// The workload's state while the program runs.
pub struct Garbage {
    rounds: u64,
    next: u64,
    rng: Rng,
    /// The test frames' physical base (2 MiB-aligned).
    frames: u64,
    /// The physical table holding the entry of each level: `[_, PT, PD, PDPT, PML4]`.
    tables: [u64; 5],
    maxphyaddr: u32,
    nx: bool,
    /// The user round waiting for its outcome, and the page fault it took (error, CR2).
    armed: Option<Round>,
    fault: Option<(u64, u64)>,
    sum: Checksum,
    counts: Counts,
    verbose: u64,
}

const LEVEL_NAMES: [&str; 5] = ["", "PTE", "PDE", "PDPTE", "PML4E"];

impl Garbage {
    fn frame(&self, j: u64) -> u64 {
        self.frames + j * PAGE
    }

    /// Bits MAXPHYADDR..51.
    fn high_reserved(&self) -> u64 {
        ADDR & !((1u64 << self.maxphyaddr) - 1)
    }

    /// Word `i` (2..512) of test frame `j`: an entry pointing at a test frame.
    fn frame_entry(&self, j: u64, i: u64) -> u64 {
        let h = mix(SEED ^ (j << 9 | i));
        let mut e = self.frame(h % FRAMES);
        if !(h >> 9).is_multiple_of(8) {
            e |= P;
        }
        if !(h >> 12).is_multiple_of(4) {
            e |= W;
        }
        if !(h >> 15).is_multiple_of(8) {
            e |= U;
        }
        if (h >> 18).is_multiple_of(8) {
            e |= XD;
        }
        if (h >> 21).is_multiple_of(16) && self.maxphyaddr < 52 {
            e |= 1 << (u64::from(self.maxphyaddr) + (h >> 25) % u64::from(52 - self.maxphyaddr));
        }
        e
    }

    /// Fills the test frames.
    fn fill(&self) {
        for j in 0..FRAMES {
            let base = self.frame(j) as *mut u64;
            let fetch = 0xb8 | u64::from(FETCH_TAG + j as u32) << 8 | 0xc3 << 40;
            // SAFETY: the test frames are identity-mapped RAM this workload allocated; no
            // address space maps them yet.
            unsafe {
                base.write_volatile(fetch);
                base.add(1).write_volatile(DATA_TAG + j);
                for i in 2..FRAMES {
                    base.add(i as usize).write_volatile(self.frame_entry(j, i));
                }
            }
        }
    }

    /// The table index of the entry of `level` for the test page `pt_index`.
    fn index(level: u32, pt_index: u64) -> usize {
        (match level {
            1 => pt_index,
            2 => PD_INDEX,
            3 => PDPT_INDEX,
            _ => user::TEST >> 39,
        }) as usize
    }

    /// The clean entry of `level` (the PTE maps test frame `frame`).
    fn clean(&self, level: u32, frame: u64) -> u64 {
        let target = if level == 1 {
            self.frame(frame)
        } else {
            self.tables[level as usize - 1]
        };
        target | P | W | U
    }

    /// Applies mutation `kind` (0-7) with random bits `r` to `e`, the entry of `level`.
    fn mutate(&self, e: u64, kind: u64, r: u64, level: u32) -> (u64, &'static str) {
        let reserved_2m = |r: u64| 1u64 << (13 + r % 8);
        match kind {
            0 => (e ^ P, "P"),
            1 => (e ^ W, "R/W"),
            2 => (e ^ U, "U/S"),
            3 => (e ^ XD, "XD"),
            4 => {
                let span = u64::from(52 - self.maxphyaddr.min(52));
                let bit = if span > 0 {
                    1u64 << (u64::from(self.maxphyaddr) + r % span)
                } else {
                    0
                };
                (e | bit, "reserved bit")
            }
            5 if level == 4 => (e | PS, "PS"),
            5 if level == 2 => {
                let mut v = (e & !ADDR) | self.frames | PS;
                if (r >> 8).is_multiple_of(3) {
                    v |= reserved_2m(r >> 10);
                }
                (v, "PS (2 MiB)")
            }
            6 if level == 2 && e & PS != 0 => {
                let mut v = (e & !ADDR) | self.frames;
                if (r >> 8).is_multiple_of(2) {
                    v |= reserved_2m(r >> 10);
                }
                (v, "2 MiB address")
            }
            6 => ((e & !ADDR) | self.frame(r % FRAMES), "address"),
            // 7, and PS where it is not tested (PDPTE: 1 GiB pages; PTE: PAT).
            _ => {
                if level == 1 && (r >> 8).is_multiple_of(4) {
                    return (e | G, "G");
                }
                const IGNORED: [u32; 10] = [9, 10, 11, 52, 53, 54, 55, 56, 57, 58];
                (e | 1 << IGNORED[(r % 10) as usize], "ignored bit")
            }
        }
    }

    /// Generates the next round (without touching the tables).
    fn generate(&mut self) -> Round {
        let index = self.next;
        self.next += 1;
        let rng = &mut self.rng;
        let pt_index = PT_INDICES[rng.below(3) as usize];
        let frame = rng.below(FRAMES);
        let level = 1 + rng.below(4) as u32;
        let write_protect_check = index % WP_EVERY == WP_EVERY - 1;
        let op = match (write_protect_check, rng.below(16)) {
            (true, _) => Op::KernelWrite,
            (false, 0..=4) => Op::UserRead,
            (false, 5..=9) => Op::UserWrite,
            (false, 10..=13) => Op::UserFetch,
            (false, 14) => Op::KernelRead,
            (false, _) => Op::KernelWrite,
        };
        let mutation_count = if write_protect_check || rng.below(4) != 0 {
            1
        } else {
            2
        };
        let mut kinds = [0; 2];
        let mut bits = [0; 2];
        for m in 0..2 {
            kinds[m] = if write_protect_check {
                1
            } else {
                self.rng.below(8)
            };
            bits[m] = self.rng.next();
        }
        let flush_cr3 = self.rng.below(2) == 1;
        let pretouch = match self.rng.below(4) {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        let clean = self.clean(level, frame);
        let mut corrupted = clean;
        let mut mutations = [""; 2];
        for m in 0..mutation_count {
            let (v, name) = self.mutate(corrupted, kinds[m], bits[m], level);
            corrupted = v;
            mutations[m] = name;
        }
        Round {
            index,
            op,
            level,
            pt_index,
            frame,
            clean,
            corrupted,
            mutations,
            mutation_count,
            pretouch,
            flush_cr3,
            write_protect_check,
            predicted: Outcome::Ok(0),
        }
    }

    /// Whether `e`, present at `level`, sets a reserved bit.
    fn reserved(&self, e: u64, level: u32) -> bool {
        let mut mask = self.high_reserved();
        if !self.nx {
            mask |= XD;
        }
        match level {
            // PS is reserved in a PML4E, and in a PDPTE without 1 GiB pages (never set).
            4 | 3 => mask |= PS,
            2 if e & PS != 0 => mask |= 0x1f_e000,
            _ => {}
        }
        e & mask != 0
    }

    /// The architectural outcome of `round`: the 4-level walk of SDM vol. 3 §4.5 (CR0.WP = 1,
    /// EFER.NXE as set, no SMEP, SMAP or protection keys) over the entries as they will be.
    fn predict(&self, round: &Round) -> Outcome {
        let op = round.op;
        let address = round.address();
        let mut error = 0;
        if op.write() {
            error |= ERR_W;
        }
        if op.user() {
            error |= ERR_U;
        }
        if op == Op::UserFetch && self.nx {
            error |= ERR_ID;
        }
        let fault = |error| Outcome::Fault {
            error,
            cr2: address,
        };
        // None: the real table of the level; Some(j): test frame j used as a table.
        let mut table: Option<u64> = None;
        let (mut writable, mut user, mut executable) = (true, true, true);
        let mut level = 4;
        let page = loop {
            let e = match table {
                None if level == round.level => round.corrupted,
                None => self.clean(level, round.frame),
                Some(j) => self.frame_entry(j, Self::index(level, round.pt_index) as u64),
            };
            if e & P == 0 {
                return fault(error);
            }
            if self.reserved(e, level) {
                return fault(error | ERR_P | ERR_RSVD);
            }
            writable &= e & W != 0;
            user &= e & U != 0;
            executable &= !(self.nx && e & XD != 0);
            if level == 2 && e & PS != 0 {
                break (e & ADDR & !(LARGE - 1)) + (address & (LARGE - 1) & !(PAGE - 1));
            }
            if level == 1 {
                break e & ADDR;
            }
            let next = e & ADDR;
            table = match table {
                None if next == self.tables[level as usize - 1] => None,
                _ => Some(self.frame_index(next)),
            };
            level -= 1;
        };
        let allowed = match op {
            Op::UserRead => user,
            Op::UserWrite => user && writable,
            Op::UserFetch => user && executable,
            Op::KernelRead => true,
            Op::KernelWrite => writable,
        };
        if !allowed {
            return fault(error | ERR_P);
        }
        let j = self.frame_index(page);
        match op {
            Op::UserRead | Op::KernelRead => {
                // SAFETY: a test frame, identity-mapped; word 1 is never a paging entry.
                Outcome::Ok(unsafe { (page as *const u64).add(1).read_volatile() })
            }
            Op::UserWrite | Op::KernelWrite => Outcome::Ok(0),
            Op::UserFetch => Outcome::Ok(u64::from(FETCH_TAG) + j),
        }
    }

    /// The test frame at physical `pa` (every walk stays inside them; anything else is a bug
    /// of this workload).
    fn frame_index(&self, pa: u64) -> u64 {
        assert!(
            (self.frames..self.frames + FRAMES * PAGE).contains(&pa),
            "garbage: a walk left the test frames"
        );
        (pa - self.frames) / PAGE
    }

    /// Installs `round`'s mapping, pre-touches the page, installs the corruption, invalidates
    /// and predicts the outcome. The process's address space must be the loaded one.
    fn install(&self, kernel: &mut Kernel, round: &mut Round) {
        paging::write(
            self.tables[1],
            round.pt_index as usize,
            self.clean(1, round.frame),
        );
        if round.pretouch != 0 {
            // The clean mapping was unmapped and invalidated at the end of the last round, so
            // it needs no invalidation now (not present before).
            let address = round.page() + DATA;
            // SAFETY: the clean mapping maps the page to a test frame; word 1 is data.
            let result = unsafe {
                if round.pretouch == 1 {
                    arch::probe_read(address).map(|_| ())
                } else {
                    arch::probe_write(address, TOUCH_TAG + round.index)
                }
            };
            if let Err(f) = result {
                kernel.fatal(format_args!(
                    "round {}: the kernel's access to {:#x} through the clean mapping faulted (error {:#x}, cr2 {:#x})",
                    round.index, address, f.error, f.cr2
                ));
            }
        }
        if round.level == 1 {
            paging::write(self.tables[1], round.pt_index as usize, round.corrupted);
        } else {
            paging::write(
                self.tables[round.level as usize],
                Self::index(round.level, round.pt_index),
                round.corrupted,
            );
        }
        if round.flush_cr3 {
            arch::reload_cr3();
            kernel.stats.cr3_loads += 1;
        } else {
            arch::invlpg(round.page());
            kernel.stats.invlpgs += 1;
        }
        round.predicted = self.predict(round);
    }

    /// Restores the clean tables (the PTE unmapped) and invalidates the page.
    fn restore(&self, kernel: &mut Kernel, round: &Round) {
        paging::write(self.tables[1], round.pt_index as usize, 0);
        if round.level > 1 {
            paging::write(
                self.tables[round.level as usize],
                Self::index(round.level, round.pt_index),
                round.clean,
            );
        }
        arch::invlpg(round.page());
        kernel.stats.invlpgs += 1;
    }

    /// Records the outcome of `round` and restores.
    fn finish(&mut self, kernel: &mut Kernel, round: Round, reported: Outcome) {
        self.restore(kernel, &round);
        let c = &mut self.counts;
        // RSVD implies P (SDM vol. 3 §4.7: reserved bits are checked only in present entries);
        // QEMU 7.2's TCG reports reserved-bit faults without P. Counted, then set, so that the
        // checksum does not depend on that quirk.
        let outcome = match reported {
            Outcome::Fault { error, cr2 } if error & (ERR_RSVD | ERR_P) == ERR_RSVD => {
                c.reserved_without_p += 1;
                Outcome::Fault {
                    error: error | ERR_P,
                    cr2,
                }
            }
            other => other,
        };
        match outcome {
            Outcome::Ok(value) => {
                c.ok += 1;
                self.sum.add(1);
                self.sum.add(value);
            }
            Outcome::Fault { error, cr2 } => {
                if error & ERR_RSVD != 0 {
                    c.reserved += 1;
                } else if error & ERR_ID != 0 {
                    c.fetch += 1;
                } else if error & ERR_P == 0 {
                    c.not_present += 1;
                } else {
                    c.protection += 1;
                }
                self.sum.add(2);
                self.sum.add(error);
                self.sum.add(cr2);
            }
        }
        if !round.op.user() {
            c.kernel += 1;
        }
        let expected_wp = Outcome::Fault {
            error: ERR_P | ERR_W,
            cr2: round.address(),
        };
        if round.write_protect_check {
            c.write_protect += 1;
            if outcome != expected_wp {
                c.write_protect_failed += 1;
                println!(
                    "pagingos: garbage: round {}: write-protect check failed: got {}, expected {}",
                    round.index, outcome, expected_wp
                );
            }
        }
        let differs = outcome != round.predicted;
        if differs {
            c.differ += 1;
        }
        if self.verbose >= 2 || (self.verbose == 1 && differs && c.differ <= PRINT_DIFFERENCES) {
            self.print(&round, reported, outcome);
        }
    }

    /// One line for `round`: what the CPU reported and, when it differs, what the model said.
    fn print(&self, round: &Round, reported: Outcome, outcome: Outcome) {
        let second = if round.mutation_count > 1 {
            round.mutations[1]
        } else {
            ""
        };
        println!(
            "pagingos: garbage: round {}: {}{} at {:#x}, {} {:#x} -> {:#x} ({}{}{}), flush {}: {}{}{}",
            round.index,
            ["", "kernel read, then ", "kernel write, then "][round.pretouch as usize],
            round.op.name(),
            round.address(),
            LEVEL_NAMES[round.level as usize],
            round.clean,
            round.corrupted,
            round.mutations[0],
            if second.is_empty() { "" } else { ", " },
            second,
            if round.flush_cr3 { "CR3" } else { "INVLPG" },
            reported,
            if outcome == round.predicted {
                ""
            } else {
                ", model: "
            },
            Predicted(round, outcome),
        );
    }
}

/// Prints the model's outcome when it differs from `.1`.
struct Predicted<'a>(&'a Round, Outcome);

impl core::fmt::Display for Predicted<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        if self.0.predicted == self.1 {
            Ok(())
        } else {
            write!(f, "{}", self.0.predicted)
        }
    }
}

/// `garbage(outcome)`: records the outcome of the armed round (the value the program read,
/// unless the access faulted), runs the kernel's own rounds up to the next user round, arms
/// and installs it, and returns (the access, its address, the value to write); at the end
/// (done, 0, 0).
pub fn syscall(kernel: &mut Kernel, value: u64) -> (u64, u64, u64) {
    let Some(mut g) = kernel.garbage.take() else {
        kernel.fatal(format_args!(
            "garbage system call outside the garbage workload"
        ));
    };
    if let Some(round) = g.armed.take() {
        let outcome = match g.fault.take() {
            Some((error, cr2)) => Outcome::Fault { error, cr2 },
            None => Outcome::Ok(value),
        };
        g.finish(kernel, round, outcome);
    }
    let result = loop {
        if g.next == g.rounds {
            break (user::GARBAGE_DONE, 0, 0);
        }
        let mut round = g.generate();
        g.install(kernel, &mut round);
        let op = match round.op {
            Op::UserRead => user::GARBAGE_READ,
            Op::UserWrite => user::GARBAGE_WRITE,
            Op::UserFetch => user::GARBAGE_FETCH,
            Op::KernelRead | Op::KernelWrite => {
                // The process's address space is the loaded one (a system call).
                let fault = |f: arch::KernelFault| Outcome::Fault {
                    error: f.error,
                    cr2: f.cr2,
                };
                // SAFETY: every translation of a test page leads to a test frame, whose words
                // 1 only hold data (see the module documentation).
                let outcome = unsafe {
                    if round.op == Op::KernelRead {
                        arch::probe_read(round.address()).map_or_else(fault, Outcome::Ok)
                    } else {
                        arch::probe_write(round.address(), round.value())
                            .map_or_else(fault, |()| Outcome::Ok(0))
                    }
                };
                g.finish(kernel, round, outcome);
                continue;
            }
        };
        let answer = (op, round.address(), round.value());
        g.armed = Some(round);
        break answer;
    };
    kernel.garbage = Some(g);
    result
}

/// The page-fault hook: true when `va` is the armed round's test access (recorded; the caller
/// resumes the program at its recovery address).
pub fn user_fault(kernel: &mut Kernel, va: u64, error: u64) -> bool {
    let Some(g) = kernel.garbage.as_mut() else {
        return false;
    };
    if !in_test_region(va) || g.armed.is_none() || g.fault.is_some() {
        return false;
    }
    g.fault = Some((error, va));
    true
}

/// 512 contiguous, 2 MiB-aligned frames (the frames skipped to align are freed again).
fn alloc_frames(kernel: &mut Kernel) -> u64 {
    let mut skipped = [0u64; FRAMES as usize];
    let mut count = 0;
    let base = loop {
        let frame = kernel.frames.alloc();
        if frame.is_multiple_of(LARGE) {
            break frame;
        }
        if count == skipped.len() {
            kernel.fatal(format_args!("no 2 MiB-aligned frame"));
        }
        skipped[count] = frame;
        count += 1;
    };
    for i in 1..FRAMES {
        let frame = kernel.frames.alloc();
        if frame != base + i * PAGE {
            kernel.fatal(format_args!(
                "test frames not contiguous ({:#x} after {:#x})",
                frame, base
            ));
        }
    }
    for &frame in &skipped[..count] {
        kernel.frames.release(frame);
    }
    base
}

/// The workload (see the module documentation).
pub fn run(kernel: &mut Kernel, rounds: u64) -> u64 {
    let verbose = kernel.verbose;
    let nx = arch::enable_nx();
    let maxphyaddr = arch::maxphyaddr().clamp(12, 52);
    let frames = alloc_frames(kernel);
    let id = kernel.spawn(Program::Garbage, [0; 4]);
    let pml4 = kernel.pml4(id);
    for pt_index in PT_INDICES {
        paging::walk(&mut kernel.frames, pml4, test_page(pt_index), true).expect("walk");
    }
    let pdpt = paging::read(pml4, (user::TEST >> 39) as usize) & ADDR;
    let pd = paging::read(pdpt, PDPT_INDEX as usize) & ADDR;
    let pt = paging::read(pd, PD_INDEX as usize) & ADDR;
    let g = Garbage {
        rounds,
        next: 0,
        rng: Rng(SEED),
        frames,
        tables: [0, pt, pd, pdpt, pml4],
        maxphyaddr,
        nx,
        armed: None,
        fault: None,
        sum: Checksum::new(),
        counts: Counts::default(),
        verbose,
    };
    g.fill();
    println!(
        "pagingos: garbage: MAXPHYADDR {}, NX {}, test pages {:#x} {:#x} {:#x}",
        maxphyaddr,
        if nx { "on" } else { "off" },
        test_page(PT_INDICES[0]),
        test_page(PT_INDICES[1]),
        test_page(PT_INDICES[2])
    );
    kernel.garbage = Some(g);
    kernel.run();
    let g = kernel.garbage.take().expect("garbage state");
    let mut sum = g.sum;
    sum.add(kernel.exit_code(id));
    kernel.reap();
    for j in 0..FRAMES {
        kernel.frames.release(frames + j * PAGE);
    }
    let c = g.counts;
    println!(
        "pagingos: garbage: {} ok, {} not-present, {} protection, {} reserved-bit ({} reported without P), {} fetch faults; {} kernel accesses, {} of {} write-protect checks passed; {} differ from the model",
        c.ok,
        c.not_present,
        c.protection,
        c.reserved,
        c.reserved_without_p,
        c.fetch,
        c.kernel,
        c.write_protect - c.write_protect_failed,
        c.write_protect,
        c.differ
    );
    expect(kernel, "garbage rounds", g.next, rounds);
    expect(
        kernel,
        "failed write-protect checks",
        c.write_protect_failed,
        0,
    );
    sum.finish(&kernel.stats)
}
