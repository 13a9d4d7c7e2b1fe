//! Text output through the serial driver.
//!
//! The serial driver's `log` portal (protocol `abi::log`) takes label [`WRITE`] with a postcard `&str` payload
//! (`uwire` layout) and answers with a status in word 0. The driver adds nothing to the text, so
//! servers start their lines with their own name. Text longer than one message is sent in
//! pieces of at most [`uwire::MAX_STR_BYTES`], split at character boundaries.
//!
//! A server sets the portal with [`set_portal`] once it obtained `serial.log` from init. Until
//! then (and in init, which has no log portal) text goes to the kernel console, which only the
//! root domain may use; for other domains that fails quietly.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use abi::Sel;

use crate::{syscall, Error, Utcb};

/// The `log` portal's only operation: write the payload text (`abi::log`).
pub use abi::log::WRITE;

const NO_PORTAL: u64 = u64::MAX;
static PORTAL: AtomicU64 = AtomicU64::new(NO_PORTAL);
static NAME_PTR: AtomicUsize = AtomicUsize::new(0);
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);

/// Sends all further text to the `log` portal at `sel`.
pub fn set_portal(sel: Sel) {
    PORTAL.store(sel.raw(), Ordering::Release);
}

/// The log portal, once set.
pub fn portal() -> Option<Sel> {
    match PORTAL.load(Ordering::Acquire) {
        NO_PORTAL => None,
        sel => Some(Sel::new(sel)),
    }
}

/// Names the server in messages the runtime prints on its behalf (panics).
pub fn set_name(name: &'static str) {
    NAME_LEN.store(0, Ordering::Release);
    NAME_PTR.store(name.as_ptr() as usize, Ordering::Release);
    NAME_LEN.store(name.len(), Ordering::Release);
}

/// The name given to [`set_name`], or `"?"`.
pub fn name() -> &'static str {
    let (ptr, len) = (
        NAME_PTR.load(Ordering::Acquire),
        NAME_LEN.load(Ordering::Acquire),
    );
    if ptr == 0 || len == 0 {
        return "?";
    }
    // SAFETY: `set_name` stored the pointer and length of a `&'static str` (the length is
    // cleared while the pointer changes, and a zero length is not read).
    unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(ptr as *const u8, len)) }
}

/// Writes `text` (the UTCB's message is overwritten).
pub fn write_str(utcb: &mut Utcb, text: &str) -> Result<(), Error> {
    let Some(portal) = portal() else {
        for chunk in text.as_bytes().chunks(4096) {
            syscall::console_write(chunk)?;
        }
        return Ok(());
    };
    let mut rest = text;
    while !rest.is_empty() {
        let piece = uwire::str_prefix(rest, uwire::MAX_STR_BYTES);
        utcb.set_payload(WRITE, piece)?;
        utcb.call_msg(portal)?;
        utcb.reply_status()?;
        rest = &rest[piece.len()..];
    }
    Ok(())
}

/// Formats `args` and writes the text; pieces of up to [`BUF_BYTES`] bytes go out as one
/// message each, so a shorter line is never interleaved with another server's.
pub fn print(utcb: &mut Utcb, args: fmt::Arguments<'_>) -> Result<(), Error> {
    let mut sink = Sink {
        utcb,
        buf: [0; BUF_BYTES],
        len: 0,
        error: None,
    };
    let formatted = sink.write_fmt(args);
    sink.flush();
    match (sink.error, formatted) {
        (Some(e), _) => Err(e),
        (None, Err(_)) => Err(Error::Protocol),
        (None, Ok(())) => Ok(()),
    }
}

/// Bytes of formatted text collected before they are sent.
pub const BUF_BYTES: usize = 256;

struct Sink<'a> {
    utcb: &'a mut Utcb,
    buf: [u8; BUF_BYTES],
    len: usize,
    error: Option<Error>,
}

impl Sink<'_> {
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // The buffer only ever receives whole characters of `&str`s.
        let result = match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(text) => write_str(self.utcb, text),
            Err(_) => Err(Error::Protocol),
        };
        if let (Err(e), None) = (result, self.error) {
            self.error = Some(e);
        }
        self.len = 0;
    }
}

impl Write for Sink<'_> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while !s.is_empty() {
            let piece = uwire::str_prefix(s, BUF_BYTES - self.len);
            if piece.is_empty() {
                self.flush();
                continue;
            }
            self.buf[self.len..self.len + piece.len()].copy_from_slice(piece.as_bytes());
            self.len += piece.len();
            s = &s[piece.len()..];
        }
        Ok(())
    }
}

/// `print!` through [`print`] with an explicit UTCB (whose message it overwrites); errors are
/// dropped. Use [`print`] to see them.
#[macro_export]
macro_rules! print {
    ($utcb:expr, $($arg:tt)*) => {{
        let _ = $crate::log::print($utcb, format_args!($($arg)*));
    }};
}

/// `println!` through [`print`] with an explicit UTCB (whose message it overwrites); errors are
/// dropped.
#[macro_export]
macro_rules! println {
    ($utcb:expr) => {{
        let _ = $crate::log::print($utcb, format_args!("\n"));
    }};
    ($utcb:expr, $($arg:tt)*) => {{
        let _ = $crate::log::print($utcb, format_args!("{}\n", format_args!($($arg)*)));
    }};
}
