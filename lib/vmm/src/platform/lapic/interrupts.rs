//! Interrupt delivery inside the APIC: acceptance into the IRR, priority (TPR, PPR), the
//! acknowledge that moves a vector into service, EOI, IPIs and the error register.

use super::{esr, lvt, Eoi, Ipi, Lapic, LVT_ERROR, LVT_LINT0};

impl Lapic {
    /// The task priority as CR8 shows it (TPR bits 7:4).
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// MOV to CR8: TPR = value bits 3:0 << 4 (the caller checks reserved bits).
    pub fn set_cr8(&mut self, value: u64) {
        self.tpr = ((value & 0xf) << 4) as u8;
    }

    /// Processor priority: the TPR, or the class of the highest in-service vector if higher.
    pub fn ppr(&self) -> u8 {
        let isr_class = self.isr.highest().unwrap_or(0) & 0xf0;
        if self.tpr & 0xf0 >= isr_class {
            self.tpr
        } else {
            isr_class
        }
    }

    /// A fixed or lowest-priority interrupt message for this APIC (from the IOAPIC): sets the
    /// vector in the IRR, and in the TMR when level-triggered. Dropped (false) while the APIC
    /// is disabled in hardware or software; an illegal vector (0-15) is dropped and logged in
    /// the ESR.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.log_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.insert(vector);
        self.tmr.set(vector, level_triggered);
        true
    }

    /// The vector the vCPU should take next: the highest requested one whose priority class is
    /// above the processor priority. None while the APIC is disabled in `IA32_APIC_BASE`.
    pub fn pending_vector(&mut self, now_ns: u64) -> Option<u8> {
        self.advance(now_ns);
        self.deliverable()
    }

    fn deliverable(&self) -> Option<u8> {
        if !self.hardware_enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        (vector & 0xf0 > self.ppr()).then_some(vector)
    }

    /// The vCPU takes `vector` (from [`Lapic::pending_vector`]): it moves from the IRR to the
    /// ISR and is returned. If it is no longer deliverable (the guest raised the TPR in
    /// between), nothing moves and the spurious vector is returned instead, as real hardware
    /// does.
    pub fn acknowledge(&mut self, vector: u8) -> u8 {
        if self.deliverable() != Some(vector) {
            return self.svr as u8;
        }
        self.irr.remove(vector);
        self.isr.insert(vector);
        vector
    }

    /// End of interrupt: clears the highest in-service vector (none: nothing happens).
    pub fn eoi(&mut self) -> Option<Eoi> {
        let vector = self.isr.highest()?;
        self.isr.remove(vector);
        let level_triggered = self.tmr.contains(vector);
        self.eois.insert(vector);
        self.eoi_levels.set(vector, level_triggered);
        Some(Eoi {
            vector,
            level_triggered,
        })
    }

    /// An EOI the guest wrote that the IOAPIC has not heard of yet (highest vector first).
    pub fn take_eoi(&mut self) -> Option<Eoi> {
        let vector = self.eois.highest()?;
        self.eois.remove(vector);
        Some(Eoi {
            vector,
            level_triggered: self.eoi_levels.contains(vector),
        })
    }

    /// Whether the guest sent itself an NMI since the last call.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// The last IPI the APIC could not deliver itself, since the last call.
    pub fn take_ipi(&mut self) -> Option<Ipi> {
        self.ipi.take()
    }

    /// LINT0 is unmasked in ExtINT mode.
    pub fn lint0_is_extint(&self) -> bool {
        self.lvt[LVT_LINT0] & (lvt::MASKED | lvt::DELIVERY_MODE) == lvt::EXTINT
    }

    /// The 8259's INTR reaches the CPU: LINT0 in ExtINT mode, or the APIC disabled in
    /// `IA32_APIC_BASE` (then LINT0 is the processor's INTR pin). KVM's
    /// `kvm_apic_accept_pic_intr`.
    pub fn accepts_pic_interrupt(&self) -> bool {
        !self.hardware_enabled() || self.lint0_is_extint()
    }

    /// A local interrupt from an LVT entry (fixed delivery, edge unless `level`).
    pub(super) fn deliver_lvt(&mut self, entry: u32, level: bool) {
        if !self.hardware_enabled() || entry & lvt::MASKED != 0 {
            return;
        }
        self.accept(entry as u8, level);
    }

    /// Logs `bits` in the ESR and raises the LVT error interrupt (whose own illegal vector is
    /// not logged again).
    fn log_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let entry = self.lvt[LVT_ERROR];
        if self.enabled() && entry & lvt::MASKED == 0 && entry as u8 >= 16 {
            self.irr.insert(entry as u8);
            self.tmr.remove(entry as u8);
        }
    }

    /// Sends the IPI in `command` to `destination`: to itself when the shorthand or the
    /// destination names it; the rest is recorded for [`Lapic::take_ipi`].
    pub(super) fn send_ipi(&mut self, command: u32, destination: u32) {
        let vector = command as u8;
        let mode = command >> 8 & 7;
        let logical = command & 1 << 11 != 0;
        let assert = command & 1 << 14 != 0;
        let level = command & 1 << 15 != 0;
        let (to_self, to_others) = match command >> 18 & 3 {
            0 => {
                let own = self.matches_destination(destination, logical);
                (own, !own || logical || destination == self.broadcast())
            }
            1 => (true, false),
            2 => (true, true),
            _ => (false, true),
        };
        let fixed = mode == 0 || mode == 1;
        if fixed && vector < 16 {
            self.log_error(esr::SEND_ILLEGAL_VECTOR);
        }
        let handled = match mode {
            _ if !to_self => false,
            // A level-triggered de-assert delivers nothing.
            0 | 1 if level && !assert => true,
            0 | 1 => {
                self.accept(vector, level);
                true
            }
            4 => {
                self.nmi = self.hardware_enabled();
                true
            }
            _ => false,
        };
        if to_others || !handled {
            self.ipi = Some(Ipi {
                command,
                destination,
            });
        }
    }

    fn broadcast(&self) -> u32 {
        if self.x2apic_mode() {
            u32::MAX
        } else {
            0xff
        }
    }

    /// Whether an IOAPIC message for its 8-bit `destination` field reaches this APIC (0xff is
    /// the broadcast in either mode).
    pub fn accepts_destination(&self, destination: u8, logical: bool) -> bool {
        destination == 0xff || self.matches_destination(u32::from(destination), logical)
    }

    /// Whether a physical or logical destination names this APIC.
    fn matches_destination(&self, destination: u32, logical: bool) -> bool {
        if destination == self.broadcast() {
            return true;
        }
        if !logical {
            return destination == self.id();
        }
        if self.x2apic_mode() {
            return destination >> 16 == self.ldr >> 16 && destination & self.ldr & 0xffff != 0;
        }
        let id = self.ldr >> 24;
        match self.dfr >> 28 {
            0xf => id & destination != 0,
            0x0 => id >> 4 == destination >> 4 && id & destination & 0xf != 0,
            _ => false,
        }
    }

    /// The APIC ID in the current mode.
    fn id(&self) -> u32 {
        if self.x2apic_mode() {
            self.config.apic_id
        } else {
            u32::from(self.xapic_id)
        }
    }
}
