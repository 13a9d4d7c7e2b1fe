//! Exit profiles: the batch message in which the kernel reports which VM exits a Vm took and
//! which guest instructions caused the most of them (the input of Dynamic Memory
//! Paravirtualization, issue #5/#6).
//!
//! **Batch.** A [`ProfileBatch`] covers one window of one Vm: the exits counted since the previous
//! batch, by reason ([`crate::vm::Exit`] order), and at most [`MAX_SITES`] hot sites (exit reason,
//! guest RIP) with an estimated count and that estimate's error bound, sorted by count,
//! descending. `sequence` numbers the batches of a Vm from 0, so a receiver sees a lost batch as a
//! gap. The kernel fills batches (the counting itself lives in `virt::profile`).
//!
//! **Encoding.** A batch travels as its `postcard` encoding ([`ProfileBatch::encode`],
//! [`ProfileBatch::decode`]); no encoding is longer than [`MAX_ENCODED_LEN`] bytes. Decoding
//! treats its input as hostile: truncated, oversized, trailing or nonsensical input (a site whose
//! reason is not an exit reason) is a [`ProfileError`], never a panic.
//!
//! **Words.** [`pack_words`] / [`unpack_words`] carry the bytes in message words with the layout
//! of the user-side payload crate (`uwire`): word 0 holds the length in bytes, the following words
//! the bytes, eight per word, little-endian, the last one zero-padded. A full batch needs up to
//! [`MAX_WORDS`] words, more than one message carries ([`crate::utcb::MSG_WORDS`]), so a
//! transport must either use a larger buffer (a shared page) or send at most
//! [`MAX_SITES_IN_MESSAGE`] sites per message.
//!
//! **Text.** [`ProfileBatch::write_text`] formats a batch as log lines that the build tool parses;
//! the format is documented there and is stable.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::vm::{Exit, EXIT_COUNT};

/// Exit reasons a batch counts (the length of [`ProfileBatch::by_reason`]).
pub const REASONS: usize = EXIT_COUNT as usize;

/// Hot sites a batch carries at most.
pub const MAX_SITES: usize = 32;

/// The longest encoding of a [`ProfileBatch`], in bytes.
///
/// postcard writes every `u64` as a varint of at most 10 bytes and a `u8` as one byte; the
/// `by_reason` array has no length prefix; the site list has a varint length (one byte for up to
/// 127). So: 3 × 10 (tag, sequence, total) + 18 × 10 (by reason) + 1 + 32 × (1 + 3 × 10).
/// A test encodes a batch with every field at its maximum and checks this bound is exact.
pub const MAX_ENCODED_LEN: usize = max_encoded_len(MAX_SITES);

/// The longest encoding of a batch with at most `sites` sites (up to 127), in bytes.
pub const fn max_encoded_len(sites: usize) -> usize {
    3 * 10 + REASONS * 10 + 1 + sites * (1 + 3 * 10)
}

/// Sites a batch may carry and still fit one message whatever its values: packed with
/// [`pack_words`] into at most [`crate::utcb::MSG_WORDS`] words (9 with 18 exit reasons; a transport that has only
/// one message truncates `sites` to this many, the hottest, before encoding).
pub const MAX_SITES_IN_MESSAGE: usize =
    ((crate::utcb::MSG_WORDS - 1) * 8 - max_encoded_len(0)) / (1 + 3 * 10);

/// Message words that [`pack_words`] needs for an encoding of `len` bytes (length word
/// included).
pub const fn words_for(len: usize) -> usize {
    1 + len.div_ceil(8)
}

/// Words of the longest packed batch.
pub const MAX_WORDS: usize = words_for(MAX_ENCODED_LEN);

/// One hot site: exits of one reason at one guest instruction.
///
/// Counts are estimates of a bounded heavy-hitters table: the true number of exits at the site in
/// the batch's window lies in `count - error ..= count`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotSite {
    /// The exit reason ([`Exit`] as `u8`).
    pub reason: u8,
    /// Guest RIP of the exiting instruction.
    pub rip: u64,
    /// Estimated exits at this site (an upper bound).
    pub count: u64,
    /// How much `count` may overestimate (`count - error` is a lower bound).
    pub error: u64,
}

impl HotSite {
    /// The site's exit reason, if `reason` names one.
    pub const fn exit(&self) -> Option<Exit> {
        Exit::from_u64(self.reason as u64)
    }

    /// Exits at this site that are certain (`count - error`).
    pub const fn guaranteed(&self) -> u64 {
        self.count.saturating_sub(self.error)
    }
}

/// One window of exit counts of one Vm (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileBatch {
    /// Names the Vm (chosen by the kernel; stable for the Vm's life).
    pub vm_tag: u64,
    /// Number of batches of this Vm before this one.
    pub sequence: u64,
    /// Exits in this window (the sum of `by_reason`).
    pub exits_total: u64,
    /// Exits in this window by reason, indexed by [`Exit`] value.
    pub by_reason: [u64; REASONS],
    /// The hottest sites of this window, by `count` descending.
    pub sites: heapless::Vec<HotSite, MAX_SITES>,
}

/// Why a batch could not be encoded, decoded, packed or unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// The output buffer (bytes or words) is too small.
    BufferTooSmall,
    /// The input ends before the batch does.
    Truncated,
    /// The input is not the encoding of a batch (bad varint, more than [`MAX_SITES`] sites, …).
    Malformed,
    /// Bytes are left after the batch.
    TrailingBytes,
    /// A site names a reason that is not an exit reason.
    BadReason,
    /// The length word of packed words is larger than the words or the buffer hold.
    BadLength,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "profile: buffer too small",
            Self::Truncated => "profile: batch truncated",
            Self::Malformed => "profile: not a batch encoding",
            Self::TrailingBytes => "profile: bytes after the batch",
            Self::BadReason => "profile: site with an invalid exit reason",
            Self::BadLength => "profile: packed length out of range",
        })
    }
}

impl ProfileBatch {
    /// An empty batch.
    pub const fn new(vm_tag: u64, sequence: u64) -> Self {
        Self {
            vm_tag,
            sequence,
            exits_total: 0,
            by_reason: [0; REASONS],
            sites: heapless::Vec::new(),
        }
    }

    /// Exits of `reason` in this window.
    pub const fn count(&self, reason: Exit) -> u64 {
        self.by_reason[reason as usize]
    }

    /// Encodes the batch into `buf` (at most [`MAX_ENCODED_LEN`] bytes); returns the bytes used.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], ProfileError> {
        match postcard::to_slice(self, buf) {
            Ok(bytes) => Ok(bytes),
            Err(_) => Err(ProfileError::BufferTooSmall),
        }
    }

    /// Decodes a batch from exactly `bytes`; any other input is an error.
    pub fn decode(bytes: &[u8]) -> Result<ProfileBatch, ProfileError> {
        let batch = match postcard::take_from_bytes::<ProfileBatch>(bytes) {
            Ok((batch, [])) => batch,
            Ok(_) => return Err(ProfileError::TrailingBytes),
            Err(postcard::Error::DeserializeUnexpectedEnd) => return Err(ProfileError::Truncated),
            Err(_) => return Err(ProfileError::Malformed),
        };
        if batch.sites.iter().any(|s| s.exit().is_none()) {
            return Err(ProfileError::BadReason);
        }
        Ok(batch)
    }

    /// Writes the batch as text lines, each ending in `\n`: the summary line
    /// ([`Self::write_summary`]) and one line per site ([`Self::write_site`]).
    ///
    /// ```text
    /// profile: vm=3 seq=0 exits=1200 startup=1 recall=0 cpuid=40 io=150 ... other=0
    /// profile:   #1 reason=memory-fault rip=0xffffffff81012345 count=900 error=0
    /// profile:   #2 reason=io rip=0x7c1a count=150 error=2
    /// ```
    pub fn write_text<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        self.write_summary(w)?;
        w.write_char('\n')?;
        for i in 0..self.sites.len() {
            self.write_site(w, i)?;
            w.write_char('\n')?;
        }
        Ok(())
    }

    /// Writes the summary line, without a line end:
    /// `profile: vm=<tag> seq=<sequence> exits=<total>` followed by ` <reason>=<count>` for each
    /// of the 14 exit reasons in [`Exit`] order, named by [`Exit::name`] (`startup`, `recall`,
    /// `cpuid`, `io`, `rdmsr`, `wrmsr`, `hlt`, `hypercall`, `memory-fault`, `shutdown`,
    /// `exception`, `interrupt-window`, `entry-failure`, `other`). Numbers are decimal; fields are
    /// separated by one space.
    pub fn write_summary<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        write!(
            w,
            "profile: vm={} seq={} exits={}",
            self.vm_tag, self.sequence, self.exits_total
        )?;
        for (v, count) in self.by_reason.iter().enumerate() {
            let name = Exit::from_u64(v as u64).map_or("unknown", Exit::name);
            write!(w, " {name}={count}")?;
        }
        Ok(())
    }

    /// Writes the line of site `index` (0-based), without a line end:
    /// `profile:   #<rank> reason=<name> rip=0x<hex> count=<count> error=<error>`, with three
    /// spaces before `#`, the 1-based rank, the reason's [`Exit::name`] (`unknown` for a value
    /// that is no reason), the RIP in lower-case hexadecimal without leading zeros, and decimal
    /// counts. Writes nothing for an index beyond the sites.
    pub fn write_site<W: fmt::Write>(&self, w: &mut W, index: usize) -> fmt::Result {
        let Some(site) = self.sites.get(index) else {
            return Ok(());
        };
        let name = site.exit().map_or("unknown", Exit::name);
        write!(
            w,
            "profile:   #{} reason={} rip={:#x} count={} error={}",
            index + 1,
            name,
            site.rip,
            site.count,
            site.error
        )
    }
}

/// Packs `bytes` into `words`: word 0 the length, then the bytes, eight per word, little-endian,
/// the last word zero-padded. Returns the number of words used ([`words_for`]).
pub fn pack_words(bytes: &[u8], words: &mut [u64]) -> Result<usize, ProfileError> {
    let used = words_for(bytes.len());
    if used > words.len() {
        return Err(ProfileError::BufferTooSmall);
    }
    words[0] = bytes.len() as u64;
    for (word, chunk) in words[1..used].iter_mut().zip(bytes.chunks(8)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(le);
    }
    Ok(used)
}

/// Unpacks the bytes that `words` (the valid words of a message) carry into `buf`. The length
/// word is not trusted: a length beyond the words given or beyond `buf` is an error.
pub fn unpack_words<'b>(words: &[u64], buf: &'b mut [u8]) -> Result<&'b [u8], ProfileError> {
    let first = *words.first().ok_or(ProfileError::BadLength)?;
    let len = usize::try_from(first).map_err(|_| ProfileError::BadLength)?;
    if len > buf.len() || len > (words.len() - 1) * 8 {
        return Err(ProfileError::BadLength);
    }
    for (chunk, word) in buf[..len].chunks_mut(8).zip(&words[1..]) {
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    Ok(&buf[..len])
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;

    use super::*;

    fn full_batch(value: u64) -> ProfileBatch {
        let mut b = ProfileBatch::new(value, value);
        b.exits_total = value;
        b.by_reason = [value; REASONS];
        for i in 0..MAX_SITES {
            b.sites
                .push(HotSite {
                    reason: (i % REASONS) as u8,
                    rip: value,
                    count: value,
                    error: value,
                })
                .unwrap();
        }
        b
    }

    fn sample() -> ProfileBatch {
        let mut b = ProfileBatch::new(7, 3);
        b.by_reason[Exit::MemoryFault as usize] = 900;
        b.by_reason[Exit::Io as usize] = 150;
        b.by_reason[Exit::Cpuid as usize] = 40;
        b.exits_total = 1090;
        b.sites
            .push(HotSite {
                reason: Exit::MemoryFault as u8,
                rip: 0xffff_ffff_8101_2345,
                count: 900,
                error: 0,
            })
            .unwrap();
        b.sites
            .push(HotSite {
                reason: Exit::Io as u8,
                rip: 0x7c1a,
                count: 150,
                error: 2,
            })
            .unwrap();
        b
    }

    /// A small deterministic generator (xorshift64*), enough for a fuzz loop.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn round_trips() {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        for batch in [
            ProfileBatch::new(0, 0),
            sample(),
            full_batch(0),
            full_batch(1),
            full_batch(u64::MAX),
        ] {
            let bytes = batch.encode(&mut buf).unwrap();
            assert_eq!(ProfileBatch::decode(bytes), Ok(batch));
        }
    }

    #[test]
    fn max_encoded_len_is_the_largest_encoding() {
        let mut buf = [0u8; MAX_ENCODED_LEN + 64];
        let len = full_batch(u64::MAX).encode(&mut buf).unwrap().len();
        assert_eq!(len, MAX_ENCODED_LEN);
        assert_eq!(MAX_ENCODED_LEN, 1203);
        // Exactly MAX_ENCODED_LEN bytes suffice; one fewer does not.
        let mut exact = [0u8; MAX_ENCODED_LEN];
        assert!(full_batch(u64::MAX).encode(&mut exact).is_ok());
        assert_eq!(
            full_batch(u64::MAX).encode(&mut exact[..MAX_ENCODED_LEN - 1]),
            Err(ProfileError::BufferTooSmall)
        );
        // Random batches never exceed it either.
        let mut rng = Rng(0x1234_5678);
        for _ in 0..200 {
            let mut b = ProfileBatch::new(rng.next(), rng.next());
            b.exits_total = rng.next();
            for c in &mut b.by_reason {
                *c = rng.next() >> (rng.next() % 64);
            }
            for _ in 0..rng.next() % (MAX_SITES as u64 + 1) {
                let _ = b.sites.push(HotSite {
                    reason: (rng.next() % REASONS as u64) as u8,
                    rip: rng.next(),
                    count: rng.next(),
                    error: rng.next() >> 3,
                });
            }
            let bytes = b.encode(&mut buf).unwrap();
            assert!(bytes.len() <= MAX_ENCODED_LEN);
            assert_eq!(ProfileBatch::decode(bytes), Ok(b));
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        for batch in [sample(), full_batch(u64::MAX)] {
            let bytes = batch.encode(&mut buf).unwrap();
            for n in 0..bytes.len() {
                assert!(ProfileBatch::decode(&bytes[..n]).is_err(), "prefix {n}");
            }
        }
        assert_eq!(ProfileBatch::decode(&[]), Err(ProfileError::Truncated));
    }

    #[test]
    fn trailing_bytes_and_bad_reasons_are_errors() {
        let mut buf = [0u8; MAX_ENCODED_LEN + 1];
        let len = sample().encode(&mut buf).unwrap().len();
        assert_eq!(
            ProfileBatch::decode(&buf[..len + 1]),
            Err(ProfileError::TrailingBytes)
        );
        let mut bad = sample();
        bad.sites[1].reason = EXIT_COUNT as u8;
        let bytes = bad.encode(&mut buf).unwrap();
        assert_eq!(ProfileBatch::decode(bytes), Err(ProfileError::BadReason));
    }

    #[test]
    fn too_many_sites_is_malformed() {
        // Hand-encode a batch that claims 33 sites: all-zero fields are one byte each.
        let mut bytes = std::vec![0u8; 3 + REASONS];
        bytes.push(MAX_SITES as u8 + 1);
        bytes.extend(std::iter::repeat_n(0u8, 4 * (MAX_SITES + 1)));
        assert_eq!(ProfileBatch::decode(&bytes), Err(ProfileError::Malformed));
        // The same with 32 sites decodes.
        let mut ok = std::vec![0u8; 3 + REASONS];
        ok.push(MAX_SITES as u8);
        ok.extend(std::iter::repeat_n(0u8, 4 * MAX_SITES));
        assert_eq!(ProfileBatch::decode(&ok).unwrap().sites.len(), MAX_SITES);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let valid = full_batch(0x1234_5678_9abc)
            .encode(&mut buf)
            .unwrap()
            .to_vec();
        for round in 0..20_000 {
            let mut input = [0u8; MAX_ENCODED_LEN + 16];
            let len = (rng.next() as usize) % input.len();
            if round & 1 == 0 {
                // Pure noise, often with small leading values so that parsing gets far.
                for b in &mut input[..len] {
                    *b = rng.next() as u8 & if rng.next() & 3 == 0 { 0xff } else { 0x1f };
                }
            } else {
                // A valid encoding with a few bytes flipped.
                let len = len.min(valid.len());
                input[..len].copy_from_slice(&valid[..len]);
                for _ in 0..1 + rng.next() % 4 {
                    if len > 0 {
                        input[(rng.next() as usize) % len] = rng.next() as u8;
                    }
                }
            }
            if let Ok(batch) = ProfileBatch::decode(&input[..len]) {
                assert!(batch.sites.iter().all(|s| s.exit().is_some()));
                // Whatever decodes is a batch that fits the bound again.
                let mut out = [0u8; MAX_ENCODED_LEN];
                assert!(batch.encode(&mut out).is_ok());
            }
        }
    }

    #[test]
    fn words_round_trip() {
        let mut bytes = [0u8; MAX_ENCODED_LEN];
        let mut words = [0u64; MAX_WORDS];
        let mut back = [0u8; MAX_ENCODED_LEN];
        for batch in [ProfileBatch::new(1, 2), sample(), full_batch(u64::MAX)] {
            let encoded = batch.encode(&mut bytes).unwrap();
            let used = pack_words(encoded, &mut words).unwrap();
            assert_eq!(used, words_for(encoded.len()));
            let unpacked = unpack_words(&words[..used], &mut back).unwrap();
            assert_eq!(unpacked, encoded);
            assert_eq!(ProfileBatch::decode(unpacked), Ok(batch));
        }
        for len in 0..20usize {
            let data: std::vec::Vec<u8> = (1..=len as u8).collect();
            let used = pack_words(&data, &mut words).unwrap();
            assert_eq!(used, 1 + len.div_ceil(8));
            assert_eq!(unpack_words(&words[..used], &mut back).unwrap(), &data[..]);
            if len % 8 != 0 {
                // The last word is zero-padded.
                assert_eq!(words[used - 1] >> (8 * (len % 8)), 0);
            }
        }
        assert_eq!(MAX_WORDS, 152);
    }

    #[test]
    fn a_profile_exit_message_holds_its_sites() {
        use crate::vm::{PROFILE_SITES, PROFILE_WORDS};
        assert_eq!(PROFILE_SITES, 8);
        let mut bytes = [0u8; MAX_ENCODED_LEN];
        let mut batch = full_batch(u64::MAX);
        batch.sites.truncate(PROFILE_SITES);
        let encoded = batch.encode(&mut bytes).unwrap();
        let mut words = [0u64; crate::utcb::MSG_WORDS - PROFILE_WORDS];
        assert!(pack_words(encoded, &mut words).is_ok());
    }

    #[test]
    fn a_message_holds_max_sites_in_message() {
        assert_eq!(MAX_SITES_IN_MESSAGE, 9);
        let mut bytes = [0u8; MAX_ENCODED_LEN];
        let mut words = [0u64; crate::utcb::MSG_WORDS];
        let mut batch = full_batch(u64::MAX);
        batch.sites.truncate(MAX_SITES_IN_MESSAGE);
        let encoded = batch.encode(&mut bytes).unwrap();
        assert_eq!(encoded.len(), max_encoded_len(MAX_SITES_IN_MESSAGE));
        assert!(pack_words(encoded, &mut words).is_ok());
        batch = full_batch(u64::MAX);
        batch.sites.truncate(MAX_SITES_IN_MESSAGE + 1);
        let encoded = batch.encode(&mut bytes).unwrap();
        assert_eq!(
            pack_words(encoded, &mut words),
            Err(ProfileError::BufferTooSmall)
        );
    }

    #[test]
    fn words_reject_bad_lengths() {
        let mut back = [0u8; 64];
        assert_eq!(
            pack_words(&[1, 2, 3], &mut [0u64; 1]),
            Err(ProfileError::BufferTooSmall)
        );
        assert_eq!(pack_words(&[], &mut [9u64; 1]), Ok(1));
        assert_eq!(unpack_words(&[], &mut back), Err(ProfileError::BadLength));
        // Claims 9 bytes but carries one word.
        assert_eq!(
            unpack_words(&[9, 0], &mut back),
            Err(ProfileError::BadLength)
        );
        assert_eq!(
            unpack_words(&[u64::MAX, 0], &mut back),
            Err(ProfileError::BadLength)
        );
        // Larger than the buffer.
        assert_eq!(
            unpack_words(&[65; 10], &mut back),
            Err(ProfileError::BadLength)
        );
        assert_eq!(unpack_words(&[0], &mut back), Ok(&[][..]));
    }

    #[test]
    fn text_format() {
        let mut s = String::new();
        sample().write_text(&mut s).unwrap();
        assert_eq!(
            s,
            "profile: vm=7 seq=3 exits=1090 startup=0 recall=0 cpuid=40 io=150 rdmsr=0 wrmsr=0 \
             hlt=0 hypercall=0 memory-fault=900 shutdown=0 exception=0 interrupt-window=0 \
             entry-failure=0 other=0 page-fault=0 control-register=0 invlpg=0 \
             profile=0\n\
             profile:   #1 reason=memory-fault rip=0xffffffff81012345 count=900 error=0\n\
             profile:   #2 reason=io rip=0x7c1a count=150 error=2\n"
        );
        let mut bad = sample();
        bad.sites[0].reason = 200;
        let mut line = String::new();
        bad.write_site(&mut line, 0).unwrap();
        assert!(line.contains("reason=unknown "));
        line.clear();
        bad.write_site(&mut line, 5).unwrap();
        assert!(line.is_empty());
        let mut empty = String::new();
        ProfileBatch::new(1, 0).write_text(&mut empty).unwrap();
        assert_eq!(empty.lines().count(), 1);
    }
}
