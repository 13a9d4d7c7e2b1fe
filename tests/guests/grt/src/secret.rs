//! The secret the hypervisor writes into every guest: `SECRET:<guestname>:<16 hex digits>` at
//! guest-physical [`ADDR`]. The probe checks that its own is there; the attacker looks for
//! anyone else's.

/// Where the hypervisor writes a guest's secret.
pub const ADDR: u64 = 0x9_0000;
/// The first bytes of every secret.
pub const PREFIX: &[u8] = b"SECRET:";
/// Longest guest name accepted.
pub const MAX_NAME: usize = 64;
/// Number of hex digits of the value.
pub const VALUE_DIGITS: usize = 16;
/// Longest secret: prefix, name, colon, value.
pub const MAX_LEN: usize = PREFIX.len() + MAX_NAME + 1 + VALUE_DIGITS;

/// A well-formed secret found in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secret<'a> {
    /// The guest name it belongs to.
    pub name: &'a str,
    /// Its 16 hex digits.
    pub value: &'a str,
    /// Its length in bytes.
    pub len: usize,
}

/// Parses a secret at the start of `bytes` (more bytes may follow it).
pub fn parse(bytes: &[u8]) -> Option<Secret<'_>> {
    let rest = bytes.strip_prefix(PREFIX)?;
    let name_len = rest.iter().take(MAX_NAME + 1).position(|&b| b == b':')?;
    let name = &rest[..name_len];
    let valid_name = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || !name.iter().all(valid_name) {
        return None;
    }
    let value = rest.get(name_len + 1..name_len + 1 + VALUE_DIGITS)?;
    if !value.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(Secret {
        // Both are ASCII, checked above.
        name: core::str::from_utf8(name).ok()?,
        value: core::str::from_utf8(value).ok()?,
        len: PREFIX.len() + name_len + 1 + VALUE_DIGITS,
    })
}

/// The bytes at a physical address, as a slice of `len` bytes.
///
/// # Safety
/// `addr..addr + len` must be RAM of this guest that no Rust code borrows mutably.
pub unsafe fn phys_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: per the caller.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}
