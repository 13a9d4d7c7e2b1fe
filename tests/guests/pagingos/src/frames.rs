//! The physical frame allocator: 4 KiB frames from the available regions of the Multiboot 2
//! memory map above the guest's own image, handed out by a bump pointer and recycled through a
//! LIFO free list threaded through the free frames themselves; and a reference count per frame
//! (how many page-table entries map it, plus one for a frame the kernel keeps).
//!
//! Every frame is reached through the kernel's identity map (physical = virtual), so the
//! allocation order, and with it everything this guest computes, depends only on the memory map.

use crate::arch::Global;

pub const PAGE: u64 = 4096;
/// Frames above this address are not used (the kernel identity-maps at most 1 GiB).
pub const MAX_PHYS: u64 = 1 << 30;
const MAX_FRAMES: usize = (MAX_PHYS / PAGE) as usize;
const MAX_REGIONS: usize = 16;

/// Reference counts, one per frame below [`MAX_PHYS`] (in .bss: 512 KiB).
static REFS: Global<[u16; MAX_FRAMES]> = Global::new([0; MAX_FRAMES]);

pub struct Frames {
    regions: [(u64, u64); MAX_REGIONS],
    count: usize,
    /// The region the bump pointer is in, and the pointer.
    region: usize,
    bump: u64,
    /// The first free frame of the free list (0: empty); each free frame's first word holds the
    /// next.
    free_list: u64,
    free: u64,
    refs: &'static mut [u16; MAX_FRAMES],
}

impl Frames {
    /// The allocator over the available regions of `boot`'s memory map, clipped to
    /// `[floor, MAX_PHYS)` and to whole pages.
    pub fn new(boot: &grt::Boot, floor: u64) -> Frames {
        let mut regions = [(0, 0); MAX_REGIONS];
        let mut count = 0;
        let mut free = 0;
        boot.for_each_region(|r| {
            if r.kind != grt::Region::AVAILABLE || count == MAX_REGIONS {
                return;
            }
            let start = r.base.max(floor).next_multiple_of(PAGE);
            let end = r.end().min(MAX_PHYS) & !(PAGE - 1);
            if start < end {
                regions[count] = (start, end);
                count += 1;
                free += (end - start) / PAGE;
            }
        });
        // The map is sorted by address as the VMM gives it; sort anyway (a handful of entries).
        regions[..count].sort_unstable();
        // SAFETY: `Frames::new` is called once; this is the only reference to the counts.
        let refs = unsafe { &mut *REFS.get() };
        Frames {
            regions,
            count,
            region: 0,
            bump: if count > 0 { regions[0].0 } else { 0 },
            free_list: 0,
            free,
            refs,
        }
    }

    /// Free frames.
    pub fn free(&self) -> u64 {
        self.free
    }

    /// A frame with undefined contents and reference count 0; panics when memory is exhausted.
    pub fn alloc(&mut self) -> u64 {
        let frame = if self.free_list != 0 {
            let frame = self.free_list;
            // SAFETY: a free frame is identity-mapped RAM owned by the allocator; its first
            // word links the list.
            self.free_list = unsafe { (frame as *const u64).read() };
            frame
        } else {
            loop {
                if self.region == self.count {
                    panic!("out of physical memory");
                }
                let (_, end) = self.regions[self.region];
                if self.bump < end {
                    let frame = self.bump;
                    self.bump += PAGE;
                    break frame;
                }
                self.region += 1;
                if self.region < self.count {
                    self.bump = self.regions[self.region].0;
                }
            }
        };
        self.free -= 1;
        self.refs[index(frame)] = 0;
        frame
    }

    /// A zero-filled frame with reference count 0.
    pub fn alloc_zeroed(&mut self) -> u64 {
        let frame = self.alloc();
        // SAFETY: the frame was just allocated: identity-mapped RAM that nothing else uses.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, PAGE as usize) };
        frame
    }

    /// Returns a frame to the free list (its reference count must be 0).
    pub fn release(&mut self, frame: u64) {
        assert_eq!(self.refs[index(frame)], 0, "freeing a referenced frame");
        // SAFETY: the frame is no longer used by anyone; it becomes the list's head.
        unsafe { (frame as *mut u64).write(self.free_list) };
        self.free_list = frame;
        self.free += 1;
    }

    /// The reference count of `frame`.
    pub fn refs(&self, frame: u64) -> u16 {
        self.refs[index(frame)]
    }

    /// Takes one more reference to `frame`.
    pub fn get(&mut self, frame: u64) {
        let r = &mut self.refs[index(frame)];
        *r = r.checked_add(1).expect("frame reference count overflow");
    }

    /// Drops one reference to `frame`; frees it when that was the last.
    pub fn put(&mut self, frame: u64) {
        let r = &mut self.refs[index(frame)];
        *r = r.checked_sub(1).expect("frame reference count underflow");
        if *r == 0 {
            self.release(frame);
        }
    }
}

fn index(frame: u64) -> usize {
    debug_assert!(frame.is_multiple_of(PAGE) && frame < MAX_PHYS);
    (frame / PAGE) as usize
}
