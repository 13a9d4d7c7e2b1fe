//! The I/O APIC (an 82093AA as QEMU presents it: version 0x20, 24 pins) in the MMIO page at
//! [`BASE`]: the register select at offset 0x00, the data window at 0x10 and the EOI register at
//! 0x40; the page decodes its low 8 address bits only, as QEMU and KVM do.
//!
//! A pin's level (`set_line`) is its *asserted* state: like QEMU and KVM, the model does not
//! invert active-low pins (the polarity bit is stored and read back), since the device models
//! report assertion. An edge-triggered pin delivers on each assertion while unmasked (an edge
//! while masked is lost, as on the part); a level-triggered pin delivers while asserted and
//! unmasked unless its remote IRR is set, which it sets until the local APIC's EOI for its
//! vector ([`Ioapic::end_of_interrupt`], or a write of the vector to the EOI register).
//!
//! **Deliveries are queued**, one per pin (a second one before the first is taken replaces it,
//! as the local APIC's IRR would merge them): after each call that may deliver (`set_line`, an
//! MMIO write, `end_of_interrupt`), the VMM takes them with [`Ioapic::pop_delivery`] and hands
//! each to the local APIC(s) it addresses. The delivery status bit always reads 0: a delivery
//! is accepted at once.
//!
//! No crate: rust-vmm's `vm-superio` has no interrupt controller.

/// The page's guest-physical address.
pub const BASE: u64 = 0xfec0_0000;
/// Redirection table entries (pins).
pub const PINS: usize = 24;
/// The version register: 24 entries (max index 23) and version 0x20, which has the EOI register.
pub const VERSION: u32 = (PINS as u32 - 1) << 16 | 0x20;

/// Offsets in the page (modulo 0x100).
pub mod offset {
    pub const SELECT: u64 = 0x00;
    pub const WINDOW: u64 = 0x10;
    pub const EOI: u64 = 0x40;
}

/// Indirect registers, chosen through the select register.
pub mod reg {
    pub const ID: u8 = 0x00;
    pub const VERSION: u8 = 0x01;
    pub const ARBITRATION: u8 = 0x02;
    /// Entry `n`'s low half is at `REDIRECTION + 2n`, its high half at `REDIRECTION + 2n + 1`.
    pub const REDIRECTION: u8 = 0x10;
}

/// Redirection entry bits.
pub mod entry {
    pub const VECTOR: u64 = 0xff;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const ACTIVE_LOW: u64 = 1 << 13;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DESTINATION_SHIFT: u32 = 56;
    /// Bits the guest cannot write.
    pub const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
}

/// How the local APIC takes a delivery (entry bits 8-10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    /// The vector comes from the 8259A's INTA cycle, not from the entry.
    ExtInt,
    /// Modes 3 and 6.
    Reserved(u8),
}

impl DeliveryMode {
    fn from_bits(bits: u8) -> DeliveryMode {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            other => DeliveryMode::Reserved(other),
        }
    }
}

/// One interrupt message for the local APIC(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub pin: u8,
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Level-triggered: the local APIC must broadcast its EOI back (`end_of_interrupt`).
    pub level_triggered: bool,
    /// `destination` is a logical (xAPIC) mask rather than a physical APIC ID.
    pub logical: bool,
    pub destination: u8,
}

/// The I/O APIC.
#[derive(Clone, Debug)]
pub struct Ioapic {
    id: u8,
    select: u8,
    entries: [u64; PINS],
    /// Pins asserted, one bit each.
    asserted: u32,
    queued: [Option<Delivery>; PINS],
}

impl Default for Ioapic {
    fn default() -> Self {
        Ioapic::new()
    }
}

impl Ioapic {
    /// The I/O APIC after reset: ID 0 (QEMU's, as the MADT gives it), every entry masked and 0.
    pub const fn new() -> Ioapic {
        Ioapic {
            id: 0,
            select: 0,
            entries: [entry::MASKED; PINS],
            asserted: 0,
            queued: [None; PINS],
        }
    }

    /// The redirection entry of `pin` (for inspection); None past the last pin.
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.entries.get(usize::from(pin)).copied()
    }

    /// Drives `pin` to `asserted`; pins past 23 are ignored.
    pub fn set_line(&mut self, pin: u8, asserted: bool) {
        let Some(&entry) = self.entries.get(usize::from(pin)) else {
            return;
        };
        let bit = 1u32 << pin;
        let was_asserted = self.asserted & bit != 0;
        if asserted {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }
        if entry & entry::LEVEL == 0 {
            if asserted && !was_asserted && entry & entry::MASKED == 0 {
                self.deliver(pin);
            }
        } else {
            self.service_level(pin);
        }
    }

    /// The local APIC's EOI broadcast for `vector`: every level-triggered entry with that vector
    /// and its remote IRR set is released, and delivers again if its pin is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..PINS as u8 {
            let entry = &mut self.entries[usize::from(pin)];
            if *entry & entry::VECTOR == u64::from(vector) && *entry & entry::REMOTE_IRR != 0 {
                *entry &= !entry::REMOTE_IRR;
                self.service_level(pin);
            }
        }
    }

    /// The next queued delivery, lowest pin first.
    pub fn pop_delivery(&mut self) -> Option<Delivery> {
        self.queued.iter_mut().find_map(Option::take)
    }

    /// Delivers a level-triggered `pin` if it is asserted, unmasked and not awaiting an EOI.
    fn service_level(&mut self, pin: u8) {
        let entry = self.entries[usize::from(pin)];
        let asserted = self.asserted & (1 << pin) != 0;
        if entry & entry::LEVEL != 0 && asserted && entry & (entry::MASKED | entry::REMOTE_IRR) == 0
        {
            self.deliver(pin);
        }
    }

    fn deliver(&mut self, pin: u8) {
        let entry = &mut self.entries[usize::from(pin)];
        let level_triggered = *entry & entry::LEVEL != 0;
        if level_triggered {
            *entry |= entry::REMOTE_IRR;
        }
        self.queued[usize::from(pin)] = Some(Delivery {
            pin,
            vector: (*entry & entry::VECTOR) as u8,
            mode: DeliveryMode::from_bits((*entry >> entry::DELIVERY_MODE_SHIFT) as u8),
            level_triggered,
            logical: *entry & entry::LOGICAL != 0,
            destination: (*entry >> entry::DESTINATION_SHIFT) as u8,
        });
    }

    /// The indirect register `index`; all-ones for one that does not exist.
    fn register(&self, index: u8) -> u32 {
        match index {
            reg::ID | reg::ARBITRATION => u32::from(self.id) << 24,
            reg::VERSION => VERSION,
            _ => match redirection_slot(index) {
                Some((pin, high)) => {
                    let entry = self.entries[pin];
                    if high {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                None => u32::MAX,
            },
        }
    }

    fn set_register(&mut self, index: u8, value: u32) {
        if index == reg::ID {
            self.id = ((value >> 24) & 0xf) as u8;
            return;
        }
        let Some((pin, high)) = redirection_slot(index) else {
            return;
        };
        let entry = &mut self.entries[pin];
        if high {
            *entry = (*entry & 0xffff_ffff) | u64::from(value) << 32;
            return;
        }
        let keep = 0xffff_ffff_0000_0000 | entry::READ_ONLY;
        *entry = (*entry & keep) | (u64::from(value) & !keep);
        if *entry & entry::LEVEL == 0 {
            // An edge-triggered entry has no EOI to wait for (QEMU and KVM clear it too).
            *entry &= !entry::REMOTE_IRR;
        }
        // Unmasking (or reprogramming) an asserted level pin delivers it.
        self.service_level(pin as u8);
    }

    /// MMIO read of `size` bytes (1, 2, 4 or 8) at `offset` in the page.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        let window = self.register(self.select);
        let mut value = 0u64;
        for i in 0..access_bytes(size) {
            let at = offset.wrapping_add(i) & 0xff;
            let byte = match at {
                0x00..=0x03 => (u32::from(self.select) >> (8 * at)) as u8,
                0x10..=0x13 => (window >> (8 * (at - 0x10))) as u8,
                _ => 0xff,
            };
            value |= u64::from(byte) << (8 * i);
        }
        value
    }

    /// MMIO write of `size` bytes (1, 2, 4 or 8) at `offset` in the page. Bytes of a register
    /// the access covers replace those bytes; the register then takes the merged value once.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) {
        let mut select = u32::from(self.select);
        let mut window = self.register(self.select);
        let (mut select_written, mut window_written) = (false, false);
        let mut eoi_vector = None;
        for i in 0..access_bytes(size) {
            let at = offset.wrapping_add(i) & 0xff;
            let byte = (value >> (8 * i)) as u8;
            match at {
                0x00..=0x03 => {
                    set_byte(&mut select, at, byte);
                    select_written = true;
                }
                0x10..=0x13 => {
                    set_byte(&mut window, at - 0x10, byte);
                    window_written = true;
                }
                offset::EOI => eoi_vector = Some(byte),
                _ => {}
            }
        }
        if select_written {
            self.select = select as u8;
        }
        if window_written {
            self.set_register(self.select, window);
        }
        if let Some(vector) = eoi_vector {
            self.end_of_interrupt(vector);
        }
    }
}

/// The pin and half (high = bits 63:32) of a redirection register index.
fn redirection_slot(index: u8) -> Option<(usize, bool)> {
    let slot = usize::from(index.checked_sub(reg::REDIRECTION)?);
    (slot < 2 * PINS).then_some((slot / 2, slot % 2 == 1))
}

fn set_byte(register: &mut u32, byte_index: u64, byte: u8) {
    let shift = 8 * byte_index;
    *register = (*register & !(0xff << shift)) | u32::from(byte) << shift;
}

/// Bytes in an access of `size` (1, 2, 4 or 8; anything else counts as 8).
fn access_bytes(size: u8) -> u64 {
    match size {
        1 | 2 | 4 => u64::from(size),
        _ => 8,
    }
}

#[cfg(test)]
#[path = "ioapic_tests.rs"]
mod tests;
