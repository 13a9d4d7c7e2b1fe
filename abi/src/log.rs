//! The log protocol: what servers send the serial driver's `log` portal.
//!
//! A request has label [`WRITE`] and a postcard `&str` payload in the message words (`uwire`
//! layout: byte length in word 0, bytes little-endian from word 1); the driver writes the text
//! to the UART in whole lines and adds nothing (a server starts its lines with its own name),
//! and replies with a [`crate::Status`] in word 0. Other labels are answered `BadArgument`.

/// The `log` portal's only operation: write the payload text.
pub const WRITE: u64 = 1;
