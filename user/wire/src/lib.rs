//! Message payloads: how a byte string, usually a `postcard` encoding, travels in the untyped
//! words of a message (`abi::utcb::Utcb::words`).
//!
//! Layout, used by every protocol of the user-level servers (bootstrap, serial log, the
//! isolation servers):
//!
//! - word 0 holds the payload's length `n` in bytes, at most [`MAX_BYTES`];
//! - words 1 ..= ⌈n/8⌉ hold the bytes, eight per word, little-endian (byte `i` is bits
//!   `8·(i mod 8)` .. of word `1 + i/8`); the last word is zero-padded;
//! - the message's word count is [`words_for`]`(n)`; the label stays free for the operation code.
//!
//! Decoding never trusts the length word: a length beyond [`MAX_BYTES`] or beyond the words the
//! message carries, and trailing bytes after a postcard value, are errors.
//!
//! The crate is `no_std` for the servers and tested on the host (`cargo test -p uwire`).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Words a message carries at most.
pub const MAX_WORDS: usize = abi::utcb::MSG_WORDS;
/// Payload bytes a message carries at most (all words but the length word).
pub const MAX_BYTES: usize = (MAX_WORDS - 1) * 8;
/// Bytes of a `&str` that fit in one payload: postcard prefixes a string with its length as a
/// varint, which takes two bytes for every length up to [`MAX_BYTES`].
pub const MAX_STR_BYTES: usize = MAX_BYTES - 2;

/// A buffer that holds any payload; decoded values may borrow from it.
pub type Buf = [u8; MAX_BYTES];

/// Why a payload could not be packed, unpacked, encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The payload needs more than [`MAX_BYTES`] bytes, or the destination has too few words.
    TooLong,
    /// The length word claims more bytes than [`MAX_BYTES`] or than the message's words hold.
    BadLength,
    /// The bytes are not a postcard encoding of the expected type, or bytes are left over.
    Malformed,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TooLong => "payload too long for one message",
            Self::BadLength => "payload length word out of range",
            Self::Malformed => "payload is not a valid encoding",
        })
    }
}

/// Message words (length word included) that a payload of `len` bytes occupies.
pub const fn words_for(len: usize) -> usize {
    1 + len.div_ceil(8)
}

/// Packs `bytes` into `words` (length word first); returns the number of words used.
pub fn pack(bytes: &[u8], words: &mut [u64]) -> Result<usize, Error> {
    let used = words_for(bytes.len());
    if bytes.len() > MAX_BYTES || used > words.len() {
        return Err(Error::TooLong);
    }
    words[0] = bytes.len() as u64;
    for (word, chunk) in words[1..used].iter_mut().zip(bytes.chunks(8)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(le);
    }
    Ok(used)
}

/// Unpacks the payload that `words` (the message's valid words) carry into `buf`.
pub fn unpack<'b>(words: &[u64], buf: &'b mut Buf) -> Result<&'b [u8], Error> {
    let len =
        usize::try_from(*words.first().ok_or(Error::BadLength)?).map_err(|_| Error::BadLength)?;
    if len > MAX_BYTES || words_for(len) > words.len() {
        return Err(Error::BadLength);
    }
    for (chunk, word) in buf[..len].chunks_mut(8).zip(&words[1..]) {
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    Ok(&buf[..len])
}

/// Encodes `value` with postcard and packs it into `words`; returns the number of words used.
pub fn encode<T: Serialize + ?Sized>(value: &T, words: &mut [u64]) -> Result<usize, Error> {
    let mut buf = [0u8; MAX_BYTES];
    let bytes = postcard::to_slice(value, &mut buf).map_err(|_| Error::TooLong)?;
    pack(bytes, words)
}

/// Unpacks and decodes a postcard value from `words`; the value may borrow from `buf`.
pub fn decode<'b, T: Deserialize<'b>>(words: &[u64], buf: &'b mut Buf) -> Result<T, Error> {
    let bytes = unpack(words, buf)?;
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(Error::Malformed),
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
/// Used to split text into messages of at most [`MAX_STR_BYTES`].
pub fn str_prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_little_endian_after_the_length_word() {
        let mut words = [0u64; MAX_WORDS];
        let used = pack(b"abcdefghij", &mut words).unwrap();
        assert_eq!(used, 3);
        assert_eq!(words[0], 10);
        assert_eq!(words[1], u64::from_le_bytes(*b"abcdefgh"));
        assert_eq!(words[2], u64::from_le_bytes(*b"ij\0\0\0\0\0\0"));
        let mut buf = [0u8; MAX_BYTES];
        assert_eq!(unpack(&words[..used], &mut buf).unwrap(), b"abcdefghij");
    }

    #[test]
    fn empty_payload_is_one_word() {
        let mut words = [7u64; 4];
        assert_eq!(pack(&[], &mut words).unwrap(), 1);
        assert_eq!(words[0], 0);
        let mut buf = [0u8; MAX_BYTES];
        assert_eq!(unpack(&words[..1], &mut buf).unwrap(), b"");
    }

    #[test]
    fn the_largest_payload_fits_and_one_more_byte_does_not() {
        let mut words = [0u64; MAX_WORDS];
        let big = [0xa5u8; MAX_BYTES];
        assert_eq!(pack(&big, &mut words).unwrap(), MAX_WORDS);
        assert_eq!(pack(&[0u8; MAX_BYTES + 1], &mut words), Err(Error::TooLong));
        let mut few = [0u64; 2];
        assert_eq!(pack(b"123456789", &mut few), Err(Error::TooLong));
    }

    #[test]
    fn lying_length_words_are_rejected() {
        let mut buf = [0u8; MAX_BYTES];
        assert_eq!(unpack(&[], &mut buf), Err(Error::BadLength));
        assert_eq!(unpack(&[9, 0], &mut buf), Err(Error::BadLength));
        assert_eq!(unpack(&[u64::MAX, 0, 0], &mut buf), Err(Error::BadLength));
        let words = [(MAX_BYTES + 1) as u64; MAX_WORDS];
        assert_eq!(unpack(&words, &mut buf), Err(Error::BadLength));
    }

    #[test]
    fn postcard_values_round_trip() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Req<'a> {
            name: &'a str,
            n: u32,
        }
        let mut words = [0u64; MAX_WORDS];
        let used = encode(
            &Req {
                name: "serial.log",
                n: 300,
            },
            &mut words,
        )
        .unwrap();
        let mut buf = [0u8; MAX_BYTES];
        let req: Req = decode(&words[..used], &mut buf).unwrap();
        assert_eq!(
            req,
            Req {
                name: "serial.log",
                n: 300
            }
        );
    }

    #[test]
    fn strings_up_to_the_limit_encode() {
        let mut words = [0u64; MAX_WORDS];
        let text = "x".repeat(MAX_STR_BYTES);
        let used = encode(text.as_str(), &mut words).unwrap();
        let mut buf = [0u8; MAX_BYTES];
        assert_eq!(decode::<&str>(&words[..used], &mut buf).unwrap(), text);
        let longer = "x".repeat(MAX_STR_BYTES + 1);
        assert_eq!(encode(longer.as_str(), &mut words), Err(Error::TooLong));
    }

    #[test]
    fn wrong_types_and_trailing_bytes_are_malformed() {
        let mut words = [0u64; MAX_WORDS];
        let mut buf = [0u8; MAX_BYTES];
        // A string whose varint length says 5 but only 2 bytes follow.
        let used = pack(&[5, b'a', b'b'], &mut words).unwrap();
        assert_eq!(
            decode::<&str>(&words[..used], &mut buf),
            Err(Error::Malformed)
        );
        // Invalid UTF-8.
        let used = pack(&[2, 0xff, 0xfe], &mut words).unwrap();
        assert_eq!(
            decode::<&str>(&words[..used], &mut buf),
            Err(Error::Malformed)
        );
        // A valid string followed by a stray byte.
        let used = pack(&[1, b'a', 0], &mut words).unwrap();
        assert_eq!(
            decode::<&str>(&words[..used], &mut buf),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn prefixes_end_on_char_boundaries() {
        assert_eq!(str_prefix("hello", 10), "hello");
        assert_eq!(str_prefix("hello", 3), "hel");
        // "é" is two bytes: cutting inside it backs off.
        assert_eq!(str_prefix("aé", 2), "a");
        assert_eq!(str_prefix("", 0), "");
    }
}
