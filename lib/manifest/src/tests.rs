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
