use super::*;

/// A nested-mode forkwait run as QEMU -icount printed it (the workloads system, release kernel).
const FORKWAIT_OK: &[&str] = &[
    "vmm.forkwait: elf64 image, 32 MiB, nested, entry 0x100000",
    "[forkwait] pagingos: workload forkwait, rounds 1000: 32 MiB of RAM, 7769 frames free, \
     global pages on",
    "[forkwait] pagingos: page faults 15015 (demand-zero 4017, copy-on-write 9000 copied + 1998 \
     reused, window 0), system calls 4001, CR3 loads 2001, forks 1000, INVLPGs 10998",
    "[forkwait] pagingos: forkwait rounds=1000 checksum=0xb213586bb786e296",
    "[forkwait] pagingos: done",
    "vmm.forkwait: exits: startup 1, cpuid 1, io 651; ignored port accesses 0",
    "vmm.forkwait: exit timing (tsc per exit): startup 1 exits, kernel to vmm 1282, vmm 913; \
     cpuid 1 exits, kernel to vmm 1287, vmm 934; io 650 exits, kernel to vmm 1309, vmm 1025; \
     run: guest 75833113, hypervisor 93851898",
    "guests: forkwait exited 0 (expected exit 0): passed",
    "guests: 1 passed, 0 failed",
    "poweroff: success",
];

/// A shadow-mode run before the kernel had shadow paging.
const SHADOW_UNSUPPORTED: &[&str] = &[
    "init: started vmm.compute (prio 10)",
    "vmm.compute: elf64 image, 32 MiB, shadow, entry 0x100000",
    "vmm.compute: create vm: kernel: bad argument",
    "guests: compute failed (code 6) (expected exit 0): FAILED",
    "guests: 0 passed, 1 failed",
    "FATAL: init reported failure",
    "poweroff: failure init reported failure",
];

fn workload(name: &str) -> Workload {
    *WORKLOADS.iter().find(|w| w.name == name).unwrap()
}

#[test]
fn parses_the_transcript_lines() {
    assert_eq!(
        parse_checksum(FORKWAIT_OK, "forkwait"),
        Some((1000, "0xb213586bb786e296".into()))
    );
    assert_eq!(parse_checksum(FORKWAIT_OK, "compute"), None);
    assert_eq!(
        parse_checksum(&["[x] pagingos: invlpg rounds=5 checksum=0x12"], "invlpg"),
        None,
        "16 hex digits"
    );
    assert_eq!(parse_page_faults(FORKWAIT_OK), Some(15015));
    assert_eq!(
        parse_page_faults(&["[c] pagingos: page faults 0 (demand-zero 0, …)"]),
        Some(0)
    );
    let exits = parse_exits(FORKWAIT_OK, "forkwait").unwrap();
    assert_eq!(
        exits,
        BTreeMap::from([
            ("startup".to_string(), 1),
            ("cpuid".to_string(), 1),
            ("io".to_string(), 651)
        ])
    );
    assert_eq!(parse_exits(FORKWAIT_OK, "compute"), None);
    assert_eq!(
        parse_exits(&["vmm.g: exits: none; ignored port accesses 0"], "g"),
        Some(BTreeMap::new())
    );
    assert_eq!(
        parse_exits(
            &["vmm.g: exits: memory-fault 12, unknown 2; ignored port accesses 3"],
            "g"
        )
        .unwrap()["memory-fault"],
        12
    );
    assert_eq!(
        parse_split(FORKWAIT_OK, "forkwait"),
        Some((75833113, 93851898))
    );
    assert_eq!(
        parse_split(
            &["vmm.g: exit timing (tsc per exit): none; run: guest 0, hypervisor 0"],
            "g"
        ),
        Some((0, 0))
    );
    assert!(parse_hot_sites(FORKWAIT_OK, HOT_SITES).is_empty());
    assert_eq!(parse_uart_bytes(FORKWAIT_OK, "forkwait"), None);
    assert_eq!(
        parse_uart_bytes(PRINT_DMP, "print"),
        Some(297_000),
        "with the ring's part"
    );
    assert_eq!(
        parse_uart_bytes(
            &["vmm.g: exits: io 4; ignored port accesses 0; uart output 2 bytes"],
            "g"
        ),
        Some(2)
    );
}

/// A shadow+dmp print run: the UART sites patched after the first profile.
const PRINT_DMP: &[&str] = &[
    "[print] pagingos: print: 2000 lines, 296700 bytes",
    "[print] pagingos: print rounds=2000 checksum=0x0123456789abcdef",
    "vmm.print: exits: startup 1, cpuid 1, io 16400, hypercall 4900; ignored port accesses 0; \
     uart output 297000 bytes (280000 through the DMP ring, 4900 flush hypercalls)",
    "vmm.print: exit timing (tsc per exit): none; run: guest 100, hypervisor 200",
    "dmp: vm0: attached (window 0xfffffffffff00000, 16 pages; region fills on)",
    "profile: vm=1 seq=0 exits=21500 startup=1 cpuid=1 io=16400 hypercall=4900 page-fault=198",
    "profile: vm=1 shadow fills=20 guest-faults=0 cr3-loads=1 invlpgs=0 flushes=2",
    "poweroff: success",
];

#[test]
fn a_mode_counts_only_on_the_kernels_and_the_services_word() {
    let print = *WORKLOADS.iter().find(|w| w.name == "print").unwrap();
    let without = |needle: &str| -> Vec<&str> {
        PRINT_DMP
            .iter()
            .copied()
            .filter(|l| !l.contains(needle))
            .collect()
    };
    // A silent fallback to nested paging: no shadow line from the kernel.
    let nested = without("shadow fills=");
    let run = from_transcript(&print, &MODES[2], Backend::Svm, &nested, &Outcome::Success);
    assert!(
        run.status.contains("never reported shadow paging"),
        "{}",
        run.status
    );
    // A DMP service that never attached.
    let alone = without("attached");
    let run = from_transcript(&print, &MODES[2], Backend::Svm, &alone, &Outcome::Success);
    assert!(run.status.contains("never attached"), "{}", run.status);
    // Shadow paging claimed by the kernel for a nested run.
    let run = from_transcript(
        &print,
        &MODES[0],
        Backend::Svm,
        PRINT_DMP,
        &Outcome::Success,
    );
    assert!(run.status.contains("in nested mode"), "{}", run.status);
}

#[test]
fn exits_per_character() {
    let print = *WORKLOADS.iter().find(|w| w.name == "print").unwrap();
    let run = from_transcript(
        &print,
        &MODES[2],
        Backend::Svm,
        PRINT_DMP,
        &Outcome::Success,
    );
    assert!(run.ok(), "{}", run.status);
    assert_eq!(run.uart_bytes, Some(297_000));
    assert_eq!(run.exits_total, Some(21_500));
    let per_char = run.exits_per_char.unwrap();
    assert!((per_char - 21_500.0 / 297_000.0).abs() < 1e-12);
    assert_eq!(run.exits_per_guest_fault, None);
    let mut results = sample_results();
    results.runs.push(run);
    let text = table(&results);
    let row = text
        .lines()
        .find(|l| l.starts_with("print") && l.contains("svm"))
        .unwrap();
    assert!(row.contains("21500         -     0.072"), "{row}");
    assert!(text.contains("ex/char"));
}

#[test]
fn sums_hot_sites_over_batches() {
    let lines = [
        "profile: vm=3 seq=0 exits=1200 startup=1 recall=0 cpuid=40 io=150 other=0",
        "profile:   #1 reason=memory-fault rip=0xffffffff81012345 count=900 error=0",
        "profile:   #2 reason=io rip=0x7c1a count=150 error=2",
        "[g] profile: said by the guest, not a site",
        "profile: vm=3 seq=1 exits=300 startup=0 recall=0 cpuid=0 io=100 other=0",
        "profile:   #1 reason=io rip=0x7c1a count=100 error=1",
        "profile:   #2 reason=exception rip=0x1000 count=7 error=0",
    ];
    assert_eq!(
        parse_profile_exits(&lines),
        Some(BTreeMap::from([
            ("startup".to_string(), 1),
            ("cpuid".to_string(), 40),
            ("io".to_string(), 250)
        ]))
    );
    assert_eq!(parse_profile_exits(FORKWAIT_OK), None);
    let sites = parse_hot_sites(&lines, 2);
    assert_eq!(
        sites,
        [
            HotSite {
                reason: "memory-fault".into(),
                rip: "0xffffffff81012345".into(),
                count: 900,
                error: 0
            },
            HotSite {
                reason: "io".into(),
                rip: "0x7c1a".into(),
                count: 250,
                error: 3
            },
        ]
    );
    assert_eq!(parse_hot_sites(&lines, HOT_SITES).len(), 3);
}

#[test]
fn an_ok_run() {
    let run = from_transcript(
        &workload("forkwait"),
        &MODES[0],
        Backend::Svm,
        FORKWAIT_OK,
        &Outcome::Success,
    );
    assert!(run.ok(), "{}", run.status);
    assert_eq!(run.exits_total, Some(653));
    assert_eq!((run.exits_source, run.vmm_exits_total), ("vmm", Some(653)));
    assert_eq!(run.guest_page_faults, Some(15015));
    let per_fault = run.exits_per_guest_fault.unwrap();
    assert!((per_fault - 653.0 / 15015.0).abs() < 1e-12);
    assert_eq!(
        run.modeled_cycles,
        Some(75833113.0 + 93851898.0 + 653.0 * 2000.0)
    );
    // With the kernel's profile lines, their counts are the exits.
    let mut lines = FORKWAIT_OK.to_vec();
    lines.push("profile: vm=1 seq=0 exits=20653 startup=1 cpuid=1 io=651 memory-fault=20000");
    let run = from_transcript(
        &workload("forkwait"),
        &MODES[1],
        Backend::Vmx,
        &lines,
        &Outcome::Success,
    );
    assert_eq!(run.exits_total, Some(20653));
    assert_eq!(run.exits_by_reason["memory-fault"], 20000);
    assert_eq!(
        (run.exits_source, run.vmm_exits_total),
        ("profile", Some(653))
    );
    // A guest that ran other rounds than asked is no valid data point.
    let mut other = workload("forkwait");
    other.rounds = 5;
    let run = from_transcript(
        &other,
        &MODES[0],
        Backend::Svm,
        FORKWAIT_OK,
        &Outcome::Success,
    );
    assert_eq!(run.status, "failed: the guest ran 1000 rounds, not 5");
}

#[test]
fn a_failed_run_keeps_its_reason() {
    let run = from_transcript(
        &workload("compute"),
        &MODES[1],
        Backend::Svm,
        SHADOW_UNSUPPORTED,
        &Outcome::Failure("init reported failure".into()),
    );
    assert!(!run.ok());
    assert_eq!(
        run.status,
        "failed: create vm: kernel: bad argument; guest failed (code 6) (expected exit 0)"
    );
    assert_eq!(run.checksum, None);
    assert_eq!(run.exits_total, None);
    assert_eq!(run.modeled_cycles, None);
    // Without anything in the transcript, the outcome speaks.
    let timeout = Outcome::Timeout(Duration::from_secs(300));
    assert_eq!(
        failure_reason(&[], "compute", &timeout),
        timeout.to_string()
    );
    assert_eq!(
        failure_reason(
            &["[compute] grt: panic: oops", "poweroff: success"],
            "compute",
            &Outcome::Success
        ),
        "grt: panic: oops"
    );
    assert_eq!(
        failure_reason(&[], "compute", &Outcome::Success),
        "no checksum line in the transcript"
    );
}

fn result(workload: &str, mode: &str, backend: Backend, ok: bool, checksum: &str) -> RunResult {
    let mut run = from_transcript(
        &workload_or_default(workload),
        MODES.iter().find(|m| m.name == mode).unwrap_or(&MODES[0]),
        backend,
        &[],
        &Outcome::Success,
    );
    run.mode = mode.into();
    run.status = if ok {
        "ok".into()
    } else {
        "failed: create vm: kernel: bad argument".into()
    };
    run.checksum = (!checksum.is_empty()).then(|| checksum.into());
    if ok {
        run.exits_total = Some(100);
        run.modeled_cycles = Some(1e6);
    }
    run
}

fn workload_or_default(name: &str) -> Workload {
    WORKLOADS
        .iter()
        .copied()
        .find(|w| w.name == name)
        .unwrap_or(WORKLOADS[0])
}

#[test]
fn checksum_agreement_across_modes() {
    let a = result("compute", "nested", Backend::Svm, true, "0x1");
    let b = result("compute", "shadow", Backend::Svm, true, "0x1");
    let c = result("compute", "shadow", Backend::Svm, true, "0x2");
    let d = result("compute", "shadow", Backend::Svm, false, "");
    assert_eq!(checksums_agree([&a, &b]), Agreement::Equal);
    assert_eq!(checksums_agree([&a, &c]), Agreement::Differ);
    assert_eq!(checksums_agree([&a, &b, &c]), Agreement::Differ);
    assert_eq!(
        checksums_agree([&a, &d]),
        Agreement::Incomplete { ok: 1, of: 2 }
    );
    assert_eq!(
        checksums_agree(std::iter::empty()),
        Agreement::Incomplete { ok: 0, of: 0 }
    );
    // A failed run's checksum (printed before it failed) does not count.
    let e = result("compute", "shadow", Backend::Svm, false, "0x9");
    assert_eq!(
        checksums_agree([&a, &e]),
        Agreement::Incomplete { ok: 1, of: 2 }
    );
}

#[test]
fn cost_model_names_every_constant() {
    assert_eq!(EXIT_ROUND_TRIP_CYCLES, 2_000);
    assert_eq!(modeled_cycles(1_000, 500, 3), 1_500.0 + 6_000.0);
    let model = serde_json::to_value(cost_model()).unwrap();
    let formula = model["formula"].as_str().unwrap();
    let constants = model["constants"].as_object().unwrap();
    assert_eq!(constants.len(), 3);
    for (name, constant) in constants {
        assert!(formula.contains(name.as_str()), "{name} in the formula");
        assert!(constant["value"].is_number());
        assert!(!constant["source"].as_str().unwrap().is_empty());
    }
    assert_eq!(constants["EXIT_ROUND_TRIP_CYCLES"]["value"], 2000.0);
    assert!(constants["EXIT_ROUND_TRIP_CYCLES"]["source"]
        .as_str()
        .unwrap()
        .contains("SplitX"));
    assert!(constants["CPI_GUEST"]["source"]
        .as_str()
        .unwrap()
        .starts_with("assumption"));
}

fn sample_results() -> Results {
    let mut runs = Vec::new();
    for backend in Backend::ALL {
        for w in WORKLOADS {
            runs.push(result(w.name, "nested", backend, true, "0xaa"));
            runs.push(result(w.name, "shadow", backend, false, ""));
        }
    }
    Results {
        benchmark: "workloads",
        profile: "release",
        bootloader: "grub",
        modes: MODES.iter().map(|m| m.name).collect(),
        backends: Backend::ALL
            .iter()
            .map(|&b| BackendInfo {
                backend: b,
                emulator: b.emulator().name(),
                cpu: b.emulator().default_cpu(),
                unit: b.unit(),
                tick: b.tick(),
            })
            .collect(),
        skipped_backends: vec![],
        cost_model: cost_model(),
        checksum_checks: checksum_checks(&runs),
        wall_seconds: 1.0,
        runs,
    }
}

#[test]
fn results_json_shape() {
    let results = sample_results();
    let json = serde_json::to_value(&results).unwrap();
    assert!(json["cost_model"]["constants"].is_object());
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2 * 2 * WORKLOADS.len());
    for key in [
        "workload",
        "mode",
        "backend",
        "rounds",
        "status",
        "checksum",
        "exits_total",
        "exits_by_reason",
        "exits_source",
        "vmm_exits_total",
        "guest_page_faults",
        "exits_per_guest_fault",
        "uart_bytes",
        "exits_per_char",
        "guest_instructions",
        "hypervisor_instructions",
        "modeled_cycles",
        "hot_sites",
    ] {
        for run in runs {
            assert!(run.get(key).is_some(), "{key} in {run}");
        }
    }
    assert_eq!(runs[0]["backend"], "svm");
    assert_eq!(runs[0]["status"], "ok");
    assert!(runs[0]["exits_by_reason"].is_object());
    assert!(runs[0]["hot_sites"].is_array());
    assert!(runs[1]["status"]
        .as_str()
        .unwrap()
        .starts_with("failed: create vm"));
    let checks = json["checksum_checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2 * WORKLOADS.len());
    assert_eq!(checks[0]["agreement"], "incomplete");
    assert_eq!(checks[0]["ok"], 1);
    assert_eq!(checks[0]["checksums"]["nested"], "0xaa");
}

#[test]
fn the_table_shows_failures_and_their_reason() {
    let text = table(&sample_results());
    assert!(text.contains("| nested"));
    assert!(text.contains("| shadow/nested"));
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("forkwait") || l.starts_with("compute"))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in rows {
        assert!(row.contains("FAILED (a)"), "{row}");
        assert!(row.ends_with("| n/a (1 of 2 ok)"), "{row}");
        assert!(row.contains("1.00"), "{row}");
    }
    assert!(
        text.contains("(a) create vm: kernel: bad argument\n"),
        "{text}"
    );
    assert!(!text.contains("(b)"), "one note per distinct reason");
    assert!(text.contains("Bochs TSC ticks"));
}

#[test]
fn the_chart_has_one_bar_per_run() {
    let results = sample_results();
    let svg = bench_svg::render(&chart(&results));
    bench_svg::tests::balanced(&svg).unwrap();
    // One bar per workload, mode and backend; modes without a successful run (failed or not
    // run, like shadow+dmp in the sample) get an empty outlined bar.
    let bars = WORKLOADS.len() * MODES.len() * results.backends.len();
    assert_eq!(svg.matches("<rect class=\"bar").count(), bars);
    let not_ok = bars - results.runs.iter().filter(|r| r.ok()).count();
    assert_eq!(svg.matches("<rect class=\"bar failed\"").count(), not_ok);
}

#[test]
fn generated_manifests_load() {
    let root = layout::root();
    let dir = layout::work_dir(&["tmp", "bench-workloads-test"]).unwrap();
    for w in WORKLOADS {
        for mode in MODES {
            let name = system_name(&w, mode);
            let text = manifest_text(&w, mode);
            assert!(text.contains(&format!(
                "cmdline = \"workload={} rounds={}\"",
                w.name, w.rounds
            )));
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, &text).unwrap();
            let system = manifest::load_file(&root, &path).unwrap();
            assert_eq!(system.name, name);
            assert_eq!(system.image.guests.len(), 1);
            assert_eq!(
                system.guest_images,
                [crate::manifest::GuestImage::Crate("pagingos".into())]
            );
        }
    }
    let mode = MODES[2];
    assert_eq!(mode.name, "shadow+dmp");
    assert_eq!(
        system_name(&WORKLOADS[0], &mode),
        "bench-pagefault-shadow-dmp"
    );
    // A file whose system name differs from its stem is refused, as in manifests/.
    let path = dir.join("other-name.toml");
    std::fs::write(&path, manifest_text(&WORKLOADS[0], &MODES[0])).unwrap();
    let err = manifest::load_file(&root, &path).unwrap_err().to_string();
    assert!(err.contains("differs from the file name"), "{err}");
}
