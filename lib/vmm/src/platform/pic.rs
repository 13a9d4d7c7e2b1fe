//! The 8259A pair of a PC: master at ports `0x20/0x21`, slave at `0xa0/0xa1` cascaded on the
//! master's IR2, and the edge/level control registers (ELCR) at `0x4d0/0x4d1`.
//!
//! Modelled: ICW1-ICW4 initialisation (single mode, LTIM, auto-EOI, special fully nested mode),
//! the mask register, IRR/ISR reads and poll (OCW3), special mask mode, non-specific, specific
//! and rotating EOIs, priority rotation (OCW2), edge or level sensing per ELCR bit (or for all
//! lines with LTIM), and spurious IRQ 7/15 (the vector of IR7 with no ISR bit set). Not
//! modelled: the 8080 call-address mode (ICW4 bit 0 clear; vectors are always 8086-style), and
//! buffered mode (ICW4 bits 2-3, stored and ignored).
//!
//! As KVM does, the slave's INT output pulses the master's IR2 on every change of state while
//! the slave has a request to present, so a request the slave still holds after an EOI is seen
//! again by the master.
//!
//! No crate: rust-vmm's `vm-superio` has no interrupt controller.

/// The master's command and data ports.
pub const MASTER_COMMAND: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
/// The slave's command and data ports.
pub const SLAVE_COMMAND: u16 = 0xa0;
pub const SLAVE_DATA: u16 = 0xa1;
/// The ELCRs of the master (IRQ 0-7) and the slave (IRQ 8-15).
pub const ELCR_MASTER: u16 = 0x4d0;
pub const ELCR_SLAVE: u16 = 0x4d1;

/// The master input the slave is cascaded on.
const CASCADE_LINE: u8 = 2;
/// ELCR bits that exist: IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge-triggered.
const ELCR_MASK_MASTER: u8 = 0xf8;
const ELCR_MASK_SLAVE: u8 = 0xde;

const ICW1_INIT: u8 = 0x10;
const ICW1_LTIM: u8 = 0x08;
const ICW1_SINGLE: u8 = 0x02;
const ICW1_ICW4: u8 = 0x01;
const OCW3: u8 = 0x08;
const OCW3_POLL: u8 = 0x04;
const OCW3_READ_REG: u8 = 0x02;
const OCW3_READ_ISR: u8 = 0x01;
const OCW3_SPECIAL_MASK: u8 = 0x40;
const OCW3_SMM_SET: u8 = 0x20;
const ICW4_AUTO_EOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;

/// Where an initialisation sequence stands: which ICW the data port takes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// The input levels last seen, for edge detection.
    lines: u8,
    elcr: u8,
    elcr_mask: u8,
    vector_base: u8,
    /// The input with the highest priority is `lowest_priority + 1` (mod 8); 7 after reset.
    lowest_priority: u8,
    init: Init,
    needs_icw4: bool,
    single: bool,
    level_all: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
    icw3: u8,
    icw4: u8,
}

impl Chip {
    const fn new(elcr_mask: u8) -> Chip {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            elcr_mask,
            vector_base: 0,
            lowest_priority: 7,
            init: Init::Ready,
            needs_icw4: false,
            single: false,
            level_all: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            special_mask: false,
            read_isr: false,
            poll: false,
            icw3: 0,
            icw4: 0,
        }
    }

    fn level_triggered(&self) -> u8 {
        if self.level_all {
            0xff
        } else {
            self.elcr
        }
    }

    fn set_line(&mut self, line: u8, level: bool) {
        let bit = 1u8 << (line & 7);
        if self.level_triggered() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.lines & bit == 0 {
            self.irr |= bit;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// The input of the highest priority among `bits`, as a priority rank (0 = highest).
    fn highest_rank(&self, bits: u8) -> Option<u8> {
        (0..8).find(|rank| bits & (1 << self.input_of_rank(*rank)) != 0)
    }

    fn input_of_rank(&self, rank: u8) -> u8 {
        (rank + self.lowest_priority + 1) & 7
    }

    /// The input the chip would present to the CPU now, if any: the highest-priority unmasked
    /// request above every in-service level (all of them outside special mask mode).
    fn presented(&self, is_master: bool) -> Option<u8> {
        let request = self.highest_rank(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.special_fully_nested {
            // The slave may interrupt its own in-service request.
            in_service &= !(1 << CASCADE_LINE);
        }
        match self.highest_rank(in_service) {
            Some(busy) if busy <= request => None,
            _ => Some(self.input_of_rank(request)),
        }
    }

    /// The INTA cycle for `input`: in service (unless auto-EOI), and an edge request is consumed.
    fn acknowledge(&mut self, input: u8) {
        let bit = 1u8 << input;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.lowest_priority = input;
            }
        } else {
            self.isr |= bit;
        }
        if self.level_triggered() & bit == 0 {
            self.irr &= !bit;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_INIT != 0 {
            self.needs_icw4 = value & ICW1_ICW4 != 0;
            self.single = value & ICW1_SINGLE != 0;
            self.level_all = value & ICW1_LTIM != 0;
            // The edge detectors restart: only level requests still being driven remain.
            self.irr &= self.lines & self.level_triggered();
            self.isr = 0;
            self.imr = 0;
            self.lowest_priority = 7;
            self.special_mask = false;
            self.read_isr = false;
            self.poll = false;
            if !self.needs_icw4 {
                self.auto_eoi = false;
                self.special_fully_nested = false;
                self.icw4 = 0;
            }
            self.init = Init::Icw2;
        } else if value & OCW3 != 0 {
            self.poll = value & OCW3_POLL != 0;
            if value & OCW3_READ_REG != 0 {
                self.read_isr = value & OCW3_READ_ISR != 0;
            }
            if value & OCW3_SPECIAL_MASK != 0 {
                self.special_mask = value & OCW3_SMM_SET != 0;
            }
        } else {
            self.write_ocw2(value);
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Rotate in auto-EOI mode: clear (0) or set (4).
            0 | 4 => self.rotate_on_auto_eoi = value & 0x80 != 0,
            // Non-specific EOI (1) and rotate on non-specific EOI (5).
            1 | 5 => {
                if let Some(rank) = self.highest_rank(self.isr) {
                    let input = self.input_of_rank(rank);
                    self.isr &= !(1 << input);
                    if value >> 5 == 5 {
                        self.lowest_priority = input;
                    }
                }
            }
            // Specific EOI.
            3 => self.isr &= !(1 << level),
            // Set priority: `level` becomes the lowest.
            6 => self.lowest_priority = level,
            // Rotate on specific EOI.
            7 => {
                self.isr &= !(1 << level);
                self.lowest_priority = level;
            }
            // No operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init {
            Init::Ready => self.imr = value,
            Init::Icw2 => {
                self.vector_base = value & 0xf8;
                self.init = if !self.single {
                    Init::Icw3
                } else if self.needs_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw3 => {
                self.icw3 = value;
                self.init = if self.needs_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw4 => {
                self.icw4 = value;
                self.auto_eoi = value & ICW4_AUTO_EOI != 0;
                self.special_fully_nested = value & ICW4_SFNM != 0;
                self.init = Init::Ready;
            }
        }
    }

    fn read_command(&self) -> u8 {
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// The two 8259As and their ELCRs.
#[derive(Clone, Debug)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Pic::new()
    }
}

impl Pic {
    /// Both chips after power-on: uninitialised (vector base 0), nothing masked, all lines
    /// edge-triggered. Firmware or the guest kernel programs them with ICW1-ICW4.
    pub const fn new() -> Pic {
        Pic {
            master: Chip::new(ELCR_MASK_MASTER),
            slave: Chip::new(ELCR_MASK_SLAVE),
        }
    }

    /// Drives ISA interrupt line `irq` (0-15) to `level`. IRQ 2 is the cascade and has no
    /// device: it is ignored, as are lines past 15.
    pub fn set_line(&mut self, irq: u8, level: bool) {
        match irq {
            0..=1 | 3..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// The INTR line to the CPU.
    pub fn output_level(&self) -> bool {
        self.master.presented(true).is_some()
    }

    /// The vector [`Pic::acknowledge`] would return now, or None when INTR is low.
    pub fn pending_vector(&self) -> Option<u8> {
        let input = self.master.presented(true)?;
        Some(self.vector_of(input))
    }

    fn vector_of(&self, master_input: u8) -> u8 {
        if master_input == CASCADE_LINE && !self.master.single {
            let slave_input = self.slave.presented(false).unwrap_or(7);
            self.slave.vector_base | slave_input
        } else {
            self.master.vector_base | master_input
        }
    }

    /// The INTA cycle: moves the presented request from IRR to ISR and returns its vector. With
    /// nothing presented (the request went away), or a cascade request the slave no longer has,
    /// the answer is the spurious vector of IR7 (IRQ 7 or 15) with no ISR bit set, as on the
    /// real pair.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.presented(true) {
            Some(input) => {
                let vector = self.vector_of(input);
                self.master.acknowledge(input);
                if input == CASCADE_LINE && !self.master.single {
                    if let Some(slave_input) = self.slave.presented(false) {
                        self.slave.acknowledge(slave_input);
                    }
                }
                vector
            }
            None => self.master.vector_base | 7,
        };
        self.update_cascade();
        vector
    }

    /// The slave's INT output pulses the master's IR2 while the slave presents a request.
    fn update_cascade(&mut self) {
        if self.master.single {
            return;
        }
        let slave_requests = self.slave.presented(false).is_some();
        self.master.set_line(CASCADE_LINE, false);
        if slave_requests {
            self.master.set_line(CASCADE_LINE, true);
        }
    }

    /// Port read of `size` bytes (wider accesses read consecutive ports, as on the ISA bus).
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        super::isa_read(port, size, |p| self.read_byte(p))
    }

    /// Port write of `size` bytes (wider accesses write consecutive ports).
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        super::isa_write(port, size, value, |p, b| self.write_byte(p, b));
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            MASTER_COMMAND if self.master.poll => self.poll(true),
            SLAVE_COMMAND if self.slave.poll => self.poll(false),
            MASTER_COMMAND => self.master.read_command(),
            SLAVE_COMMAND => self.slave.read_command(),
            MASTER_DATA => self.master.imr,
            SLAVE_DATA => self.slave.imr,
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        match port {
            MASTER_COMMAND => self.master.write_command(value),
            SLAVE_COMMAND => self.slave.write_command(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.elcr = value & self.master.elcr_mask,
            ELCR_SLAVE => self.slave.elcr = value & self.slave.elcr_mask,
            _ => return,
        }
        self.update_cascade();
    }

    /// A read after the poll command: acknowledges the highest request of that chip and
    /// returns `0x80 | input`, or 0 with none.
    fn poll(&mut self, master: bool) -> u8 {
        let chip = if master {
            &mut self.master
        } else {
            &mut self.slave
        };
        chip.poll = false;
        let answer = match chip.presented(master) {
            Some(input) => {
                chip.acknowledge(input);
                0x80 | input
            }
            None => 0,
        };
        if !master && answer != 0 {
            // The slave's request was taken without the master's INTA cycle.
            self.master.irr &= !(1 << CASCADE_LINE);
        }
        self.update_cascade();
        answer
    }
}

/// Bytes in an access of `size` (1, 2 or 4; anything else counts as 4).
#[cfg(test)]
#[path = "pic_tests.rs"]
mod tests;
