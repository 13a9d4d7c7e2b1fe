//! The guest's console: what it sends through COM1 (the 16550 model,
//! [`crate::platform::serial::Serial`], and the DMP window's UART ring), gathered into lines.
//!
//! Output is collected per line: a line ends at `\n` (which is not part of it; a `\r` before it
//! is dropped too) or when [`LINE_BYTES`] bytes have gathered, so the vmm-server sends one log
//! message per line. [`Console::flush`] hands out a partial line at the guest's end. Every byte
//! also enters a running FNV-1a digest, to compare the output of runs in different memory modes.

use alloc::string::String;

/// The longest line handed out at once.
pub const LINE_BYTES: usize = 256;

/// The line being gathered, the last complete one, and the output's count and digest.
#[derive(Clone, Debug)]
pub struct Console {
    pending: [u8; LINE_BYTES],
    pending_len: usize,
    line: [u8; LINE_BYTES],
    line_len: usize,
    /// Bytes output so far.
    output: u64,
    /// FNV-1a of those bytes: what came out, byte for byte, whatever path it took (port
    /// writes or the DMP ring), to compare across memory modes.
    digest: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    pub const fn new() -> Console {
        Console {
            pending: [0; LINE_BYTES],
            pending_len: 0,
            line: [0; LINE_BYTES],
            line_len: 0,
            output: 0,
            digest: FNV_OFFSET,
        }
    }

    /// Bytes output so far.
    pub fn output_bytes(&self) -> u64 {
        self.output
    }

    /// FNV-1a over every byte output so far.
    pub fn output_digest(&self) -> u64 {
        self.digest
    }

    /// One byte of output. Returns true when a line is complete; take it with
    /// [`Console::line`] before the next byte.
    pub fn output(&mut self, byte: u8) -> bool {
        self.output += 1;
        self.digest = (self.digest ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        if byte == b'\n' {
            if self.pending_len > 0 && self.pending[self.pending_len - 1] == b'\r' {
                self.pending_len -= 1;
            }
            self.complete();
            return true;
        }
        self.pending[self.pending_len] = byte;
        self.pending_len += 1;
        if self.pending_len == LINE_BYTES {
            self.complete();
            return true;
        }
        false
    }

    fn complete(&mut self) {
        self.line[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        self.line_len = self.pending_len;
        self.pending_len = 0;
    }

    /// The line completed last (bytes as the guest wrote them, without the `\n`).
    pub fn line(&self) -> &[u8] {
        &self.line[..self.line_len]
    }

    /// Completes the partial line, if any; returns whether there was one.
    pub fn flush(&mut self) -> bool {
        if self.pending_len == 0 {
            return false;
        }
        self.complete();
        true
    }
}

/// `line` as printable text: bytes outside printable ASCII (escape sequences, invalid UTF-8,
/// control characters other than tab) become `?`, so a guest cannot drive the console.
pub fn printable(line: &[u8]) -> String {
    line.iter()
        .map(|&b| match b {
            b'\t' | 0x20..=0x7e => char::from(b),
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn put(console: &mut Console, text: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in text {
            if console.output(b) {
                lines.push(console.line().to_vec());
            }
        }
        lines
    }

    #[test]
    fn lines_end_at_newline() {
        let mut c = Console::new();
        let lines = put(&mut c, b"hello\r\nworld\n\npartial");
        assert_eq!(lines, [b"hello".to_vec(), b"world".to_vec(), Vec::new()]);
        assert!(c.flush());
        assert_eq!(c.line(), b"partial");
        assert!(!c.flush());
    }

    #[test]
    fn long_lines_are_cut() {
        let mut c = Console::new();
        let text = [b'x'; LINE_BYTES * 2 + 3];
        let lines = put(&mut c, &text);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == LINE_BYTES));
        assert!(c.flush());
        assert_eq!(c.line().len(), 3);
    }

    #[test]
    fn digest_counts_every_byte() {
        let mut c = Console::new();
        assert_eq!(c.output_digest(), FNV_OFFSET);
        put(&mut c, b"a\n");
        assert_eq!(c.output_bytes(), 2);
        let expected = ((FNV_OFFSET ^ 0x61).wrapping_mul(FNV_PRIME) ^ 0x0a).wrapping_mul(FNV_PRIME);
        assert_eq!(c.output_digest(), expected);
    }

    #[test]
    fn printable_text() {
        assert_eq!(printable(b"ok\tfine"), "ok\tfine");
        assert_eq!(printable(b"\x1b[2J\xff"), "?[2J?");
    }
}
