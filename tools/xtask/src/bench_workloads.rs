//! `cargo xtask bench workloads`: the paging workloads in every memory mode on every backend.
//!
//! For each backend this machine can run ([`Backend`]: `svm` on QEMU under
//! `-icount shift=0,sleep=off`, `vmx` on Bochs), each `pagingos` workload ([`WORKLOADS`]) and each
//! memory mode ([`MODES`], data: a new mode is one more entry), it generates a system with a
//! single guest (`target/bench/systems/<name>.toml`, so no other guest pollutes the timing), boots
//! it once and reads from the transcript:
//!
//! - the guest's `pagingos: <workload> rounds=<N> checksum=0x<16 hex>` line and its
//!   `pagingos: page faults <n> (…)` line (the guest's own page faults);
//! - the VMM's `vmm.<guest>: exits: startup 1, cpuid 2, io 367; …; uart output <N> bytes` line
//!   (exits by reason, the total is their sum; the bytes the guest wrote to its UART, the
//!   characters of the exits-per-character column) and its `exit timing … ; run: guest <G>,
//!   hypervisor <H>` line (TSC ticks in guest mode and outside it between the first and the last
//!   exit);
//! - `profile:` lines (`abi::profile`), when the kernel prints them: the exits by reason, summed
//!   over the batches, which then replace the VMM's counts (the kernel also counts the exits it
//!   handles itself, as shadow paging's will be; `exits_source` says which), and the hot sites,
//!   summed over the batches, the hottest [`HOT_SITES`] kept.
//!
//! The `print` workload (issue #6) writes text through the guest's polled UART routine, two
//! exits per character unpatched; its row's `ex/char` column is the figure of merit for DMP's
//! UART stubs. The benchmark runs it with 2,000 lines (about 119 KB): the DMP service patches
//! only at the first exit profile (`abi::vm::PROFILE_PERIOD` exits, half as many characters),
//! and the exits per character are those of the whole run, warm-up included.
//!
//! A run that does not end with success and a checksum line is recorded as failed with the
//! reason the transcript gives (the VMM's error, the guest's verdict from init), never dropped.
//! Each run's transcript is kept in `target/bench/workloads/<run>/serial.log`.
//!
//! **Cost model** ([`CostModel`]): the emulators count instructions, not cycles, and a hardware
//! world switch costs them about one instruction; so
//! `modeled_cycles = G × CPI_GUEST + H × CPI_HYPERVISOR + exits × EXIT_ROUND_TRIP_CYCLES`, with
//! both CPIs 1.0 (an assumption) and the exit's direct cost taken from KVM's published figure
//! (the one `bench exits` cites).
//!
//! **Ticks.** Under QEMU `-icount shift=0` the TSC advances one per executed instruction. Bochs
//! (our bochsrc has no `clock:` line, so `sync=none`) returns its virtual tick counter for RDTSC;
//! that counter advances one per emulated instruction, so a Bochs TSC tick is an instruction too.
//! On both, time spent idle (HLT) jumps the clock to the next timer event and counts as ticks of
//! the hypervisor part, as do the serial server's and init's instructions between the exits.
//!
//! Outputs: a table on stdout, `target/bench/results.json`, `target/bench/exits.svg`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::bench_svg::{self, Chart, Group, Panel};
use crate::bench_transcript::{
    failure_reason, parse_checksum, parse_exits, parse_hot_sites, parse_page_faults,
    parse_profile_exits, parse_split, parse_uart_bytes, HotSite,
};
use crate::emulator::{self, Emulator, Spec};
use crate::outcome::Outcome;
use crate::setup::{self, Need};
use crate::{image, layout, manifest, pack, run};

/// A `pagingos` workload and the rounds the benchmark runs (passed as `rounds=` on the guest's
/// command line and recorded in the results).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub rounds: u64,
}

/// The workloads, with pagingos's default rounds (tests/guests/README.md) but for `print`, whose
/// 2,000 lines make the DMP service's warm-up (the exits up to the first profile) small against
/// the whole run: a full run of all of them in three modes on both backends takes several
/// minutes.
pub const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "pagefault",
        rounds: 20,
    },
    Workload {
        name: "forkwait",
        rounds: 1000,
    },
    Workload {
        name: "cr3switch",
        rounds: 3000,
    },
    Workload {
        name: "invlpg",
        rounds: 20000,
    },
    Workload {
        name: "compute",
        rounds: 500,
    },
    Workload {
        name: "print",
        rounds: 2000,
    },
];

/// A memory mode: how the generated manifest configures the guest.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// Its name in the results, the table and the chart.
    pub name: &'static str,
    /// The guest's `mode =` in the manifest.
    pub guest_mode: &'static str,
    /// More `key = value` lines for the `[[guest]]` table.
    pub guest_extra: &'static str,
    /// More servers (whole `[[server]]` tables), e.g. the DMP service.
    pub servers: &'static str,
}

/// The DMP service as the `shadow+dmp` systems declare it (as in `manifests/dmp.toml`).
const DMP_SERVICE: &str = "[[server]]\n\
name = \"dmp-service\"\n\
priority = 15\n\
quota = \"128K\"\n\
memory = \"256K\"\n\
portals = [\"attach\"]\n\
uses = [\"serial.log\"]\n";

/// The modes, in column order; the first is the baseline of the exit ratios.
pub const MODES: &[Mode] = &[
    Mode {
        name: "nested",
        guest_mode: "nested",
        guest_extra: "",
        servers: "",
    },
    Mode {
        name: "shadow",
        guest_mode: "shadow",
        guest_extra: "",
        servers: "",
    },
    Mode {
        name: "shadow+dmp",
        guest_mode: "shadow",
        guest_extra: "dmp = true",
        servers: DMP_SERVICE,
    },
];

/// Where a run executes: the virtualization extension and the emulator that offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// AMD SVM with nested paging, on QEMU (TCG) with `-icount shift=0,sleep=off`.
    Svm,
    /// Intel VMX with EPT, on Bochs.
    Vmx,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Svm, Backend::Vmx];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Svm => "svm",
            Backend::Vmx => "vmx",
        }
    }

    fn emulator(self) -> Emulator {
        match self {
            Backend::Svm => Emulator::Qemu,
            Backend::Vmx => Emulator::Bochs,
        }
    }

    fn need(self) -> Need {
        match self {
            Backend::Svm => Need::Qemu,
            Backend::Vmx => Need::Bochs,
        }
    }

    /// What one TSC tick (the unit of the guest/hypervisor counts) is on this backend.
    pub fn tick(self) -> &'static str {
        match self {
            Backend::Svm => {
                "instructions: QEMU -icount shift=0,sleep=off advances the TSC by one per executed \
                 instruction (idle time jumps to the next timer event)"
            }
            Backend::Vmx => {
                "Bochs TSC ticks: without a `clock:` line (sync=none) RDTSC returns Bochs's \
                 virtual tick counter, which advances one per emulated instruction (idle time in \
                 HLT jumps to the next timer event)"
            }
        }
    }

    /// The unit of the counts, short.
    pub fn unit(self) -> &'static str {
        match self {
            Backend::Svm => "instructions",
            Backend::Vmx => "Bochs TSC ticks",
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Backend::Svm => Duration::from_secs(300),
            Backend::Vmx => Duration::from_secs(600),
        }
    }
}

/// Machine RAM of the generated systems (one 32 MiB guest needs more than the default pool).
const RAM: &str = "512M";
/// Guest RAM, as in `manifests/workloads.toml`.
const GUEST_MEMORY: &str = "32M";
/// Hot sites kept per run.
pub const HOT_SITES: usize = 10;

// ---------------------------------------------------------------------------------------------
// The cost model.

/// Cycles per guest instruction (an assumption: the emulators count instructions, not cycles).
pub const CPI_GUEST: f64 = 1.0;
/// Cycles per hypervisor instruction (an assumption, as [`CPI_GUEST`]).
pub const CPI_HYPERVISOR: f64 = 1.0;
/// Cycles of one exit's hardware round trip (world switch out and back in, no handling): KVM's
/// direct exit cost on a Xeon X5570, the figure `bench exits` cites.
pub const EXIT_ROUND_TRIP_CYCLES: u64 = crate::bench_exits::PUBLISHED[0].2;
const EXIT_SOURCE: &str = crate::bench_exits::PUBLISHED[0].5;

/// `G × CPI_GUEST + H × CPI_HYPERVISOR + exits × EXIT_ROUND_TRIP_CYCLES`.
pub fn modeled_cycles(guest: u64, hypervisor: u64, exits: u64) -> f64 {
    guest as f64 * CPI_GUEST
        + hypervisor as f64 * CPI_HYPERVISOR
        + exits as f64 * EXIT_ROUND_TRIP_CYCLES as f64
}

#[derive(Serialize, Debug)]
pub struct Constant {
    pub value: f64,
    pub unit: &'static str,
    pub source: &'static str,
}

#[derive(Serialize, Debug)]
pub struct CostModel {
    pub formula: &'static str,
    pub constants: BTreeMap<&'static str, Constant>,
}

pub fn cost_model() -> CostModel {
    let assumption = "assumption: one cycle per instruction (the emulators count instructions; \
                      real CPIs differ by workload and machine)";
    CostModel {
        formula: "modeled_cycles = guest_instructions * CPI_GUEST + hypervisor_instructions * \
                  CPI_HYPERVISOR + exits_total * EXIT_ROUND_TRIP_CYCLES",
        constants: BTreeMap::from([
            (
                "CPI_GUEST",
                Constant {
                    value: CPI_GUEST,
                    unit: "cycles per guest instruction",
                    source: assumption,
                },
            ),
            (
                "CPI_HYPERVISOR",
                Constant {
                    value: CPI_HYPERVISOR,
                    unit: "cycles per hypervisor instruction (kernel, vmm-server, other servers)",
                    source: assumption,
                },
            ),
            (
                "EXIT_ROUND_TRIP_CYCLES",
                Constant {
                    value: EXIT_ROUND_TRIP_CYCLES as f64,
                    unit: "cycles per exit (hardware world switch out and back, no handling)",
                    source: EXIT_SOURCE,
                },
            ),
        ]),
    }
}

// ---------------------------------------------------------------------------------------------
// Runs and results.

/// One boot's results (`runs[]` of results.json).
#[derive(Serialize, Debug)]
pub struct RunResult {
    pub workload: String,
    pub mode: String,
    pub backend: Backend,
    pub rounds: u64,
    /// `ok`, or `failed: <reason>`.
    pub status: String,
    pub checksum: Option<String>,
    /// The sum of `exits_by_reason`.
    pub exits_total: Option<u64>,
    /// From the kernel's `profile:` lines when it prints them (they count the exits the kernel
    /// handles itself too), else from the VMM's `exits:` line: see `exits_source`.
    pub exits_by_reason: BTreeMap<String, u64>,
    /// `profile` or `vmm`.
    pub exits_source: &'static str,
    /// The exits the vmm-server handled (its `exits:` line).
    pub vmm_exits_total: Option<u64>,
    pub guest_page_faults: Option<u64>,
    /// `exits_total / guest_page_faults`; absent without faults.
    pub exits_per_guest_fault: Option<f64>,
    /// Bytes the guest wrote to its UART (the VMM's count).
    pub uart_bytes: Option<u64>,
    /// `exits_total / uart_bytes`; absent without output.
    pub exits_per_char: Option<f64>,
    /// Ticks in guest mode between the first and the last exit (see [`Backend::tick`]).
    pub guest_instructions: Option<u64>,
    /// The other ticks of that span: kernel, vmm-server, other servers, idle.
    pub hypervisor_instructions: Option<u64>,
    pub modeled_cycles: Option<f64>,
    pub hot_sites: Vec<HotSite>,
    pub wall_seconds: f64,
    /// The run's serial transcript.
    pub transcript: Option<String>,
}

impl RunResult {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// A run that did not get as far as booting.
    fn not_booted(workload: &Workload, mode: &Mode, backend: Backend, why: String) -> Self {
        from_transcript(workload, mode, backend, &[], &Outcome::Broken(why))
    }
}

/// The guest's name in generated systems: the workload's.
fn guest_name(workload: &Workload) -> &'static str {
    workload.name
}

/// Everything one transcript says about a run of `workload` in `mode` on `backend`.
pub fn from_transcript(
    workload: &Workload,
    mode: &Mode,
    backend: Backend,
    lines: &[&str],
    outcome: &Outcome,
) -> RunResult {
    let guest = guest_name(workload);
    let checked = parse_checksum(lines, workload.name);
    let vmm_exits = parse_exits(lines, guest);
    let vmm_exits_total = vmm_exits.as_ref().map(|e| e.values().sum::<u64>());
    let (exits, exits_source) = match parse_profile_exits(lines) {
        Some(kernel) => (Some(kernel), "profile"),
        None => (vmm_exits, "vmm"),
    };
    let exits_total = exits.as_ref().map(|e| e.values().sum::<u64>());
    let faults = parse_page_faults(lines);
    let uart_bytes = parse_uart_bytes(lines, guest);
    let split = parse_split(lines, guest);
    let unproven = mode_unproven(mode, lines);
    let status = match (&checked, outcome) {
        (Some(_), Outcome::Success) if unproven.is_some() => {
            format!("failed: {}", unproven.unwrap_or_default())
        }
        (Some((rounds, _)), Outcome::Success) if *rounds == workload.rounds => "ok".to_string(),
        (Some((rounds, _)), Outcome::Success) => format!(
            "failed: the guest ran {rounds} rounds, not {}",
            workload.rounds
        ),
        _ => format!("failed: {}", failure_reason(lines, guest, outcome)),
    };
    RunResult {
        workload: workload.name.into(),
        mode: mode.name.into(),
        backend,
        rounds: workload.rounds,
        status,
        checksum: checked.map(|(_, c)| c),
        exits_total,
        exits_by_reason: exits.unwrap_or_default(),
        exits_source,
        vmm_exits_total,
        guest_page_faults: faults,
        exits_per_guest_fault: exits_total
            .zip(faults.filter(|&f| f > 0))
            .map(|(e, f)| e as f64 / f as f64),
        uart_bytes,
        exits_per_char: exits_total
            .zip(uart_bytes.filter(|&b| b > 0))
            .map(|(e, b)| e as f64 / b as f64),
        guest_instructions: split.map(|s| s.0),
        hypervisor_instructions: split.map(|s| s.1),
        modeled_cycles: split
            .zip(exits_total)
            .map(|((g, h), e)| modeled_cycles(g, h, e)),
        hot_sites: parse_hot_sites(lines, HOT_SITES),
        wall_seconds: 0.0,
        transcript: None,
    }
}

/// Why the transcript does not prove that the run used `mode`, on the kernel's word (its
/// `profile: vm=N shadow fills=…` line exists only for shadow-mode Vms) and, for `shadow+dmp`,
/// the DMP service's (`dmp: vm0: attached`); None when it does.
pub fn mode_unproven(mode: &Mode, lines: &[&str]) -> Option<String> {
    let shadow = lines
        .iter()
        .any(|l| l.contains("profile: vm=") && l.contains(" shadow fills="));
    match (mode.guest_mode, shadow) {
        ("shadow", false) => {
            return Some("the kernel never reported shadow paging for the guest".into())
        }
        ("nested", true) => return Some("the kernel reported shadow paging in nested mode".into()),
        _ => {}
    }
    let dmp = !mode.servers.is_empty();
    if dmp && !lines.iter().any(|l| l.contains("dmp: vm0: attached")) {
        return Some("the DMP service never attached".into());
    }
    None
}

/// Whether the runs of one workload on one backend (one per mode) produced the same checksum:
/// the differential check of issue #5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "agreement", rename_all = "lowercase")]
pub enum Agreement {
    /// Every mode succeeded with the same checksum.
    Equal,
    /// Two successful modes disagree.
    Differ,
    /// Not every mode succeeded; those that did agree (`ok` of `of`).
    Incomplete { ok: usize, of: usize },
}

pub fn checksums_agree<'a>(runs: impl IntoIterator<Item = &'a RunResult>) -> Agreement {
    let mut of = 0;
    let mut sums: Vec<&str> = Vec::new();
    for run in runs {
        of += 1;
        if let (true, Some(sum)) = (run.ok(), run.checksum.as_deref()) {
            sums.push(sum);
        }
    }
    if sums.windows(2).any(|w| w[0] != w[1]) {
        Agreement::Differ
    } else if sums.len() == of && of > 0 {
        Agreement::Equal
    } else {
        Agreement::Incomplete { ok: sums.len(), of }
    }
}

impl Agreement {
    fn cell(&self) -> String {
        match self {
            Agreement::Equal => "yes".into(),
            Agreement::Differ => "NO: differ".into(),
            Agreement::Incomplete { ok, of } => format!("n/a ({ok} of {of} ok)"),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct BackendInfo {
    pub backend: Backend,
    pub emulator: &'static str,
    pub cpu: &'static str,
    pub unit: &'static str,
    pub tick: &'static str,
}

#[derive(Serialize, Debug)]
pub struct Skipped {
    pub backend: Backend,
    pub reason: String,
}

#[derive(Serialize, Debug)]
pub struct ChecksumCheck {
    pub workload: String,
    pub backend: Backend,
    #[serde(flatten)]
    pub agreement: Agreement,
    /// Mode → checksum of the runs that printed one.
    pub checksums: BTreeMap<String, String>,
}

/// `target/bench/results.json`.
#[derive(Serialize, Debug)]
pub struct Results {
    pub benchmark: &'static str,
    pub profile: &'static str,
    pub bootloader: &'static str,
    pub modes: Vec<&'static str>,
    pub backends: Vec<BackendInfo>,
    pub skipped_backends: Vec<Skipped>,
    pub cost_model: CostModel,
    pub checksum_checks: Vec<ChecksumCheck>,
    pub wall_seconds: f64,
    pub runs: Vec<RunResult>,
}

fn checksum_checks(runs: &[RunResult]) -> Vec<ChecksumCheck> {
    let mut checks = Vec::new();
    for backend in Backend::ALL {
        for workload in WORKLOADS {
            let rows: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.backend == backend && r.workload == workload.name)
                .collect();
            if rows.is_empty() {
                continue;
            }
            checks.push(ChecksumCheck {
                workload: workload.name.into(),
                backend,
                agreement: checksums_agree(rows.iter().copied()),
                checksums: rows
                    .iter()
                    .filter_map(|r| Some((r.mode.clone(), r.checksum.clone()?)))
                    .collect(),
            });
        }
    }
    checks
}

// ---------------------------------------------------------------------------------------------
// Generated systems.

/// The name of the generated system for a run (also its file stem and work directory).
pub fn system_name(workload: &Workload, mode: &Mode) -> String {
    let slug: String = mode
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("bench-{}-{slug}", workload.name)
}

/// The manifest of a system with the serial server and one `pagingos` guest.
pub fn manifest_text(workload: &Workload, mode: &Mode) -> String {
    let mut text = format!(
        "# Generated by `cargo xtask bench workloads` (tools/xtask/src/bench_workloads.rs).\n\
         [system]\n\
         name = \"{name}\"\n\
         description = \"pagingos {workload} in {mode} mode, alone\"\n\
         cmdline = \"\"\n\
         ram = \"{RAM}\"\n\
         \n\
         [[server]]\n\
         name = \"serial\"\n\
         priority = 20\n\
         quota = \"64K\"\n\
         memory = \"64K\"\n\
         io_ports = [{{ base = 0x3f8, count = 8 }}]\n\
         irqs = [4]\n\
         portals = [\"log\"]\n\
         \n\
         {servers}\n\
         [[guest]]\n\
         name = \"{guest}\"\n\
         image = \"pagingos\"\n\
         memory = \"{GUEST_MEMORY}\"\n\
         mode = \"{guest_mode}\"\n\
         cmdline = \"workload={workload} rounds={rounds}\"\n",
        name = system_name(workload, mode),
        workload = workload.name,
        mode = mode.name,
        guest = guest_name(workload),
        guest_mode = mode.guest_mode,
        rounds = workload.rounds,
        servers = mode.servers,
    );
    for line in mode.guest_extra.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str(line.trim());
        text.push('\n');
    }
    text
}

struct Context<'a> {
    root: &'a Path,
    kernel: &'a Path,
    release: bool,
    bootloader: image::Bootloader,
    /// The modes whose user crates and guests have been built in this run (a mode may add
    /// servers, such as the DMP service).
    built: Vec<&'static str>,
}

/// Generates, packs and boots one run; any problem becomes a failed run.
fn one_run(ctx: &mut Context, workload: &Workload, mode: &Mode, backend: Backend) -> RunResult {
    let start = Instant::now();
    let mut result = match boot_one(ctx, workload, mode, backend) {
        Ok(result) => result,
        Err(err) => RunResult::not_booted(workload, mode, backend, format!("{err:#}")),
    };
    result.wall_seconds = (start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    result
}

fn boot_one(
    ctx: &mut Context,
    workload: &Workload,
    mode: &Mode,
    backend: Backend,
) -> Result<RunResult> {
    let name = system_name(workload, mode);
    let path = layout::work_dir(&["bench", "systems"])?.join(format!("{name}.toml"));
    std::fs::write(&path, manifest_text(workload, mode))?;
    let system = manifest::load_file(ctx.root, &path)?;
    let build = !ctx.built.contains(&mode.name);
    let modules = pack::modules(ctx.root, &system, ctx.release, build)?;
    if build {
        ctx.built.push(mode.name);
    }
    let work = layout::work_dir(&["bench", "workloads", &format!("{name}-{}", backend.name())])?;
    let iso = work.join(format!("{name}.iso"));
    image::for_system(&system, &modules, ctx.bootloader, ctx.kernel, "", &iso)?;
    let spec = Spec {
        iso,
        cpu: backend.emulator().default_cpu().into(),
        timeout: backend.timeout(),
        ram_mib: system.ram_mib,
        icount: backend == Backend::Svm,
        echo: false,
        work: work.clone(),
        extra: Vec::new(),
    };
    let boot = emulator::boot(backend.emulator(), &spec)?;
    let log = work.join("serial.log");
    std::fs::write(&log, boot.log_text())?;
    let mut result = from_transcript(workload, mode, backend, &boot.texts(), &boot.outcome());
    result.transcript = Some(layout::show(&log));
    Ok(result)
}

/// Runs the benchmark with the kernel ELF `kernel` on every backend (or only `only`); false when
/// a run failed or the modes' checksums are not all equal.
pub fn run(kernel: &Path, release: bool, only: Option<Backend>) -> Result<bool> {
    let started = Instant::now();
    let root = layout::root();
    let mut backends = Vec::new();
    let mut skipped = Vec::new();
    for backend in Backend::ALL {
        if only.is_some_and(|o| o != backend) {
            continue;
        }
        match setup::ensure(&[backend.need()]) {
            Ok(()) => backends.push(backend),
            Err(err) => {
                eprintln!("bench: workloads: skipping {}: {err:#}", backend.name());
                skipped.push(Skipped {
                    backend,
                    reason: format!("{err:#}"),
                });
            }
        }
    }
    let plan: Vec<(Backend, Workload, Mode)> = backends
        .iter()
        .flat_map(|&b| {
            WORKLOADS
                .iter()
                .flat_map(move |&w| MODES.iter().map(move |&m| (b, w, m)))
        })
        .collect();
    let mut ctx = Context {
        root: &root,
        kernel,
        release,
        bootloader: run::default_bootloader(),
        built: Vec::new(),
    };
    let mut runs = Vec::new();
    for (i, (backend, workload, mode)) in plan.iter().enumerate() {
        let label = format!(
            "bench: workloads: [{}/{}] {} {} {}",
            i + 1,
            plan.len(),
            workload.name,
            mode.name,
            backend.name()
        );
        eprintln!("{label} ...");
        let result = one_run(&mut ctx, workload, mode, *backend);
        eprintln!(
            "{label}: {} ({:.1} s)",
            if result.ok() {
                format!("ok, {} exits", result.exits_total.unwrap_or(0))
            } else {
                result.status.clone()
            },
            result.wall_seconds
        );
        runs.push(result);
    }
    let results = Results {
        benchmark: "workloads",
        profile: if release { "release" } else { "debug" },
        bootloader: ctx.bootloader.name(),
        modes: MODES.iter().map(|m| m.name).collect(),
        backends: backends
            .iter()
            .map(|&b| BackendInfo {
                backend: b,
                emulator: b.emulator().name(),
                cpu: b.emulator().default_cpu(),
                unit: b.unit(),
                tick: b.tick(),
            })
            .collect(),
        skipped_backends: skipped,
        cost_model: cost_model(),
        checksum_checks: checksum_checks(&runs),
        wall_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        runs,
    };
    print!("{}", table(&results));
    let dir = layout::work_dir(&["bench"])?;
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")?;
    let svg = dir.join("exits.svg");
    std::fs::write(&svg, bench_svg::render(&chart(&results)))?;
    println!(
        "wrote {} and {} ({:.0} s)",
        layout::show(&json),
        layout::show(&svg),
        results.wall_seconds
    );
    let failed = results.runs.iter().filter(|r| !r.ok()).count();
    let disagree = results
        .checksum_checks
        .iter()
        .filter(|c| c.agreement != Agreement::Equal)
        .count();
    if failed > 0 || disagree > 0 {
        println!(
            "bench: workloads: {failed} runs failed, {disagree} workloads without equal checksums in every mode"
        );
    }
    Ok(failed == 0 && disagree == 0)
}

// ---------------------------------------------------------------------------------------------
// Presentation.

fn find<'a>(
    runs: &'a [RunResult],
    workload: &str,
    mode: &str,
    backend: Backend,
) -> Option<&'a RunResult> {
    runs.iter()
        .find(|r| r.workload == workload && r.mode == mode && r.backend == backend)
}

/// The side-by-side table: rows workload × backend; per mode exits, exits per guest page fault,
/// exits per character of UART output and modeled Mcycles; the exit ratio of each later mode to
/// the first; whether the checksums agree. Failed cells carry a note letter; the notes (the
/// reasons) follow the table.
pub fn table(results: &Results) -> String {
    const CELL: usize = 40;
    let runs = &results.runs;
    let mut text = format!(
        "Workloads benchmark: pagingos alone under its vmm-server, one boot per run, {} kernel \
         ({:.0} s)\n",
        results.profile, results.wall_seconds
    );
    let mut head1 = format!("{:<10} {:<7} ", "", "");
    let mut head2 = format!("{:<10} {:<7} ", "workload", "backend");
    for mode in MODES {
        head1.push_str(&format!("| {:<CELL$}", mode.name));
        head2.push_str(&format!(
            "| {:>9} {:>9} {:>9} {:>9} ",
            "exits", "ex/fault", "ex/char", "Mcycles"
        ));
    }
    let ratio_titles: Vec<String> = MODES[1.min(MODES.len())..]
        .iter()
        .map(|mode| format!("{}/{}", mode.name, MODES[0].name))
        .collect();
    for title in &ratio_titles {
        let width = title.len().max(11);
        head1.push_str(&format!("| {title:<width$} "));
        head2.push_str(&format!("| {:>width$} ", "exits"));
    }
    head1.push_str("| checksums");
    head2.push_str("| equal");
    text.push_str(&format!("{}\n{}\n", head1.trim_end(), head2.trim_end()));
    let mut notes: Vec<String> = Vec::new();
    let mut note_of = |reason: &str| -> char {
        let i = notes.iter().position(|n| n == reason).unwrap_or_else(|| {
            notes.push(reason.to_string());
            notes.len() - 1
        });
        (b'a' + (i % 26) as u8) as char
    };
    for backend in Backend::ALL {
        for workload in WORKLOADS {
            let row: Vec<Option<&RunResult>> = MODES
                .iter()
                .map(|m| find(runs, workload.name, m.name, backend))
                .collect();
            if row.iter().all(Option::is_none) {
                continue;
            }
            let mut line = format!("{:<10} {:<7} ", workload.name, backend.name());
            for run in &row {
                let cell = match run {
                    None => format!("{:<CELL$}", "not run"),
                    Some(r) if !r.ok() => {
                        let reason = r.status.trim_start_matches("failed: ");
                        format!("{:<CELL$}", format!("FAILED ({})", note_of(reason)))
                    }
                    Some(r) => format!(
                        "{:>9} {:>9} {:>9} {:>9} ",
                        r.exits_total.map_or("?".into(), |e| e.to_string()),
                        r.exits_per_guest_fault
                            .map_or("-".into(), |e| format!("{e:.3}")),
                        r.exits_per_char.map_or("-".into(), |e| format!("{e:.3}")),
                        r.modeled_cycles
                            .map_or("?".into(), |c| format!("{:.2}", c / 1e6)),
                    ),
                };
                line.push_str(&format!("| {cell}"));
            }
            let base = row[0].filter(|r| r.ok()).and_then(|r| r.exits_total);
            for (run, title) in row[1.min(row.len())..].iter().zip(&ratio_titles) {
                let ratio = run
                    .filter(|r| r.ok())
                    .and_then(|r| r.exits_total)
                    .zip(base.filter(|&b| b > 0))
                    .map_or("-".into(), |(e, b)| format!("{:.2}x", e as f64 / b as f64));
                let width = title.len().max(11);
                line.push_str(&format!("| {ratio:>width$} "));
            }
            let agreement = checksums_agree(row.iter().flatten().copied());
            line.push_str(&format!("| {}", agreement.cell()));
            text.push_str(line.trim_end());
            text.push('\n');
        }
    }
    for (i, note) in notes.iter().enumerate() {
        text.push_str(&format!("({}) {note}\n", (b'a' + (i % 26) as u8) as char));
    }
    text.push_str(&format!(
        "exits: VM exits, from the kernel's `profile:` lines where it prints them, else those \
         the vmm-server handled (exits the kernel handles itself, as shadow paging's, are then \
         missing); ex/fault: exits per page fault of the guest (- without faults); ex/char: exits \
         per byte the guest wrote to its UART (all of them, warm-up included; the figure of merit \
         of `print`); Mcycles: modeled, guest + hypervisor instructions at CPI {CPI_GUEST} \
         plus {EXIT_ROUND_TRIP_CYCLES} cycles per exit ({EXIT_SOURCE}).\n"
    ));
    for info in &results.backends {
        text.push_str(&format!(
            "{}: {} ({}); counts are {}\n",
            info.backend.name(),
            info.emulator,
            info.cpu,
            info.tick
        ));
    }
    for skip in &results.skipped_backends {
        text.push_str(&format!(
            "{}: not run: {}\n",
            skip.backend.name(),
            skip.reason
        ));
    }
    text
}

/// The chart: one panel per backend, a group per workload, a bar per mode (failed runs too).
pub fn chart(results: &Results) -> Chart {
    let panels = results
        .backends
        .iter()
        .map(|info| Panel {
            title: format!("{} ({}, {})", info.backend.name(), info.emulator, info.unit),
            groups: WORKLOADS
                .iter()
                .map(|w| Group {
                    label: w.name.into(),
                    values: MODES
                        .iter()
                        .map(|m| {
                            find(&results.runs, w.name, m.name, info.backend)
                                .filter(|r| r.ok())
                                .and_then(|r| r.exits_total)
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    Chart {
        title: "pagingos workloads: VM exits per run, by memory mode".into(),
        value_label: "VM exits".into(),
        group_label: "workload".into(),
        series: MODES.iter().map(|m| m.name.to_string()).collect(),
        panels,
    }
}

#[cfg(test)]
#[path = "bench_workloads_tests.rs"]
mod tests;
