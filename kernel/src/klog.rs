//! The kernel's console: `println!` for lines that are part of the system's transcript (banner,
//! results, power-off) and the `log` crate's macros, with a level from the `loglevel=` command-line
//! option (error, warn, info, debug, trace; default info), for everything else.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::arch::serial;

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        serial::write_str(s);
        Ok(())
    }
}

static CONSOLE: Mutex<Console> = Mutex::new(Console);
static INITIALISED: AtomicBool = AtomicBool::new(false);

struct KernelLogger;

static LOGGER: KernelLogger = KernelLogger;

impl Log for KernelLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error",
            Level::Warn => " warn",
            Level::Info => " info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        print(format_args!("[{tag}] {}\n", record.args()));
    }

    fn flush(&self) {}
}

/// Sets up the UART and the logger; idempotent, so both boot paths and `boot::start` may call it.
pub fn init_early() {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return;
    }
    serial::init();
    // `set_logger` fails only if a logger is already set, which the flag above rules out.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// Applies `loglevel=LEVEL` from the kernel command line; an unknown level is reported and ignored.
pub fn set_level_from_cmdline(cmdline: &str) {
    let Some(value) = cmdline
        .split_ascii_whitespace()
        .find_map(|arg| arg.strip_prefix("loglevel="))
    else {
        return;
    };
    match value.parse::<LevelFilter>() {
        Ok(level) => log::set_max_level(level),
        Err(_) => {
            log::warn!("unknown loglevel '{value}' ignored (use error, warn, info, debug or trace)")
        }
    }
}

/// Prints to the console, one caller at a time.
pub fn print(args: fmt::Arguments) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Frees the console lock for the last words of a failing system, which may have been
/// interrupted while holding it. Only called on the way to power-off.
pub fn force_unlock() {
    if CONSOLE.is_locked() {
        // SAFETY: called only on the single CPU's path to power-off, after which the interrupted
        // holder never runs again.
        unsafe { CONSOLE.force_unlock() };
    }
}

/// Prints a line to the kernel console.
#[macro_export]
macro_rules! println {
    () => { $crate::klog::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::klog::print(format_args!("{}\n", format_args!($($arg)*))) };
}
