use super::*;
use alloc::string::ToString;
use alloc::vec;

fn server(name: &str) -> Server {
    Server {
        name: name.into(),
        priority: 10,
        quota: 64 * 1024,
        memory_pages: 32,
        scratch_pages: 0,
        io_ports: vec![],
        irqs: vec![],
        portals: vec![],
        uses: vec![],
        power_off: false,
        fault_handler: None,
    }
}

fn use_of(target: &str, rights: Rights) -> Use {
    let (server, portal) = split_portal(target).unwrap();
    Use {
        server: server.into(),
        portal: portal.into(),
        rights: rights.0,
    }
}

/// The isolation system of `manifests/isolation.toml`.
fn isolation() -> SystemImage {
    let mut serial = server("serial");
    serial.priority = 20;
    serial.io_ports = vec![PortRange {
        base: 0x3f8,
        count: 8,
    }];
    serial.irqs = vec![4];
    serial.portals = vec!["log".into()];
    let mut target = server("isolation-target");
    target.portals = vec!["echo".into(), "faults".into()];
    target.uses = vec![use_of("serial.log", Rights::CALL)];
    let mut attacker = server("isolation-attacker");
    attacker.uses = vec![
        use_of("serial.log", Rights::CALL),
        use_of("isolation-target.echo", Rights::CALL | Rights::GRANT),
    ];
    attacker.fault_handler = Some("isolation-target.faults".into());
    attacker.power_off = true;
    SystemImage {
        name: "isolation".into(),
        servers: vec![serial, target, attacker],
        guests: Vec::new(),
    }
}

fn rules(image: &SystemImage) -> Vec<Rule> {
    image.check().iter().map(|p| p.rule).collect()
}

#[test]
fn round_trip() {
    let image = isolation();
    assert!(image.check().is_empty(), "{:?}", image.check());
    let bytes = image.encode();
    assert_eq!(&bytes[..4], b"dmpm");
    assert_eq!(bytes[4], VERSION);
    assert_eq!(SystemImage::decode(&bytes), Ok(image.clone()));
    let mut padded = bytes.clone();
    padded.resize(4096, 0);
    assert_eq!(SystemImage::decode(&padded), Ok(image));
}

#[test]
fn decode_refuses_garbage() {
    let bytes = isolation().encode();
    assert_eq!(SystemImage::decode(b""), Err(DecodeError::NotAManifest));
    assert_eq!(
        SystemImage::decode(b"\x7fELF...."),
        Err(DecodeError::NotAManifest)
    );
    let mut other = bytes.clone();
    other[4] = 9;
    assert_eq!(SystemImage::decode(&other), Err(DecodeError::Version(9)));
    assert_eq!(
        SystemImage::decode(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Malformed)
    );
    let mut trailing = bytes.clone();
    trailing.push(1);
    assert_eq!(
        SystemImage::decode(&trailing),
        Err(DecodeError::TrailingBytes)
    );
    // Every truncation and every single-byte corruption is refused or decodes to a checked
    // image; none panics.
    for len in 0..bytes.len() {
        assert!(SystemImage::decode(&bytes[..len]).is_err());
    }
    for i in 0..bytes.len() {
        for b in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] = b;
            if let Ok(image) = SystemImage::decode(&bad) {
                assert!(image.check().is_empty());
            }
        }
    }
}

#[test]
fn decode_refuses_an_image_that_breaks_a_rule() {
    let mut image = isolation();
    image.servers[0].priority = 32;
    assert_eq!(
        SystemImage::decode(&image.encode()),
        Err(DecodeError::Invalid(Problem {
            place: Place::Server {
                server: 0,
                field: Field::Priority,
                item: None
            },
            rule: Rule::Priority
        }))
    );
}

#[test]
fn grants_follow_the_uses() {
    let image = isolation();
    assert_eq!(
        image.grant("isolation-target", "serial", "log"),
        Some(Rights::CALL)
    );
    assert_eq!(
        image.grant("isolation-attacker", "isolation-target", "echo"),
        Some(Rights::CALL | Rights::GRANT)
    );
    // Not listed, not provided, unknown client or server.
    assert_eq!(
        image.grant("isolation-attacker", "isolation-target", "faults"),
        None
    );
    assert_eq!(image.grant("serial", "serial", "log"), None);
    assert_eq!(image.grant("nobody", "serial", "log"), None);
    assert_eq!(image.grant("isolation-target", "nobody", "log"), None);
    assert_eq!(
        image.server("isolation-attacker").unwrap().fault_portal(),
        Some(("isolation-target", "faults"))
    );
}

#[test]
fn a_server_may_use_its_own_portal() {
    let mut image = isolation();
    image.servers[0].uses = vec![use_of("serial.log", Rights::CALL)];
    assert!(image.check().is_empty());
    assert_eq!(image.grant("serial", "serial", "log"), Some(Rights::CALL));
}

#[test]
fn names() {
    let mut image = SystemImage {
        name: String::new(),
        servers: vec![server("a"), server("b"), server("c")],
        guests: Vec::new(),
    };
    image.servers[0].name = "a.b".into();
    image.servers[1].name = "init".into();
    image.servers[2].name = "x".repeat(NAME_MAX + 1);
    assert_eq!(
        rules(&image),
        [
            Rule::SystemName,
            Rule::ServerName,
            Rule::ReservedName,
            Rule::ServerName
        ]
    );
    let mut image = isolation();
    image.servers[2].name = "serial".into();
    let problems = image.check();
    assert_eq!(problems[0].rule, Rule::DuplicateServer { first: 0 });
    assert_eq!(
        problems[0].related(),
        Some(Place::Server {
            server: 0,
            field: Field::Name,
            item: None
        })
    );
    assert_eq!(
        problems[0].message(&image),
        "two servers are named `serial`"
    );
}

#[test]
fn priority_quota_memory() {
    let mut image = isolation();
    image.servers[0].priority = MAX_PRIORITY;
    assert!(image.check().is_empty());
    image.servers[0].priority = MAX_PRIORITY + 1;
    image.servers[1].quota = 0;
    image.servers[2].memory_pages = 0;
    assert_eq!(
        rules(&image),
        [Rule::Priority, Rule::ZeroQuota, Rule::ZeroMemory]
    );
    assert_eq!(
        image.check()[0].message(&image),
        "priority 32 of `serial` is above the highest, 31"
    );
}

#[test]
fn port_ranges() {
    let mut image = isolation();
    image.servers[1].io_ports = vec![
        PortRange {
            base: 0xfff8,
            count: 8,
        },
        PortRange {
            base: 0xfff9,
            count: 8,
        },
        PortRange {
            base: 0x60,
            count: 0,
        },
    ];
    image.servers[2].io_ports = vec![PortRange {
        base: 0x3ff,
        count: 1,
    }];
    let problems = image.check();
    assert_eq!(
        rules(&image),
        [
            Rule::PortRangeOverflow,
            Rule::PortOverlap { server: 1, item: 0 },
            Rule::EmptyPortRange,
            Rule::PortOverlap { server: 0, item: 0 },
        ]
    );
    assert_eq!(
        problems[3].message(&image),
        "the I/O ports 0x3ff..0x400 of `isolation-attacker` overlap the ports 0x3f8..0x400 of `serial`"
    );
    assert_eq!(
        problems[0].message(&image),
        "the I/O ports 0xfff9..0x10001 of `isolation-target` run past the last port, 0xffff"
    );
    // Adjacent ranges do not overlap; the last port may be used.
    image.servers[1].io_ports = vec![
        PortRange {
            base: 0x3f0,
            count: 8,
        },
        PortRange {
            base: 0xffff,
            count: 1,
        },
    ];
    image.servers[2].io_ports = vec![PortRange {
        base: 0x400,
        count: 1,
    }];
    assert!(image.check().is_empty(), "{:?}", image.check());
}

#[test]
fn irqs() {
    let mut image = isolation();
    image.servers[1].irqs = vec![16, 3, 3];
    image.servers[2].irqs = vec![4];
    let problems = image.check();
    assert_eq!(
        rules(&image),
        [
            Rule::Irq,
            Rule::IrqTaken { server: 1 },
            Rule::IrqTaken { server: 0 }
        ]
    );
    assert_eq!(
        problems[1].message(&image),
        "IRQ 3 is listed twice for `isolation-target`"
    );
    assert_eq!(
        problems[2].message(&image),
        "IRQ 4 is given to both `serial` and `isolation-attacker`"
    );
}

#[test]
fn portals_and_uses() {
    let mut image = isolation();
    image.servers[0].portals = vec!["log".into(), "a.b".into(), String::new(), "log".into()];
    image.servers[2].uses = vec![
        use_of("serial.nope", Rights::CALL),
        use_of("nobody.log", Rights::CALL),
        use_of("serial.log", Rights::CALL | Rights::WRITE),
        use_of("isolation-target.echo", Rights::CALL),
        use_of("isolation-target.echo", Rights::CALL),
    ];
    let problems = image.check();
    assert_eq!(
        rules(&image),
        [
            Rule::PortalName,
            Rule::PortalName,
            Rule::DuplicatePortal,
            Rule::UnknownPortal,
            Rule::UnknownServer,
            Rule::Rights,
            Rule::DuplicateUse { item: 3 },
        ]
    );
    assert_eq!(
        problems[3].message(&image),
        "server `serial` provides no portal `nope` (it provides: log, a.b, , log)"
    );
    assert_eq!(
        problems[4].message(&image),
        "`nobody.log` names no server `nobody`"
    );
}

#[test]
fn fault_handler() {
    let mut image = isolation();
    image.servers[0].fault_handler = Some("isolation-target".into());
    image.servers[1].fault_handler = Some("isolation-target.echoes".into());
    image.servers[2].fault_handler = Some("nobody.faults".into());
    assert_eq!(
        rules(&image),
        [Rule::PortalRef, Rule::UnknownPortal, Rule::UnknownServer]
    );
    assert_eq!(
        image.check()[0].message(&image),
        "fault handler `isolation-target` of `serial` is not of the form `server.portal`"
    );
    assert_eq!(
        image.check()[2].message(&image).to_string(),
        "`nobody.faults` names no server `nobody`"
    );
}

fn guest(name: &str, memory_mib: u64) -> Guest {
    Guest {
        name: name.into(),
        image: Guest::module_name(name),
        memory_bytes: memory_mib << 20,
        vcpus: 1,
        mode: MemoryMode::Nested,
        cmdline: String::new(),
        priority: 10,
        expect: Expect::Exit(0),
        hypercalls: false,
        dmp: false,
        initrd: false,
        fuzz_replies: None,
    }
}

/// The isolation servers plus two guests.
fn with_guests() -> SystemImage {
    let mut image = isolation();
    image.guests = vec![guest("hello", 16), guest("probe", 32)];
    image
}

#[test]
fn guests_round_trip_and_pass_the_rules() {
    let image = with_guests();
    assert!(image.check().is_empty(), "{:?}", image.check());
    assert_eq!(SystemImage::decode(&image.encode()), Ok(image.clone()));
    let one = &image.guests[1];
    assert_eq!(Guest::decode(&one.encode()).as_ref(), Some(one));
    assert_eq!(Guest::decode(b"\xff\xff"), None);
}

#[test]
fn guest_names() {
    let mut image = with_guests();
    image.guests[0].name = "a.b".into();
    image.guests[0].image = "guest.a.b".into();
    image.guests[1].name = "x".repeat(GUEST_NAME_MAX + 1);
    image.guests[1].image = Guest::module_name(&image.guests[1].name);
    image.guests.push(guest("dup", 2));
    image.guests.push(guest("dup", 2));
    image.guests.push(guest(&"y".repeat(GUEST_NAME_MAX), 2));
    let problems = image.check();
    assert_eq!(
        rules(&image),
        [
            Rule::GuestName,
            Rule::GuestImage,
            Rule::GuestName,
            Rule::GuestImage,
            Rule::DuplicateGuest { first: 2 },
        ]
    );
    assert_eq!(
        problems[0].message(&image),
        "guest name `a.b` must be 1 to 40 characters from A-Z, a-z, 0-9, `-` and `_`"
    );
    assert_eq!(
        problems[4].related(),
        Some(Place::Guest {
            guest: 2,
            field: GuestField::Name
        })
    );
    assert_eq!(problems[4].message(&image), "two guests are named `dup`");
    // The longest name still makes module names that fit the kernel's field.
    let mut longest = image.guests[4].clone();
    longest.initrd = true;
    assert_eq!(longest.initrd_module().unwrap().len(), NAME_MAX);
    assert!(longest.image.len() < NAME_MAX);
    assert!(longest.vmm_name().len() <= NAME_MAX);
}

#[test]
fn guest_image_memory_vcpus_cmdline_priority() {
    let mut image = with_guests();
    image.guests[0].image = "hello".into();
    image.guests[0].memory_bytes = 3 << 20;
    image.guests[0].vcpus = 2;
    image.guests[0].cmdline = "x".repeat(GUEST_CMDLINE_MAX + 1);
    image.guests[0].priority = MAX_PRIORITY + 1;
    image.guests[1].memory_bytes = 0;
    let problems = image.check();
    assert_eq!(
        rules(&image),
        [
            Rule::GuestImage,
            Rule::GuestMemory,
            Rule::Vcpus,
            Rule::GuestCmdline,
            Rule::Priority,
            Rule::GuestMemory,
        ]
    );
    assert_eq!(
        problems[2].message(&image),
        "guest `hello` asks for 2 vCPUs; only 1 is supported"
    );
    assert_eq!(
        problems[4].message(&image),
        "priority 32 of guest `hello` is above the highest, 31"
    );
    for (bytes, ok) in [
        (2 << 20, true),
        (1 << 30, true),
        (3 << 30, true),
        (1 << 20, false),
        ((3 << 30) + (2 << 20), false),
        ((2 << 20) + 4096, false),
    ] {
        image.guests = vec![guest("g", 2)];
        image.guests[0].memory_bytes = bytes;
        assert_eq!(image.check().is_empty(), ok, "{bytes}");
    }
    image.guests = vec![guest("g", 2)];
    image.guests[0].cmdline = "a\nb".into();
    assert_eq!(rules(&image), [Rule::GuestCmdline]);
    image.guests[0].cmdline = "x".repeat(GUEST_CMDLINE_MAX);
    assert!(image.check().is_empty());
}

#[test]
fn vmm_server_is_reserved_only_with_guests() {
    let mut image = isolation();
    image.servers[2].name = VMM_MODULE.into();
    image.servers[2].fault_handler = None;
    assert!(image.check().is_empty(), "{:?}", image.check());
    image.guests = vec![guest("g", 2)];
    assert_eq!(rules(&image), [Rule::ReservedName]);
    assert_eq!(
        image.check()[0].message(&image),
        "server name `vmm-server` is reserved: a system with guests has a boot module of that name"
    );
}

#[test]
fn each_guest_implies_a_vmm_server() {
    let image = with_guests();
    let all = image.with_vmm_servers();
    let names: Vec<&str> = all.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "serial",
            "isolation-target",
            "isolation-attacker",
            "vmm.hello",
            "vmm.probe"
        ]
    );
    let probe = all.server("vmm.probe").unwrap();
    assert_eq!(probe.priority, 10);
    assert_eq!(probe.quota, VMM_QUOTA_BASE + 32 * VMM_QUOTA_PER_MIB);
    assert_eq!(probe.quota, 768 * 1024);
    assert_eq!(probe.memory_pages, VMM_MEMORY / PAGE_SIZE);
    assert_eq!(probe.scratch_pages, (32 << 20) / PAGE_SIZE);
    assert!(probe.portals.is_empty() && probe.fault_handler.is_none() && !probe.power_off);
    assert_eq!(all.grant("vmm.probe", "serial", "log"), Some(Rights::CALL));
    assert_eq!(all.grant("vmm.probe", "isolation-target", "echo"), None);
    // Without a serial driver, no uses.
    let mut alone = SystemImage {
        name: "g".into(),
        servers: vec![],
        guests: vec![guest("g", 2)],
    };
    assert!(alone.check().is_empty());
    assert!(alone.vmm_server(&alone.guests[0]).uses.is_empty());
    alone.servers.push(server("serial"));
    assert!(
        alone.vmm_server(&alone.guests[0]).uses.is_empty(),
        "no `log`"
    );
}

#[test]
fn fuzzed_guests_expect_any_and_round_trip() {
    let mut image = with_guests();
    image.guests[1].fuzz_replies = Some(0);
    assert_eq!(rules(&image), [Rule::FuzzedExpect]);
    assert_eq!(
        image.check()[0].place,
        Place::Guest {
            guest: 1,
            field: GuestField::FuzzReplies
        }
    );
    assert_eq!(
        image.check()[0].message(&image),
        "guest `probe` has its replies fuzzed (fuzz_replies), so how it ends is random: it needs expect = \"any\" (it has \"exit 0\")"
    );
    image.guests[1].expect = Expect::Any;
    image.guests[0].fuzz_replies = Some(u64::MAX);
    image.guests[0].expect = Expect::Any;
    assert!(image.check().is_empty(), "{:?}", image.check());
    assert_eq!(SystemImage::decode(&image.encode()), Ok(image.clone()));
    for guest in &image.guests {
        assert_eq!(Guest::decode(&guest.encode()).as_ref(), Some(guest));
    }
    // `expect = "any"` without fuzzing is allowed (any end passes).
    image.guests[0].fuzz_replies = None;
    assert!(image.check().is_empty());
}

#[test]
fn the_largest_config_takes_several_messages() {
    let mut big = guest(&"g".repeat(GUEST_NAME_MAX), 1024);
    big.cmdline = "c".repeat(GUEST_CMDLINE_MAX);
    big.memory_bytes = u64::MAX;
    big.expect = Expect::Exit(255);
    big.priority = u8::MAX;
    big.vcpus = u8::MAX;
    big.hypercalls = true;
    big.dmp = true;
    big.initrd = true;
    big.fuzz_replies = Some(u64::MAX);
    let bytes = big.encode();
    assert!(bytes.len() > CONFIG_BYTES_MAX && bytes.len() <= CONFIG_TOTAL_MAX);
    let mut asked = Vec::new();
    let gathered = config_gather(|offset| {
        asked.push(offset);
        let words = config_words(&bytes, offset)?;
        assert!(words.len() < abi::utcb::MSG_WORDS);
        assert_eq!(words[0], bytes.len() as u64);
        Some(words)
    })
    .unwrap();
    assert_eq!(gathered, bytes);
    assert_eq!(asked.len(), bytes.len().div_ceil(CONFIG_BYTES_MAX));
    assert_eq!(Guest::decode(&gathered), Some(big));
}

#[test]
fn config_words_pack_little_endian() {
    assert_eq!(config_words(&[], 0).unwrap(), [0]);
    assert_eq!(
        config_words(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 0).unwrap(),
        [9, 0x0807_0605_0403_0201, 9]
    );
    assert_eq!(
        config_words(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 8).unwrap(),
        [9, 9]
    );
    assert_eq!(config_words(&[1, 2], 3), None, "past the end");
    let (total, chunk) = config_chunk(&[9, 0x0807_0605_0403_0201, 9], 0).unwrap();
    assert_eq!((total, chunk.len()), (9, 9));
    assert_eq!(config_chunk(&[9, 9], 8), Some((9, vec![9])));
    assert_eq!(
        config_chunk(&[17, 0, 0], 0),
        None,
        "claims more than it holds"
    );
    assert_eq!(config_chunk(&[], 0), None);
    assert_eq!(config_chunk(&[u64::MAX], 0), None);
    assert_eq!(config_chunk(&[4, 0], 5), None);
    assert!(config_words(&[0; CONFIG_TOTAL_MAX + 1], 0).is_none());
    // A length that changes between replies, or a reply that fails, ends the gathering.
    let bytes = vec![7u8; CONFIG_BYTES_MAX + 1];
    let mut n = 0;
    let changing = config_gather(|offset| {
        n += 1;
        let mut words = config_words(&bytes, offset)?;
        words[0] += n;
        Some(words)
    });
    assert_eq!(changing, None);
    assert_eq!(config_gather(|_| None), None);
}

#[test]
fn expectations() {
    use abi::bootstrap::outcome::{EXITED, FAILED, RESET, SHUTDOWN, STOPPED};
    for (text, expect) in [
        ("exit 0", Expect::Exit(0)),
        ("exit 255", Expect::Exit(255)),
        ("stopped", Expect::Stopped),
        ("shutdown", Expect::Shutdown),
        ("reset", Expect::Reset),
        ("any", Expect::Any),
    ] {
        assert_eq!(Expect::parse(text), Some(expect));
        assert_eq!(expect.to_string(), text);
    }
    for bad in [
        "exit", "exit ", "exit 256", "exit -1", "exit 0x1", "Stopped", "exit  1", "", "Any", "any ",
    ] {
        assert_eq!(Expect::parse(bad), None, "{bad}");
    }
    assert!(Expect::Exit(0).met_by(EXITED, 0));
    assert!(!Expect::Exit(0).met_by(EXITED, 1));
    assert!(!Expect::Exit(0).met_by(STOPPED, 0));
    assert!(Expect::Stopped.met_by(STOPPED, 0x1234));
    assert!(Expect::Shutdown.met_by(SHUTDOWN, 0));
    assert!(Expect::Reset.met_by(RESET, 0));
    assert!(!Expect::Reset.met_by(FAILED, 0));
    for outcome in [EXITED, STOPPED, SHUTDOWN, RESET, FAILED, 0, 42, u64::MAX] {
        for detail in [0, 1, 255, 0x1234, u64::MAX] {
            assert!(Expect::Any.met_by(outcome, detail), "{outcome} {detail}");
        }
    }
    assert_eq!(outcome_text(EXITED, 3), "exited 3");
    assert_eq!(outcome_text(STOPPED, 0x1000), "stopped at 0x1000");
    assert_eq!(outcome_text(FAILED, 2), "failed (code 2)");
    assert_eq!(outcome_text(42, 0), "ended with outcome 42");
}
