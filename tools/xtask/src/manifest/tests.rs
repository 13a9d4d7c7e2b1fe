use super::*;
use crate::workspace::Package;

/// A workspace with the packages the test manifests name.
fn workspace() -> Workspace {
    let package = |name: &str| Package {
        name: name.into(),
        bins: vec![name.into()],
        host: false,
        guest: false,
        flat: false,
    };
    let guest = |name: &str| Package {
        guest: true,
        ..package(name)
    };
    Workspace {
        packages: ["init", "serial", "target", "isolation-attacker"]
            .into_iter()
            .map(package)
            .chain([Package {
                name: "rt".into(),
                bins: vec![],
                host: false,
                guest: false,
                flat: false,
            }])
            .chain(["hello", "probe"].into_iter().map(guest))
            .collect(),
    }
}

fn parse_text(text: &str, name: &str) -> Result<System> {
    let source = Source {
        name: format!("manifests/{name}.toml"),
        text: text.into(),
    };
    parse(&source, name, Path::new("/repo"), Some(&workspace()))
}

#[test]
fn minimal_manifest() {
    let system = parse_text("[system]\nname = \"demo\"\n", "demo").unwrap();
    assert_eq!(system.name, "demo");
    assert_eq!(system.cmdline, "");
    assert!(system.modules.is_empty());
}

#[test]
fn modules_resolve_against_the_root_and_default_their_name() {
    let text = "[system]\nname = \"s\"\ncmdline = \"log=debug\"\nmodules = [\n  { file = \"target/init\" },\n  { file = \"a/b.bin\", name = \"guest\" },\n]\n";
    let system = parse_text(text, "s").unwrap();
    assert_eq!(system.cmdline, "log=debug");
    assert_eq!(system.modules[0].name, "init");
    assert_eq!(system.modules[0].source, Path::new("/repo/target/init"));
    assert_eq!(system.modules[1].name, "guest");
}

#[test]
fn unknown_section_is_an_error_with_position() {
    let err = parse_text("[system]\nname = \"demo\"\n\n[servers]\nx = 1\n", "demo")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("manifests/demo.toml:4:2: unknown field `servers`"),
        "{err}"
    );
}

#[test]
fn field_errors_give_the_line() {
    let err = parse_text("[system]\nname = \"demo\"\ncmdline = 3\n", "demo")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("manifests/demo.toml:3:11: invalid type"),
        "{err}"
    );
    let err = parse_text(
        "[system]\nname = \"demo\"\nmodules = [{ path = \"x\" }]\n",
        "demo",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("manifests/demo.toml:3:14: unknown field `path`"),
        "{err}"
    );
}

#[test]
fn name_must_match_file_and_modules_be_unique() {
    let err = parse_text("[system]\nname = \"other\"\n", "demo")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("manifests/demo.toml:2:8: system name `other`"),
        "{err}"
    );
    let text = "[system]\nname = \"d\"\nmodules = [{ file = \"x/m\" }, { file = \"y/m\" }]\n";
    let err = parse_text(text, "d").unwrap_err().to_string();
    assert!(err.contains("two modules are named `m`"), "{err}");
}

#[test]
fn join_skips_empty_parts() {
    assert_eq!(join_cmdline(["", " a ", "", "b=1"]), "a b=1");
    assert_eq!(join_cmdline([""]), "");
}

#[test]
fn the_repository_manifests_parse() {
    let root = crate::layout::root();
    let ws = Workspace::load(&root).unwrap();
    for name in available(&root.join("manifests")) {
        // The servers' packages and guest crates may not exist yet: only that may be wrong.
        if let Err(err) = load(&root, &name) {
            let err = err.to_string();
            assert!(
                err.lines()
                    .skip_while(|l| l.ends_with("problems:"))
                    .all(|l| l.contains(": no workspace package `")
                        || l.contains(": no guest image `")),
                "{err}"
            );
        }
        load_with(&root, &name, None).unwrap();
    }
    assert!(load_with(&root, "demo", Some(ws)).is_ok());
    let isolation = load_with(&root, "isolation", None).unwrap();
    let image = &isolation.image;
    assert_eq!(
        image.grant("isolation-attacker", "isolation-target", "echo"),
        Some(abi::Rights::CALL | abi::Rights::GRANT)
    );
    assert_eq!(
        image.grant("isolation-attacker", "isolation-target", "faults"),
        None
    );
    let attacker = image.server("isolation-attacker").unwrap();
    assert_eq!(
        attacker.fault_handler.as_deref(),
        Some("isolation-target.faults")
    );
    assert!(attacker.power_off);
}

/// A good three-server system; the tests below break one line of it at a time.
const GOOD: &str = r#"[system]
name = "t"

[[server]]
name = "serial"
priority = 20
quota = "64K"
memory = "128K"
io_ports = [{ base = 0x3f8, count = 8 }]
irqs = [4]
portals = ["log"]

[[server]]
name = "target"
priority = 10
quota = 65536
memory = "1M"
portals = ["echo", "faults"]
uses = ["serial.log"]

[[server]]
name = "attacker"
binary = "isolation-attacker"
priority = 10
quota = "64K"
memory = "5000"
uses = ["serial.log", { portal = "target.echo", grant = true }]
fault_handler = "target.faults"
power_off = true
"#;

/// `GOOD` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

/// The error text of a manifest that must fail.
fn error(text: &str) -> String {
    match parse_text(text, "t") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(err) => err.to_string(),
    }
}

/// Asserts that `err` has a line `manifests/t.toml:<line>:…` containing `words`.
#[track_caller]
fn assert_at(err: &str, line: usize, words: &str) {
    let prefix = format!("manifests/t.toml:{line}:");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(words)),
        "no `{words}` at line {line} in:\n{err}"
    );
}

#[test]
fn good_system_compiles() {
    let system = parse_text(GOOD, "t").unwrap();
    assert!(system.has_servers());
    assert_eq!(system.binaries, ["serial", "target", "isolation-attacker"]);
    let image = &system.image;
    let serial = image.server("serial").unwrap();
    assert_eq!(serial.priority, 20);
    assert_eq!(serial.quota, 64 * 1024);
    assert_eq!(serial.memory_pages, 32);
    assert_eq!(
        serial.io_ports,
        [manifest::PortRange {
            base: 0x3f8,
            count: 8
        }]
    );
    assert_eq!(serial.irqs, [4]);
    assert_eq!(image.server("target").unwrap().memory_pages, 256);
    let attacker = image.server("attacker").unwrap();
    assert_eq!(attacker.memory_pages, 2, "5000 bytes round up to two pages");
    assert!(attacker.power_off);
    assert_eq!(attacker.fault_handler.as_deref(), Some("target.faults"));
    assert_eq!(
        image.grant("attacker", "target", "echo"),
        Some(abi::Rights::CALL | abi::Rights::GRANT)
    );
    assert_eq!(
        image.grant("attacker", "serial", "log"),
        Some(abi::Rights::CALL)
    );
    assert_eq!(image.grant("attacker", "target", "faults"), None);
    let decoded = SystemImage::decode(&image.encode()).unwrap();
    assert_eq!(&decoded, image);
}

#[test]
fn duplicate_server_names_both_lines() {
    let err = error(&edit("name = \"attacker\"", "name = \"serial\""));
    assert_at(&err, 22, "two servers are named `serial` (see line 5)");
}

#[test]
fn unknown_server_in_uses() {
    let err = error(&edit("uses = [\"serial.log\"]", "uses = [\"serail.log\"]"));
    assert_at(&err, 19, "`serail.log` names no server `serail`");
}

#[test]
fn unknown_server_in_fault_handler() {
    let err = error(&edit("\"target.faults\"", "\"tagret.faults\""));
    assert_at(&err, 28, "`tagret.faults` names no server `tagret`");
}

#[test]
fn unknown_portal_in_uses_and_fault_handler() {
    let err = error(&edit(
        "portal = \"target.echo\"",
        "portal = \"target.ecko\"",
    ));
    assert_at(
        &err,
        27,
        "server `target` provides no portal `ecko` (it provides: echo, faults)",
    );
    let err = error(&edit("\"target.faults\"", "\"target.fault\""));
    assert_at(&err, 28, "server `target` provides no portal `fault`");
    let err = error(&edit("\"target.faults\"", "\"target\""));
    assert_at(&err, 28, "not of the form `server.portal`");
}

#[test]
fn a_server_may_use_its_own_portal() {
    let text = edit(
        "portals = [\"log\"]",
        "portals = [\"log\"]\nuses = [\"serial.log\"]",
    );
    let system = parse_text(&text, "t").unwrap();
    assert_eq!(
        system.image.grant("serial", "serial", "log"),
        Some(abi::Rights::CALL)
    );
}

#[test]
fn priority_above_31() {
    let err = error(&edit("priority = 20", "priority = 32"));
    assert_at(&err, 6, "priority 32 of `serial` is above the highest, 31");
    let err = error(&edit("priority = 20", "priority = -1"));
    assert_at(&err, 6, "priority -1 of `serial` is not between 0 and 31");
    assert!(parse_text(&edit("priority = 20", "priority = 31"), "t").is_ok());
}

#[test]
fn quota_and_memory_syntax_and_zero() {
    let err = error(&edit("quota = \"64K\"", "quota = \"64KB\""));
    assert_at(&err, 7, "invalid size `64KB`");
    let err = error(&edit("quota = \"64K\"", "quota = 0"));
    assert_at(&err, 7, "the kernel-memory quota of `serial` is zero");
    let err = error(&edit("memory = \"128K\"", "memory = \"lots\""));
    assert_at(&err, 8, "invalid size `lots`");
    let err = error(&edit("memory = \"128K\"", "memory = \"0K\""));
    assert_at(&err, 8, "the memory of `serial` is zero");
    let err = error(&edit("memory = \"128K\"", "memory = -4096"));
    assert_at(&err, 8, "size -4096 is negative");
    let err = error(&edit("memory = \"128K\"", "memory = 1.5"));
    assert_at(&err, 8, "a byte count");
}

#[test]
fn io_ports_overlapping_between_servers_or_overflowing() {
    let err = error(&edit(
        "memory = \"1M\"",
        "memory = \"1M\"\nio_ports = [{ base = 0x3fc, count = 2 }]",
    ));
    assert_at(
        &err,
        18,
        "the I/O ports 0x3fc..0x3fe of `target` overlap the ports 0x3f8..0x400 of `serial` (see line 9)",
    );
    let err = error(&edit("base = 0x3f8, count = 8", "base = 0xfffc, count = 8"));
    assert_at(&err, 9, "run past the last port, 0xffff");
    let err = error(&edit(
        "base = 0x3f8, count = 8",
        "base = 0x10000, count = 8",
    ));
    assert_at(&err, 9, "base and count must lie in 0..=0xffff");
    let err = error(&edit("base = 0x3f8, count = 8", "base = 0x3f8, count = 0"));
    assert_at(&err, 9, "is empty (count = 0)");
}

#[test]
fn irq_above_15_or_given_twice() {
    let err = error(&edit("irqs = [4]", "irqs = [16]"));
    assert_at(&err, 10, "IRQ 16 of `serial` does not exist");
    let err = error(&edit("irqs = [4]", "irqs = [4, 300]"));
    assert_at(&err, 10, "IRQ 300 of `serial` does not exist");
    let err = error(&edit("memory = \"1M\"", "memory = \"1M\"\nirqs = [3, 4]"));
    assert_at(
        &err,
        18,
        "IRQ 4 is given to both `serial` and `target` (see line 5)",
    );
}

#[test]
fn unknown_keys_are_located() {
    let err = error(&edit("power_off = true", "power_of = true"));
    assert_at(&err, 29, "unknown field `power_of`");
    let err = error(&edit("count = 8", "count = 8, size = 1"));
    assert_at(&err, 9, "unknown field `size`");
    let err = error(&edit("grant = true", "grnat = true"));
    assert_at(&err, 27, "unknown field `grnat`");
    let err = error(&edit(
        "[[server]]\nname = \"target\"",
        "[[servers]]\nname = \"target\"",
    ));
    assert_at(&err, 13, "unknown field `servers`");
}

#[test]
fn binary_package_must_exist() {
    let err = error(&edit(
        "binary = \"isolation-attacker\"",
        "binary = \"attack\"",
    ));
    assert_at(
        &err,
        23,
        "no workspace package `attack` (the binary of server `attacker`)",
    );
    let err = error(&edit(
        "name = \"target\"",
        "name = \"target\"\nbinary = \"rt\"",
    ));
    assert_at(&err, 15, "package `rt` has no binary");
    // Without `binary`, the server's name is the package.
    let err = error(&edit("name = \"serial\"", "name = \"uart\""));
    assert_at(&err, 5, "no workspace package `uart`");
}

#[test]
fn portal_names_without_dots() {
    let err = error(&edit(
        "portals = [\"log\"]",
        "portals = [\"log\", \"a.b\", \"\"]",
    ));
    assert_at(&err, 11, "portal name `a.b` of `serial` must be");
    assert_at(&err, 11, "portal name `` of `serial` must be");
}

#[test]
fn several_problems_at_once_in_file_order() {
    let text = edit("priority = 20", "priority = 99")
        .replacen("irqs = [4]", "irqs = [42]", 1)
        .replacen("\"target.faults\"", "\"target.nope\"", 1);
    let err = error(&text);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "3 problems:");
    assert!(lines[1].starts_with("manifests/t.toml:6:"), "{err}");
    assert!(lines[2].starts_with("manifests/t.toml:10:"), "{err}");
    assert!(lines[3].starts_with("manifests/t.toml:28:"), "{err}");
}

#[test]
fn server_names_and_module_limits() {
    let err = error(&edit("name = \"serial\"", "name = \"init\""));
    assert_at(&err, 5, "server name `init` is reserved");
    let err = error(&edit("name = \"serial\"", "name = \"my serial\""));
    assert_at(
        &err,
        5,
        "server name `my serial` must be 1 to 47 characters",
    );
    let err = error(&edit(
        "name = \"t\"\n",
        "name = \"t\"\nmodules = [{ file = \"x/manifest\" }]\n",
    ));
    assert_at(&err, 3, "module name `manifest` is taken");
    let mut many = GOOD.to_string();
    for i in 0..12 {
        many.push_str(&format!(
            "\n[[server]]\nname = \"s{i}\"\nbinary = \"target\"\npriority = 1\nquota = 1\nmemory = 1\n"
        ));
    }
    let err = error(&many);
    assert_at(
        &err,
        2,
        "the system needs 17 boot modules; the kernel hands init at most 16",
    );
}

#[test]
fn missing_fields_are_located() {
    let err = error(&edit("priority = 20\n", ""));
    assert!(err.contains("missing field `priority`"), "{err}");
    assert!(err.starts_with("manifests/t.toml:4:"), "{err}");
}

/// `GOOD` with two guests and enough RAM for them.
fn guests_text() -> String {
    GOOD.replacen("name = \"t\"\n", "name = \"t\"\nram = \"1G\"\n", 1)
        + r#"
[[guest]]
name = "hello"
image = "hello"
memory = "16M"
cmdline = "greeting=hi"

[[guest]]
name = "probe2"
image = "probe"
memory = "32M"
mode = "shadow"
priority = 12
expect = "stopped"
"#
}

/// `guests_text()` with `from` replaced by `to`, and the line (1-based) of the last line of
/// `to` in the result.
fn guests_edit(from: &str, to: &str) -> (String, usize) {
    let text = guests_text();
    let at = text.find(from).unwrap_or_else(|| panic!("{from}"));
    let line = text[..at].matches('\n').count() + 1 + to.trim_end().matches('\n').count();
    (text.replacen(from, to, 1), line)
}

#[test]
fn guests_compile_with_defaults() {
    let system = parse_text(&guests_text(), "t").unwrap();
    assert!(system.has_guests() && system.has_servers());
    assert_eq!(system.ram_mib, 1024);
    assert_eq!(
        system.guest_images,
        [
            GuestImage::Crate("hello".into()),
            GuestImage::Crate("probe".into())
        ]
    );
    let [hello, probe] = &system.image.guests[..] else {
        panic!("{:?}", system.image.guests)
    };
    assert_eq!(hello.image, "guest.hello");
    assert_eq!(hello.memory_bytes, 16 << 20);
    assert_eq!(hello.vcpus, 1);
    assert_eq!(hello.mode, manifest::MemoryMode::Nested);
    assert_eq!(hello.cmdline, "greeting=hi");
    assert_eq!(hello.priority, 10);
    assert_eq!(hello.expect, manifest::Expect::Exit(0));
    assert_eq!(probe.image, "guest.probe2");
    assert_eq!(probe.mode, manifest::MemoryMode::Shadow);
    assert_eq!(probe.priority, 12);
    assert_eq!(probe.expect, manifest::Expect::Stopped);
    assert_eq!((hello.fuzz_replies, probe.fuzz_replies), (None, None));
    let decoded = SystemImage::decode(&system.image.encode()).unwrap();
    assert_eq!(decoded, system.image);
    // A fuzzed guest: any seed from 0 on, with `expect = "any"`.
    for seed in [0, 1, i64::MAX as u64] {
        let (text, _) = guests_edit(
            "expect = \"stopped\"",
            &format!("expect = \"any\"\nfuzz_replies = {seed}"),
        );
        let system = parse_text(&text, "t").unwrap();
        let probe = &system.image.guests[1];
        assert_eq!(probe.fuzz_replies, Some(seed));
        assert_eq!(probe.expect, manifest::Expect::Any);
        assert_eq!(
            SystemImage::decode(&system.image.encode()).unwrap(),
            system.image
        );
    }
    // Without servers, guests still need init.
    let alone = "[system]\nname = \"t\"\nram = \"256M\"\n\n[[guest]]\nname = \"g\"\nimage = \"hello\"\nmemory = \"2M\"\n";
    let system = parse_text(alone, "t").unwrap();
    assert!(system.has_servers() && system.has_guests());
    assert_eq!(parse_text(GOOD, "t").unwrap().ram_mib, DEFAULT_RAM);
}

#[test]
fn guest_field_errors_are_located() {
    for (from, to, words) in [
        ("memory = \"16M\"", "memory = \"15M\"", "the memory of guest `hello` (15728640 bytes) must be a multiple of 2 MiB"),
        ("memory = \"16M\"", "memory = \"4G\"", "from 2 MiB to 3 GiB"),
        ("memory = \"16M\"", "memory = \"lots\"", "invalid size `lots`"),
        ("memory = \"32M\"", "memory = \"32M\"\nvcpus = 2", "guest `probe2` asks for 2 vCPUs; only 1 is supported"),
        ("memory = \"32M\"", "memory = \"32M\"\nvcpus = 300", "vcpus 300 of guest `probe2` is not between 0 and 255"),
        ("mode = \"shadow\"", "mode = \"nestd\"", "mode `nestd` of guest `probe2` is neither"),
        ("priority = 12", "priority = 32", "priority 32 of guest `probe2` is above the highest, 31"),
        ("priority = 12", "priority = -1", "priority -1 of guest `probe2` is not between 0 and 255"),
        ("expect = \"stopped\"", "expect = \"exit 256\"", "expect `exit 256` of guest `probe2` is none of"),
        ("cmdline = \"greeting=hi\"", "cmdline = \"a\\nb\"", "the command line of guest `hello` must be one line of at most 2048 bytes"),
        ("image = \"probe\"", "image = \"probo\"", "no guest image `probo` (guest `probe2`): guest images are the binaries of the crates under tests/guests/ (hello, probe)"),
        ("image = \"probe\"", "image = \"serial\"", "no guest image `serial`"),
        ("name = \"probe2\"", "name = \"hello\"", "two guests are named `hello` (see line"),
        ("name = \"probe2\"", "name = \"a.b\"", "guest name `a.b` must be 1 to 40 characters"),
        ("image = \"probe\"", "image = \"kernels/mine.elf\"", "the image file of guest `probe2` does not exist: /repo/manifests/kernels/mine.elf (`kernels/mine.elf`; a path is relative to the manifest's directory, or absolute)"),
        ("image = \"probe\"", "image = \"/nowhere/bzImage\"", "the image file of guest `probe2` does not exist: /nowhere/bzImage"),
        ("image = \"probe\"", "image = \"probe\"\ninitrd = \"rd.img\"", "the initrd file of guest `probe2` does not exist: /repo/manifests/rd.img"),
        ("expect = \"stopped\"", "expect = \"stopped\"\nsecret = 1", "unknown field `secret`"),
        ("expect = \"stopped\"", "expect = \"any\"\nfuzz_replies = -1", "fuzz_replies -1 of guest `probe2` is not a seed: a non-negative integer (0 is one)"),
        ("expect = \"stopped\"", "expect = \"any\"\nfuzz_replies = \"7\"", "invalid type: string \"7\""),
        ("expect = \"stopped\"", "expect = \"stopped\"\nfuzz_replies = 7", "guest `probe2` has its replies fuzzed (fuzz_replies), so how it ends is random: it needs expect = \"any\" (it has \"stopped\")"),
        ("expect = \"stopped\"", "expect = \"Any\"", "expect `Any` of guest `probe2` is none of"),
    ] {
        let (text, line) = guests_edit(from, to);
        let err = error(&text);
        assert_at(&err, line, words);
        assert_eq!(err.lines().count(), 1, "one problem, once: {err}");
    }
    let long = format!("cmdline = \"{}\"", "x".repeat(2049));
    let (text, line) = guests_edit("cmdline = \"greeting=hi\"", &long);
    assert_at(&error(&text), line, "at most 2048 bytes (it has 2049)");
    let longest = format!("cmdline = \"{}\"", "x".repeat(2048));
    let (text, _) = guests_edit("cmdline = \"greeting=hi\"", &longest);
    assert_eq!(
        parse_text(&text, "t").unwrap().image.guests[0]
            .cmdline
            .len(),
        2048
    );
    let (text, _) = guests_edit("image = \"hello\"\n", "");
    assert!(error(&text).contains("missing field `image`"));
}

#[test]
fn guests_reserve_the_vmm_module_and_need_memory() {
    let (text, line) = guests_edit(
        "name = \"serial\"",
        "binary = \"serial\"\nname = \"vmm-server\"",
    );
    let err = error(&text.replace("serial.log", "vmm-server.log"));
    assert_at(
        &err,
        line,
        "server name `vmm-server` is reserved: a system with guests",
    );
    let (text, line) = guests_edit("ram = \"1G\"", "ram = \"256M\"");
    assert_at(
        &error(&text),
        line,
        "the servers and guests need about 56 MiB of init's memory pool; with 256 MiB of RAM the kernel gives init about 32 MiB",
    );
    let (text, line) = guests_edit("ram = \"1G\"", "ram = \"1000K\"");
    assert_at(
        &error(&text),
        line,
        "`ram` must be whole MiB from 64 MiB to 2048 MiB",
    );
    let (text, line) = guests_edit("ram = \"1G\"", "ram = \"4G\"");
    assert_at(&error(&text), line, "`ram` must be whole MiB");
    let (text, line) = guests_edit(
        "name = \"t\"\n",
        "name = \"t\"\nmodules = [{ file = \"x/guest.hello\" }]\n",
    );
    assert_at(&error(&text), line, "module name `guest.hello` is taken");
}

#[test]
fn the_pool_estimate_follows_the_kernel() {
    // 256 MiB: the kernel hands init 32 MiB (boot line `pool 32 MiB`).
    assert_eq!(pool_estimate(256), (32 << 20) / 4096);
    assert_eq!(pool_estimate(1024), (128 << 20) / 4096);
    assert_eq!(pool_estimate(8), 0);
}
