//! Local APIC: x2APIC through MSRs where the CPU offers it, otherwise xAPIC through its MMIO page.
//! The legacy 8259 PICs are remapped and masked (`pic`); the APIC timer runs periodically on
//! [`TIMER_VECTOR`].

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use x86::msr::{rdmsr, wrmsr};

use crate::mem;

/// The local APIC timer's vector, and the spurious-interrupt vector.
pub const TIMER_VECTOR: u8 = 0x20;
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
const APIC_X2APIC_ENABLE: u64 = 1 << 10;
const APIC_BASE_MASK: u64 = 0x000f_ffff_ffff_f000;
const X2APIC_MSR_BASE: u32 = 0x800;

// Register offsets in the xAPIC page; x2APIC MSR = 0x800 + offset / 16.
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
const LVT_PERIODIC: u32 = 1 << 17;
const DIVIDE_BY_16: u32 = 0b0011;
/// Timer period in APIC-timer ticks (bus clock / 16).
const TIMER_INITIAL_COUNT: u32 = 200_000;

#[derive(Clone, Copy)]
enum Mode {
    X2Apic,
    /// xAPIC registers at this kernel virtual address (uncached mapping).
    XApic(u64),
}

static MODE: Once<Mode> = Once::new();
static TICKS: AtomicU64 = AtomicU64::new(0);

fn write(reg: u32, value: u32) {
    match MODE.get() {
        // SAFETY: the x2APIC is enabled and `reg` is one of the architectural register offsets,
        // whose MSR form exists in x2APIC mode.
        Some(Mode::X2Apic) => unsafe { wrmsr(X2APIC_MSR_BASE + reg / 16, u64::from(value)) },
        // SAFETY: `base` is the kernel's uncached mapping of the APIC page; `reg` is an aligned
        // register offset inside it.
        Some(Mode::XApic(base)) => unsafe {
            core::ptr::write_volatile((base + u64::from(reg)) as *mut u32, value)
        },
        None => {}
    }
}

fn read(reg: u32) -> u32 {
    match MODE.get() {
        // SAFETY: as in `write`.
        Some(Mode::X2Apic) => unsafe { rdmsr(X2APIC_MSR_BASE + reg / 16) as u32 },
        // SAFETY: as in `write`.
        Some(Mode::XApic(base)) => unsafe {
            core::ptr::read_volatile((base + u64::from(reg)) as *const u32)
        },
        None => 0,
    }
}

/// Masks the 8259 PICs, enables the local APIC (x2APIC if `x2apic`) and starts the periodic
/// timer: [`TIMER_INITIAL_COUNT`] APIC-timer periods, or with `tick_us` (the kernel command
/// line's `tick_us=`) that many microseconds as measured against the PIT. Interrupts stay
/// disabled; the caller enables them.
pub fn init(x2apic: bool, tick_us: Option<u32>) -> Result<&'static str, mem::MemError> {
    super::pic::init();
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(IA32_APIC_BASE) };
    let mode = if x2apic {
        // SAFETY: CPUID reports x2APIC; enabling it (global enable first) is the documented order.
        unsafe {
            wrmsr(
                IA32_APIC_BASE,
                base | APIC_GLOBAL_ENABLE | APIC_X2APIC_ENABLE,
            )
        };
        Mode::X2Apic
    } else {
        // SAFETY: keeps the APIC page where the firmware put it and sets global enable.
        unsafe { wrmsr(IA32_APIC_BASE, base | APIC_GLOBAL_ENABLE) };
        Mode::XApic(mem::map_mmio(base & APIC_BASE_MASK, 4096)?)
    };
    MODE.call_once(|| mode);
    write(REG_TPR, 0);
    write(REG_SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
    write(
        REG_TIMER_INITIAL,
        tick_us.map_or(TIMER_INITIAL_COUNT, timer_count_for),
    );
    write(REG_LVT_TIMER, LVT_PERIODIC | u32::from(TIMER_VECTOR));
    Ok(match mode {
        Mode::X2Apic => "x2APIC",
        Mode::XApic(_) => "xAPIC",
    })
}

/// The APIC-timer count of `us` microseconds: the timer runs masked and one-shot from its
/// largest count over 10 ms of the PIT. Falls back to [`TIMER_INITIAL_COUNT`] without a PIT.
fn timer_count_for(us: u32) -> u32 {
    write(REG_LVT_TIMER, 1 << 16 | u32::from(TIMER_VECTOR));
    let mut started = false;
    let Some((start, end)) = super::tsc::over_10ms(|| {
        if !started {
            // The window opens: the count starts from the top.
            write(REG_TIMER_INITIAL, u32::MAX);
            started = true;
        }
        read(REG_TIMER_CURRENT)
    }) else {
        return TIMER_INITIAL_COUNT;
    };
    let per_10ms = u64::from(start.saturating_sub(end));
    (per_10ms * u64::from(us) / 10_000).clamp(1_000, u64::from(u32::MAX)) as u32
}

/// The local APIC's ID.
pub fn id() -> u32 {
    match MODE.get() {
        Some(Mode::X2Apic) => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

/// Timer interrupts taken so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Called from the trap dispatcher on [`TIMER_VECTOR`].
pub fn timer_interrupt() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    write(REG_EOI, 0);
}
