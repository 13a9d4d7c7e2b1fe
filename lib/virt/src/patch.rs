//! The rules of the `VmPatch` operation (issue #6): a compare-and-swap of at most
//! [`MAX_PATCH`] guest bytes inside one 4 KiB page, refused while a vCPU's RIP points into the
//! middle of the range (it would resume in the middle of the new bytes).
//!
//! The kernel reads and writes the bytes; this module decides. A patch is an exact byte
//! comparison, so a racing change by the guest (or another patcher) makes it fail rather than
//! overwrite what it did not expect.

/// Most bytes one patch changes (a 5-byte jump plus the instructions it displaces fit easily).
pub const MAX_PATCH: usize = 64;
use abi::PAGE_SIZE as PAGE;

/// Why a patch is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// Empty, longer than [`MAX_PATCH`], or expected and new lengths differ.
    BadLength,
    /// The range crosses a 4 KiB page boundary (or wraps the address space).
    CrossesPage,
    /// A vCPU's next instruction starts strictly inside the range.
    VcpuInside,
    /// The guest's bytes are not the expected ones.
    Mismatch,
}

/// Checks the shape of a patch of `len` bytes at `address` against the vCPUs' RIPs (addresses
/// in the same space as `address`: linear for a virtual patch).
pub fn check(address: u64, len: usize, rips: &[u64]) -> Result<(), PatchError> {
    if len == 0 || len > MAX_PATCH {
        return Err(PatchError::BadLength);
    }
    let last = address
        .checked_add(len as u64 - 1)
        .ok_or(PatchError::CrossesPage)?;
    if address / PAGE != last / PAGE {
        return Err(PatchError::CrossesPage);
    }
    if rips.iter().any(|&rip| rip > address && rip <= last) {
        return Err(PatchError::VcpuInside);
    }
    Ok(())
}

/// Replaces `current` by `new` if it equals `expected` (all three the same length).
pub fn swap(current: &mut [u8], expected: &[u8], new: &[u8]) -> Result<(), PatchError> {
    if current.len() != expected.len() || expected.len() != new.len() {
        return Err(PatchError::BadLength);
    }
    if current != expected {
        return Err(PatchError::Mismatch);
    }
    current.copy_from_slice(new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_pages() {
        assert_eq!(check(0x1000, 5, &[]), Ok(()));
        assert_eq!(check(0x1000, 0, &[]), Err(PatchError::BadLength));
        assert_eq!(
            check(0x1000, MAX_PATCH + 1, &[]),
            Err(PatchError::BadLength)
        );
        assert_eq!(check(0x1ffc, 4, &[]), Ok(()));
        assert_eq!(check(0x1ffc, 5, &[]), Err(PatchError::CrossesPage));
        assert_eq!(check(u64::MAX - 1, 4, &[]), Err(PatchError::CrossesPage));
        assert_eq!(check(u64::MAX - 3, 4, &[]), Ok(()));
    }

    #[test]
    fn vcpus_inside_the_range_refuse_it() {
        // At the first byte is fine (the new instruction starts there); past the end too.
        assert_eq!(check(0x1000, 5, &[0x1000, 0x1005, 0x0fff]), Ok(()));
        for rip in 0x1001..0x1005 {
            assert_eq!(
                check(0x1000, 5, &[0x2000, rip]),
                Err(PatchError::VcpuInside)
            );
        }
    }

    #[test]
    fn compare_and_swap() {
        let mut bytes = [0x0f, 0x20, 0xd8, 0x90];
        assert_eq!(
            swap(&mut bytes, &[0x0f, 0x20, 0xd8, 0x91], &[1, 2, 3, 4]),
            Err(PatchError::Mismatch)
        );
        assert_eq!(bytes, [0x0f, 0x20, 0xd8, 0x90]);
        assert_eq!(
            swap(&mut bytes, &[0x0f, 0x20, 0xd8, 0x90], &[0xe9, 1, 2, 3]),
            Ok(())
        );
        assert_eq!(bytes, [0xe9, 1, 2, 3]);
        assert_eq!(
            swap(&mut bytes, &[0xe9, 1, 2], &[0, 0, 0]),
            Err(PatchError::BadLength)
        );
    }
}
