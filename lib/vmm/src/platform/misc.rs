//! The small PC ports a kernel touches on its way up or down: the reset control register
//! (`0xcf9`), the i8042 keyboard controller (`0x60`/`0x64`: enough for Linux's probe and the
//! reset pulse; no keyboard or mouse is attached), PCI configuration mechanism #1 answering
//! "no device" (`0xcf8`, `0xcfc..=0xcff`) and the POST code port (`0x80`).
//!
//! Models that end the guest's run return an [`Event`] from their `write`; the vmm-server acts on
//! it (a reset restarts the guest, a power-off ends it).

/// What a guest asked of the machine through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Reset the machine (reset control register, i8042 reset pulse, ACPI reset register).
    Reset,
    /// Power off (ACPI sleep state S5).
    PowerOff,
}

/// All-ones of an access of `size` bytes (anything but 1 or 2 is taken as 4).
pub fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// The reset control register's port (PIIX/ICH), also the FADT's reset register.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// The POST code port: firmware and some kernels write progress codes (and delays) to it.
pub const POST_PORT: u16 = 0x80;
/// PCI configuration mechanism #1: address register and data window.
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
pub const PCI_CONFIG_DATA: u16 = 0xcfc;

/// Reset control register bits (PIIX3 RCR).
const RCR_SYS_RST: u8 = 1 << 1;
const RCR_RST_CPU: u8 = 1 << 2;
const RCR_FULL_RST: u8 = 1 << 3;

/// Port `0xcf9`, PCI configuration mechanism #1 and the POST port: the chipset's ports.
///
/// `0xcf8` is the configuration address register for 4-byte accesses only; byte accesses to
/// `0xcf9` reach the reset control register, as on PIIX/ICH (other 1- and 2-byte accesses to
/// `0xcf8..=0xcfb` reach nothing). Every configuration read returns all-ones: no device answers.
#[derive(Clone, Debug, Default)]
pub struct Chipset {
    pci_address: u32,
    reset_control: u8,
    post_code: u8,
}

impl Chipset {
    pub fn new() -> Chipset {
        Chipset::default()
    }

    /// Whether this model answers `port`.
    pub fn claims(port: u16) -> bool {
        matches!(port, POST_PORT | PCI_CONFIG_ADDRESS..=0xcff)
    }

    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match (port, size) {
            (PCI_CONFIG_ADDRESS, 4) => self.pci_address,
            (RESET_CONTROL_PORT, 1) => u32::from(self.reset_control),
            _ => all_ones(size),
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Option<Event> {
        match (port, size) {
            (PCI_CONFIG_ADDRESS, 4) => self.pci_address = value,
            (RESET_CONTROL_PORT, 1) => {
                let value = value as u8;
                // RST_CPU starts the reset on its 0->1 edge; it reads back as 0 (self-clearing),
                // so every write with it set is an edge. The reset type bits are kept.
                self.reset_control = value & (RCR_SYS_RST | RCR_FULL_RST);
                if value & RCR_RST_CPU != 0 {
                    return Some(Event::Reset);
                }
            }
            (POST_PORT, _) => self.post_code = value as u8,
            _ => {}
        }
        None
    }

    /// The POST code written last (for diagnostics).
    pub fn post_code(&self) -> u8 {
        self.post_code
    }
}

/// The i8042's data port and its status (read) / command (write) port.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Status register bits.
pub mod i8042_status {
    pub const OUTPUT_FULL: u8 = 1 << 0;
    pub const INPUT_FULL: u8 = 1 << 1;
    pub const SYSTEM_FLAG: u8 = 1 << 2;
    /// The last write went to the command port.
    pub const COMMAND: u8 = 1 << 3;
    /// The keyboard is not inhibited (the key lock is open).
    pub const UNLOCKED: u8 = 1 << 4;
    /// The output buffer holds a byte from the auxiliary (mouse) port.
    pub const AUX_DATA: u8 = 1 << 5;
    /// The device did not answer.
    pub const TIMEOUT: u8 = 1 << 6;
}

/// Controller configuration byte ("command byte") bits.
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_AUX_INT: u8 = 1 << 1;
const CTR_SYSTEM_FLAG: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;

/// The byte the controller expects next on the data port, after a command that takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    /// No command pending: the byte goes to the (absent) keyboard.
    Keyboard,
    Configuration,
    OutputPort,
    /// Commands 0xd2/0xd3: the byte comes back as if the keyboard/mouse had sent it.
    EchoKeyboard,
    EchoAux,
    /// Command 0xd4: the byte goes to the (absent) mouse.
    Aux,
}

/// The i8042 keyboard controller with no keyboard and no mouse attached.
///
/// Commands answered: 0x20 (read configuration), 0x60 (write configuration), 0xa7/0xa8 (mouse
/// port off/on), 0xa9 (mouse port test: passes), 0xaa (self-test: 0x55), 0xab (keyboard port
/// test: passes), 0xad/0xae (keyboard port off/on), 0xd0/0xd1 (output port), 0xd2/0xd3 (echo as
/// keyboard/mouse data), 0xd4 (write to mouse), 0xf0-0xff (pulse output lines: bit 0 low is the
/// reset line). A byte sent to a device gets 0xfe with the timeout status bit, as a controller
/// whose device does not answer. Output to the guest is one byte deep and is instant: the input
/// buffer is never full.
#[derive(Clone, Debug)]
pub struct I8042 {
    configuration: u8,
    output_port: u8,
    /// The output buffer and whether its byte came from the mouse port.
    output: Option<(u8, bool)>,
    timeout: bool,
    last_was_command: bool,
    target: DataTarget,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042::new()
    }
}

/// The output port's reset line (active low) and A20 gate.
const OUTPUT_RESET_LINE: u8 = 1 << 0;
const OUTPUT_A20: u8 = 1 << 1;

impl I8042 {
    /// The controller after firmware's POST: interrupts on, system flag set, both ports on.
    pub fn new() -> I8042 {
        I8042 {
            configuration: CTR_KBD_INT | CTR_AUX_INT | CTR_SYSTEM_FLAG,
            output_port: OUTPUT_RESET_LINE | OUTPUT_A20,
            output: None,
            timeout: false,
            last_was_command: false,
            target: DataTarget::Keyboard,
        }
    }

    /// Whether this model answers `port`.
    pub fn claims(port: u16) -> bool {
        matches!(port, I8042_DATA_PORT | I8042_COMMAND_PORT)
    }

    /// The status register.
    pub fn status(&self) -> u8 {
        let mut status = i8042_status::UNLOCKED | (self.configuration & CTR_SYSTEM_FLAG);
        if let Some((_, aux)) = self.output {
            status |= i8042_status::OUTPUT_FULL;
            if aux {
                status |= i8042_status::AUX_DATA;
            }
        }
        if self.last_was_command {
            status |= i8042_status::COMMAND;
        }
        if self.timeout {
            status |= i8042_status::TIMEOUT;
        }
        status
    }

    /// IRQ 1: a keyboard-side byte waits and keyboard interrupts are on.
    pub fn keyboard_irq_level(&self) -> bool {
        matches!(self.output, Some((_, false))) && self.configuration & CTR_KBD_INT != 0
    }

    /// IRQ 12: a mouse-side byte waits and mouse interrupts are on.
    pub fn aux_irq_level(&self) -> bool {
        matches!(self.output, Some((_, true))) && self.configuration & CTR_AUX_INT != 0
    }

    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match port {
            I8042_DATA_PORT => {
                let value = match self.output.take() {
                    Some((byte, _)) => byte,
                    // An empty buffer reads the byte read last on real parts; 0 is as good.
                    None => 0,
                };
                self.timeout = false;
                u32::from(value) | (all_ones(size) & !0xff)
            }
            I8042_COMMAND_PORT => u32::from(self.status()) | (all_ones(size) & !0xff),
            _ => all_ones(size),
        }
    }

    fn reply(&mut self, byte: u8, aux: bool) {
        self.output = Some((byte, aux));
    }

    pub fn write(&mut self, port: u16, _size: u8, value: u32) -> Option<Event> {
        let byte = value as u8;
        match port {
            I8042_COMMAND_PORT => {
                self.last_was_command = true;
                self.command(byte)
            }
            I8042_DATA_PORT => {
                self.last_was_command = false;
                let target = core::mem::replace(&mut self.target, DataTarget::Keyboard);
                match target {
                    DataTarget::Configuration => self.configuration = byte,
                    DataTarget::OutputPort => return self.set_output_port(byte),
                    DataTarget::EchoKeyboard => self.reply(byte, false),
                    DataTarget::EchoAux => self.reply(byte, true),
                    DataTarget::Keyboard | DataTarget::Aux => {
                        // No device answers: the controller reports a timeout.
                        self.timeout = true;
                        self.reply(0xfe, target == DataTarget::Aux);
                    }
                }
                None
            }
            _ => None,
        }
    }

    fn set_output_port(&mut self, value: u8) -> Option<Event> {
        self.output_port = value;
        if value & OUTPUT_RESET_LINE == 0 {
            self.output_port |= OUTPUT_RESET_LINE;
            return Some(Event::Reset);
        }
        None
    }

    fn command(&mut self, command: u8) -> Option<Event> {
        self.target = DataTarget::Keyboard;
        match command {
            0x20 => self.reply(self.configuration, false),
            0x60 => self.target = DataTarget::Configuration,
            0xa7 => self.configuration |= CTR_AUX_DISABLE,
            0xa8 => self.configuration &= !CTR_AUX_DISABLE,
            0xa9 | 0xab => self.reply(0x00, false),
            0xaa => {
                self.configuration |= CTR_SYSTEM_FLAG;
                self.reply(0x55, false);
            }
            0xad => self.configuration |= CTR_KBD_DISABLE,
            0xae => self.configuration &= !CTR_KBD_DISABLE,
            0xd0 => self.reply(self.output_port, false),
            0xd1 => self.target = DataTarget::OutputPort,
            0xd2 => self.target = DataTarget::EchoKeyboard,
            0xd3 => self.target = DataTarget::EchoAux,
            0xd4 => self.target = DataTarget::Aux,
            // Pulse output lines 0-3 low (a 0 bit pulses); line 0 is the CPU reset.
            0xf0..=0xff if command & 1 == 0 => return Some(Event::Reset),
            _ => {}
        }
        None
    }

    /// The A20 gate as the output port sets it.
    pub fn a20(&self) -> bool {
        self.output_port & OUTPUT_A20 != 0
    }
}

#[cfg(test)]
#[path = "misc_tests.rs"]
mod tests;
