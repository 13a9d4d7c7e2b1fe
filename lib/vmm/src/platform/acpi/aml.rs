//! Just enough AML to write the DSDT: names, integers, packages, buffers, scopes and devices,
//! and the two resource descriptors the legacy devices need.

use alloc::vec::Vec;

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';

/// A PkgLength: the length of what follows it, itself included.
fn pkg_length(body_len: usize) -> Vec<u8> {
    // One byte holds 6 bits; each extra byte adds 8 more (the first then holds 4).
    for extra in 0..4usize {
        let total = body_len + 1 + extra;
        let limit = if extra == 0 {
            1 << 6
        } else {
            1 << (4 + 8 * extra)
        };
        if total < limit {
            if extra == 0 {
                return alloc::vec![total as u8];
            }
            let mut bytes = alloc::vec![(extra as u8) << 6 | (total & 0xf) as u8];
            bytes.extend((0..extra).map(|i| (total >> (4 + 8 * i)) as u8));
            return bytes;
        }
    }
    // 2^28 bytes of AML: more than a DSDT of ours can hold.
    alloc::vec![0xff, 0xff, 0xff, 0xff]
}

/// `op`, a PkgLength and `body`.
fn with_length(op: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend(body);
    out
}

/// A NameSeg: up to four characters, padded with `_`.
pub fn name_seg(name: &str) -> [u8; 4] {
    let mut seg = [b'_'; 4];
    for (slot, byte) in seg.iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    seg
}

/// A NameString: `\NAME` from the root or `NAME` relative to the scope.
fn name_string(name: &str) -> Vec<u8> {
    match name.strip_prefix('\\') {
        Some(rest) => {
            let mut out = alloc::vec![ROOT_CHAR];
            out.extend(name_seg(rest));
            out
        }
        None => name_seg(name).to_vec(),
    }
}

/// An integer in its shortest encoding.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => alloc::vec![ZERO_OP],
        1 => alloc::vec![ONE_OP],
        2..=0xff => alloc::vec![BYTE_PREFIX, value as u8],
        0x100..=0xffff => {
            let mut out = alloc::vec![WORD_PREFIX];
            out.extend((value as u16).to_le_bytes());
            out
        }
        0x1_0000..=0xffff_ffff => {
            let mut out = alloc::vec![DWORD_PREFIX];
            out.extend((value as u32).to_le_bytes());
            out
        }
        _ => {
            let mut out = alloc::vec![QWORD_PREFIX];
            out.extend(value.to_le_bytes());
            out
        }
    }
}

/// `EisaId("PNP0501")`: three letters of five bits and four hex digits, stored big-endian.
pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
    let letter = |c: u8| u32::from(c.wrapping_sub(0x40) & 0x1f);
    let hex = |c: u8| u32::from(char::from(c).to_digit(16).unwrap_or(0) as u8);
    let value = letter(id[0]) << 26
        | letter(id[1]) << 21
        | letter(id[2]) << 16
        | hex(id[3]) << 12
        | hex(id[4]) << 8
        | hex(id[5]) << 4
        | hex(id[6]);
    let mut out = alloc::vec![DWORD_PREFIX];
    out.extend(value.to_be_bytes());
    out
}

/// `Name(name, value)`.
pub fn name(name: &str, value: Vec<u8>) -> Vec<u8> {
    let mut out = alloc::vec![NAME_OP];
    out.extend(name_string(name));
    out.extend(value);
    out
}

/// `Package() { elements }`.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = alloc::vec![elements.len() as u8];
    for element in elements {
        body.extend_from_slice(element);
    }
    with_length(&[PACKAGE_OP], body)
}

/// `Scope(name) { terms }`.
pub fn scope(name: &str, terms: Vec<u8>) -> Vec<u8> {
    let mut body = name_string(name);
    body.extend(terms);
    with_length(&[SCOPE_OP], body)
}

/// `Device(name) { terms }`.
pub fn device(name: &str, terms: Vec<u8>) -> Vec<u8> {
    let mut body = name_string(name);
    body.extend(terms);
    with_length(&[EXT_OP_PREFIX, DEVICE_OP], body)
}

/// `ResourceTemplate() { descriptors }`: a buffer ending with the end tag.
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    let mut data: Vec<u8> = descriptors.iter().flatten().copied().collect();
    // End tag; a zero checksum means "not checked".
    data.extend([0x79, 0x00]);
    let mut body = integer(data.len() as u64);
    body.extend(data);
    with_length(&[BUFFER_OP], body)
}

/// `IO(Decode16, base, base, 1, length)`: a fixed port range.
pub fn io_port(base: u16, length: u8) -> Vec<u8> {
    let [lo, hi] = base.to_le_bytes();
    alloc::vec![0x47, 0x01, lo, hi, lo, hi, 0x01, length]
}

/// `IRQNoFlags() { irq }`: an ISA interrupt, edge-triggered, active high.
pub fn irq(irq: u8) -> Vec<u8> {
    let mask = 1u16 << (irq & 0xf);
    let [lo, hi] = mask.to_le_bytes();
    alloc::vec![0x22, lo, hi]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(0), [1]);
        assert_eq!(pkg_length(62), [63]);
        // 63 + 2 = 65 = 0x41: two bytes, low nibble 1, then 0x04.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        assert_eq!(pkg_length(4093), [0x4f, 0xff]);
        assert_eq!(pkg_length(4094), [0x80 | 0x01, 0x00, 0x01]);
    }

    #[test]
    fn known_encodings() {
        assert_eq!(eisa_id(b"PNP0501"), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
        assert_eq!(eisa_id(b"PNP0B00"), [0x0c, 0x41, 0xd0, 0x0b, 0x00]);
        assert_eq!(integer(0x3f8), [0x0b, 0xf8, 0x03]);
        assert_eq!(integer(0x1_0000), [0x0c, 0, 0, 1, 0]);
        assert_eq!(integer(1 << 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            name("\\_S5", integer(0)),
            [0x08, b'\\', b'_', b'S', b'5', b'_', 0]
        );
        assert_eq!(irq(4), [0x22, 0x10, 0x00]);
    }
}
