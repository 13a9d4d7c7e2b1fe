//! Memory-map normalisation: from the loader's list of regions to the RAM the kernel may use.
//!
//! Loader memory maps overlap, are unsorted, unaligned and sometimes contradict themselves. The
//! rule here is conservative: a byte is usable only if some region says `Usable` and no other
//! region says anything else, and a page is usable only if all of its bytes are.

use core::fmt;

use bootinfo::{MemoryRegion, RegionKind};

/// The size of a small page and of a physical frame: the hardware's, which this page-table
/// library defines itself (it sits below the kernel/user ABI and does not depend on `abi`); a
/// test checks that it equals `abi::PAGE_SIZE`.
pub const PAGE_SIZE: u64 = 4096;
/// Most usable ranges [`usable_ranges`] returns.
pub const MAX_USABLE: usize = 128;
/// Most ranges held while normalising; more than the result may hold, since ranges split and
/// vanish on the way.
const MAX_WORK: usize = 2 * MAX_USABLE;

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    /// `[start, start + len)`, or `None` if that passes the end of the 64-bit address space.
    pub const fn new(start: u64, len: u64) -> Option<Self> {
        match start.checked_add(len) {
            Some(end) => Some(Self { start, end }),
            None => None,
        }
    }

    /// `[start, end)`, or `None` if `end < start`.
    pub const fn from_bounds(start: u64, end: u64) -> Option<Self> {
        if start <= end {
            Some(Self { start, end })
        } else {
            None
        }
    }

    /// Length in bytes (0 for a malformed range with `end < start`).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    /// Whether `addr` lies in the range.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether every byte of `other` lies in the range (an empty `other` always does).
    pub const fn contains_range(&self, other: &PhysRange) -> bool {
        other.is_empty() || (self.start <= other.start && other.end <= self.end)
    }

    /// The whole pages inside the range: start rounded up, end rounded down to [`PAGE_SIZE`].
    /// Empty if no whole page fits.
    pub const fn page_inner(&self) -> PhysRange {
        let start = match align_up(self.start, PAGE_SIZE) {
            Some(start) => start,
            None => return PhysRange { start: 0, end: 0 },
        };
        let end = align_down(self.end, PAGE_SIZE);
        if start < end {
            PhysRange { start, end }
        } else {
            PhysRange { start: 0, end: 0 }
        }
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub(crate) const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Why a memory map or module list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No whole usable page is left.
    NoUsableMemory,
    /// The usable memory is split into more than [`MAX_USABLE`] pieces.
    TooManyRanges,
    /// Module `module` overlaps the kernel image.
    ModuleOverlapsKernel { module: usize },
    /// Modules `a` and `b` overlap.
    ModuleOverlapsModule { a: usize, b: usize },
    /// A usable region runs past the end of the 64-bit address space.
    RangeOverflow,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoUsableMemory => f.write_str("no usable memory left"),
            Self::TooManyRanges => write!(
                f,
                "usable memory is split into more than {MAX_USABLE} ranges"
            ),
            Self::ModuleOverlapsKernel { module } => {
                write!(f, "module {module} overlaps the kernel image")
            }
            Self::ModuleOverlapsModule { a, b } => write!(f, "modules {a} and {b} overlap"),
            Self::RangeOverflow => {
                f.write_str("a usable region runs past the 64-bit address space")
            }
        }
    }
}

/// Usable physical memory after normalisation: sorted, disjoint, non-adjacent-merged, each range page-aligned (start rounded up, end rounded down), empty ranges dropped, anything a non-usable region overlaps removed (reserved wins over usable), every `exclude` range removed (kernel image, modules, boot info, the first 1 MiB, …).
///
/// Only [`RegionKind::Usable`] counts as usable; `BootloaderReclaimable` and `KernelAndModules`
/// do not (the kernel frees those itself once it no longer needs them). A usable region whose
/// end passes 2^64 is corrupt and gives [`MapError::RangeOverflow`]; a non-usable one is cut at
/// 2^64 - 1, which only removes more.
pub fn usable_ranges(
    regions: &[MemoryRegion],
    exclude: &[PhysRange],
) -> Result<heapless::Vec<PhysRange, MAX_USABLE>, MapError> {
    let mut set = RangeSet::new();
    for r in regions.iter().filter(|r| r.kind == RegionKind::Usable) {
        set.insert(PhysRange::new(r.start, r.len).ok_or(MapError::RangeOverflow)?)?;
    }
    for r in regions.iter().filter(|r| r.kind != RegionKind::Usable) {
        set.remove(PhysRange {
            start: r.start,
            end: r.start.saturating_add(r.len),
        })?;
    }
    for &r in exclude {
        set.remove(r)?;
    }

    // Merged ranges are separated by gaps; rounding inward only widens them, so the result
    // stays sorted, disjoint and non-adjacent.
    let mut out = heapless::Vec::new();
    for r in set.ranges.iter().map(PhysRange::page_inner) {
        if !r.is_empty() {
            out.push(r).map_err(|_| MapError::TooManyRanges)?;
        }
    }
    if out.is_empty() {
        return Err(MapError::NoUsableMemory);
    }
    Ok(out)
}

/// Checks that no module overlaps the kernel image or another module.
///
/// Overlaps with the kernel are reported first. Empty modules overlap nothing.
pub fn check_modules(kernel: PhysRange, modules: &[PhysRange]) -> Result<(), MapError> {
    if let Some(i) = modules.iter().position(|m| m.overlaps(&kernel)) {
        return Err(MapError::ModuleOverlapsKernel { module: i });
    }
    for (i, m) in modules.iter().enumerate() {
        for (j, other) in modules.iter().enumerate().skip(i + 1) {
            if m.overlaps(other) {
                return Err(MapError::ModuleOverlapsModule { a: i, b: j });
            }
        }
    }
    Ok(())
}

/// A set of bytes kept as sorted, disjoint, non-adjacent ranges.
struct RangeSet {
    ranges: heapless::Vec<PhysRange, MAX_WORK>,
}

impl RangeSet {
    const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
        }
    }

    /// Adds `r`, merging it with every range it overlaps or touches.
    fn insert(&mut self, r: PhysRange) -> Result<(), MapError> {
        if r.is_empty() {
            return Ok(());
        }
        let mut merged = r;
        self.ranges.retain(|e| {
            let touches = e.start <= merged.end && merged.start <= e.end;
            if touches {
                merged.start = merged.start.min(e.start);
                merged.end = merged.end.max(e.end);
            }
            !touches
        });
        let at = self
            .ranges
            .iter()
            .position(|e| e.start > merged.start)
            .unwrap_or(self.ranges.len());
        self.ranges
            .insert(at, merged)
            .map_err(|_| MapError::TooManyRanges)
    }

    /// Removes every byte of `r`, splitting a range that `r` cuts in two.
    fn remove(&mut self, r: PhysRange) -> Result<(), MapError> {
        if r.is_empty() {
            return Ok(());
        }
        let mut out = heapless::Vec::<PhysRange, MAX_WORK>::new();
        for e in &self.ranges {
            if !e.overlaps(&r) {
                out.push(*e).map_err(|_| MapError::TooManyRanges)?;
                continue;
            }
            if e.start < r.start {
                out.push(PhysRange {
                    start: e.start,
                    end: r.start,
                })
                .map_err(|_| MapError::TooManyRanges)?;
            }
            if r.end < e.end {
                out.push(PhysRange {
                    start: r.end,
                    end: e.end,
                })
                .map_err(|_| MapError::TooManyRanges)?;
            }
        }
        self.ranges = out;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
