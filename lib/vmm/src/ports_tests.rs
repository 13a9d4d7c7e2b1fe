use super::*;
use crate::platform::board::BoardConfig;

fn ports() -> Ports {
    Ports::new(Board::new(BoardConfig {
        ram_bytes: 16 << 20,
        tsc_hz: 1_000_000_000,
        rtc_unix_seconds: 0,
        x2apic: false,
    }))
}

fn out(port: u16, size: u8, v: u64) -> (IoQual, u64) {
    (IoQual::new(port, size, false, false, false), v)
}

fn inp(port: u16, size: u8) -> (IoQual, u64) {
    (IoQual::new(port, size, true, false, false), 0)
}

#[test]
fn uart_output_lines() {
    let mut p = ports();
    for &b in b"hi" {
        let (q, v) = out(0x3f8, 1, u64::from(b) | 0xff00);
        assert_eq!(p.access(0, q, v).event, IoEvent::None);
    }
    let (q, v) = out(0x3f8, 1, u64::from(b'\n'));
    assert_eq!(p.access(0, q, v).event, IoEvent::Line);
    assert_eq!(p.take_lines(), ["hi"]);
    assert!(p.take_lines().is_empty());
    let (q, v) = inp(0x3fd, 1);
    assert_eq!(p.access(0, q, v).value, Some(0x60));
    assert_eq!(p.console_state().output_bytes(), 3);
}

#[test]
fn partial_line_flushes() {
    let mut p = ports();
    let (q, v) = out(0x3f8, 1, u64::from(b'x'));
    p.access(0, q, v);
    assert!(p.flush());
    assert_eq!(p.take_lines(), ["x"]);
    assert!(!p.flush());
}

#[test]
fn exit_and_reset() {
    let mut p = ports();
    let (q, v) = out(0xf4, 1, 0x1_0042);
    assert_eq!(p.access(0, q, v).event, IoEvent::Exit(0x42));
    let (q, v) = out(0xf4, 4, 0xdead_beef_0000_0007);
    assert_eq!(p.access(0, q, v).event, IoEvent::Exit(7));
    let (q, v) = inp(0xf4, 1);
    assert_eq!(
        p.access(0, q, v),
        IoResult {
            value: Some(0xff),
            event: IoEvent::None
        }
    );
    for val in [0x06, 0x0e, 0x04] {
        let (q, v) = out(0xcf9, 1, val);
        assert_eq!(p.access(0, q, v).event, IoEvent::Reset(0xcf9));
    }
    let (q, v) = out(0xcf9, 1, 0x02);
    assert_eq!(p.access(0, q, v).event, IoEvent::None);
    // A dword write to 0xcf8 (PCI configuration address) is not a reset.
    let (q, v) = out(0xcf8, 4, 0x8000_0600);
    assert_eq!(p.access(0, q, v).event, IoEvent::None);
    let (q, v) = out(0x64, 1, 0xfe);
    assert_eq!(p.access(0, q, v).event, IoEvent::Reset(0x64));
    let (q, v) = out(0x604, 2, 1 << 13);
    assert_eq!(p.access(0, q, v).event, IoEvent::PowerOff);
}

#[test]
fn no_pci_device_answers() {
    let mut p = ports();
    let (q, v) = out(0xcf8, 4, 0x8000_0000);
    p.access(0, q, v);
    let (q, v) = inp(0xcfc, 4);
    assert_eq!(p.access(0, q, v).value, Some(0xffff_ffff));
}

#[test]
fn unknown_ports_read_all_ones() {
    let mut p = ports();
    for (size, mask) in [(1, 0xff), (2, 0xffff), (4, 0xffff_ffff), (3, 0xffff_ffff)] {
        let (q, v) = inp(0x2f8, size);
        assert_eq!(p.access(0, q, v).value, Some(mask));
    }
    assert_eq!(p.ignored(), 4);
}

#[test]
fn ignored_logging_is_bounded() {
    let mut p = ports();
    let mut logged = 0;
    for _ in 0..5000 {
        let (q, v) = out(0x2f8, 1, 0);
        if let IoEvent::Ignored { log: true, .. } = p.access(0, q, v).event {
            logged += 1;
        }
    }
    assert_eq!(logged, 4); // 1, 1024, 2048, 4096
                           // A flood over every port stays within the budget.
    for port in 0..=u16::MAX {
        if matches!(port, 0xcf9 | 0x64 | 0x604 | 0x605 | 0x603) {
            continue;
        }
        let (q, v) = out(port, 1, 0);
        if let IoEvent::Ignored { log: true, .. } = p.access(0, q, v).event {
            logged += 1;
        }
    }
    assert_eq!(logged, LOG_BUDGET as usize);
    assert!(p.ignored() > 5000);
}

#[test]
fn string_io_is_refused() {
    let mut p = ports();
    let q = IoQual::new(0x3f8, 1, false, true, true);
    assert_eq!(p.access(0, q, 0).event, IoEvent::StringIo);
    let q = IoQual::new(0x3f8, 1, true, true, false);
    assert_eq!(p.access(0, q, 0).event, IoEvent::StringIo);
}

#[test]
fn merging_into_rax() {
    let rax = 0x1122_3344_5566_7788;
    assert_eq!(merge_in(rax, 1, 0xff), 0x1122_3344_5566_77ff);
    assert_eq!(merge_in(rax, 2, 0xabcd), 0x1122_3344_5566_abcd);
    assert_eq!(merge_in(rax, 4, 0xabcd_ef01), 0xabcd_ef01);
}
