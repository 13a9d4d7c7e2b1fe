//! Checks of a VMM's reply to an exit (`abi::vm`), before the kernel writes any of it into a
//! VMCB or VMCS: register values the hardware would refuse or misinterpret, and events that
//! cannot be injected into the guest as it is. The backend-specific guest-state rules
//! ([`crate::svm_state`]) come on top.

use abi::vm::{inject, mtd, segment, word};

/// Why a reply was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// The mask names groups that do not exist.
    UnknownGroups,
    /// RFLAGS with reserved bits, bit 1 clear, or virtual-8086 mode.
    Rflags,
    /// RIP not canonical in 64-bit code, or above 4 GiB outside it.
    Rip,
    /// A segment, GDTR/IDTR or SYSENTER base that is not canonical, or a table limit above 0xffff.
    Base,
    /// A PAT entry with an undefined memory type, or DR7 with upper bits.
    Msr,
    /// An event with undefined bits, a kind this kernel does not inject, a vector that kind
    /// cannot have, an error code where there is none (or none where one is needed), or an
    /// external interrupt while the guest cannot take one.
    Event,
}

/// RFLAGS bits that must be zero (reserved), plus VM (virtual-8086 mode, not supported).
const RFLAGS_MBZ: u64 = !0x3f_7fd7 | (1 << 17);
/// Exceptions that push an error code (in protected mode).
const ERROR_CODE_VECTORS: [u8; 8] = [8, 10, 11, 12, 13, 14, 17, 21];
const EFER_LMA: u64 = 1 << 10;

/// Whether `a` is a canonical 48-bit address.
pub fn canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == 0x1_ffff
}

/// Checks `reply` (the words of the VMM's answer, groups in its mask) against `current` (every
/// group as the vCPU has it now), which supplies what the reply leaves out.
pub fn check(reply: &[u64; word::COUNT], current: &[u64; word::COUNT]) -> Result<(), ReplyError> {
    let mask = reply[word::MASK] & !mtd::STOP;
    // XCR0's value is the backend's to check (it depends on the CPU's XSAVE: `crate::xcr0`).
    if mask & !(mtd::ALL | mtd::XCR0) != 0 {
        return Err(ReplyError::UnknownGroups);
    }
    let pick = |group: u64, i: usize| {
        if mask & group != 0 {
            reply[i]
        } else {
            current[i]
        }
    };
    let rflags = pick(mtd::RIP, word::RFLAGS);
    if rflags & RFLAGS_MBZ != 0 || rflags & 2 == 0 {
        return Err(ReplyError::Rflags);
    }
    let cs = pick(mtd::SEGMENTS, word::SEGMENTS);
    let efer = pick(mtd::CONTROL, word::EFER);
    let long_code = efer & EFER_LMA != 0 && segment::attributes(cs) & segment::LONG != 0;
    let rip = pick(mtd::RIP, word::RIP);
    if (long_code && !canonical(rip)) || (!long_code && rip >> 32 != 0) {
        return Err(ReplyError::Rip);
    }
    if mask & mtd::SEGMENTS != 0 && (0..8).any(|i| !canonical(reply[word::SEGMENTS + 2 * i + 1])) {
        return Err(ReplyError::Base);
    }
    if mask & mtd::TABLES != 0
        && (!canonical(reply[word::GDTR_BASE])
            || !canonical(reply[word::IDTR_BASE])
            || reply[word::GDTR_LIMIT] > 0xffff
            || reply[word::IDTR_LIMIT] > 0xffff)
    {
        return Err(ReplyError::Base);
    }
    if mask & mtd::MSRS != 0 {
        if !canonical(reply[word::SYSENTER_ESP]) || !canonical(reply[word::SYSENTER_EIP]) {
            return Err(ReplyError::Base);
        }
        let pat_ok = reply[word::PAT]
            .to_le_bytes()
            .iter()
            .all(|t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7));
        if !pat_ok || reply[word::DR7] >> 32 != 0 {
            return Err(ReplyError::Msr);
        }
    }
    if mask & mtd::INJECT != 0 {
        let protected = pick(mtd::CONTROL, word::CR0) & 1 != 0;
        // A reply that moves RIP ends an STI/MOV SS shadow (the kernel clears it with the
        // write): the event then goes in after the emulated instruction.
        let moved = mask & mtd::RIP != 0 && reply[word::RIP] != current[word::RIP];
        let shadow = current[word::INTERRUPTIBILITY] & 1 != 0 && !moved;
        let interruptible = rflags & (1 << 9) != 0 && !shadow;
        check_event(reply[word::INJECT], protected, interruptible)?;
    }
    Ok(())
}

/// Whether `event` (`abi::vm::inject` form) can be injected into a guest in this state.
pub fn check_event(event: u64, protected: bool, interruptible: bool) -> Result<(), ReplyError> {
    const DEFINED: u64 = 0xff | (7 << 8) | inject::HAS_ERROR | inject::VALID | inject::WINDOW;
    if event & !DEFINED != 0 {
        return Err(ReplyError::Event);
    }
    if event & inject::VALID == 0 {
        return Ok(());
    }
    let vector = inject::vector(event);
    let has_error = event & inject::HAS_ERROR != 0;
    let ok = match inject::kind(event) {
        inject::KIND_EXTERNAL => vector >= 32 && !has_error && interruptible,
        inject::KIND_NMI => vector == 2 && !has_error,
        inject::KIND_EXCEPTION => {
            let takes_error = ERROR_CODE_VECTORS.contains(&vector) && protected;
            vector < 22 && !matches!(vector, 2 | 9 | 15) && has_error == takes_error
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ReplyError::Event)
    }
}

#[cfg(test)]
#[path = "reply_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit guest at a sane point, interrupts on.
    fn current() -> [u64; word::COUNT] {
        let mut w = [0; word::COUNT];
        w[word::RIP] = 0x10_0000;
        w[word::RFLAGS] = 0x202;
        w[word::CR0] = 0x8000_0011;
        w[word::EFER] = 0x500;
        w[word::SEGMENTS] = segment::pack(0x8, 0xa9b, 0xffff_ffff);
        w[word::PAT] = 0x0007_0406_0007_0406;
        w[word::DR7] = 0x400;
        w
    }

    fn reply(mask: u64, f: impl FnOnce(&mut [u64; word::COUNT])) -> [u64; word::COUNT] {
        let mut w = current();
        w[word::MASK] = mask;
        f(&mut w);
        w
    }

    const GP: u64 = 13 | inject::KIND_EXCEPTION | inject::HAS_ERROR | inject::VALID;

    #[test]
    fn accepts_sane_replies() {
        let c = current();
        assert_eq!(check(&reply(mtd::ALL, |_| {}), &c), Ok(()));
        assert_eq!(
            check(&reply(mtd::GPRS | mtd::RIP, |w| w[word::RIP] += 2), &c),
            Ok(())
        );
        assert_eq!(
            check(&reply(mtd::INJECT, |w| w[word::INJECT] = GP), &c),
            Ok(())
        );
        assert_eq!(check(&reply(mtd::STOP, |_| {}), &c), Ok(()));
    }

    #[test]
    fn refuses_nonsense_registers() {
        let c = current();
        type Edit = fn(&mut [u64; word::COUNT]);
        let cases: [(u64, Edit, ReplyError); 8] = [
            (1 << 40, |_| {}, ReplyError::UnknownGroups),
            (mtd::RIP, |w| w[word::RFLAGS] = 0x200, ReplyError::Rflags),
            (
                mtd::RIP,
                |w| w[word::RFLAGS] = 0x2 | 1 << 17,
                ReplyError::Rflags,
            ),
            (
                mtd::RIP,
                |w| w[word::RFLAGS] = 0x2 | 1 << 40,
                ReplyError::Rflags,
            ),
            (
                mtd::RIP,
                |w| w[word::RIP] = 0x8000_0000_0000,
                ReplyError::Rip,
            ),
            (
                mtd::SEGMENTS,
                |w| w[word::SEGMENTS + 9] = 1 << 60,
                ReplyError::Base,
            ),
            (
                mtd::TABLES,
                |w| w[word::GDTR_LIMIT] = 0x10000,
                ReplyError::Base,
            ),
            (mtd::MSRS, |w| w[word::PAT] = 0x02, ReplyError::Msr),
        ];
        for (mask, change, error) in cases {
            assert_eq!(
                check(&reply(mask, change), &c),
                Err(error),
                "mask {mask:#x}"
            );
        }
    }

    #[test]
    fn rip_above_4g_only_in_64_bit_code() {
        let mut c = current();
        let r = reply(mtd::RIP, |w| w[word::RIP] = 0x1_0000_0000);
        assert_eq!(check(&r, &c), Ok(()));
        c[word::SEGMENTS] = segment::pack(0x8, 0xc9b, 0xffff_ffff); // 32-bit code
        assert_eq!(check(&r, &c), Err(ReplyError::Rip));
    }

    #[test]
    fn events_that_cannot_be_injected() {
        // External interrupts need IF and no interrupt shadow.
        let ext = 0x30 | inject::KIND_EXTERNAL | inject::VALID;
        assert_eq!(check_event(ext, true, true), Ok(()));
        assert_eq!(check_event(ext, true, false), Err(ReplyError::Event));
        // Vectors below 32 are not external interrupts; NMI is vector 2 only.
        assert_eq!(
            check_event(0x10 | inject::VALID, true, true),
            Err(ReplyError::Event)
        );
        assert_eq!(
            check_event(3 | inject::KIND_NMI | inject::VALID, true, true),
            Err(ReplyError::Event)
        );
        // Error codes exactly where the exception has one, and only in protected mode.
        assert_eq!(check_event(GP, true, true), Ok(()));
        assert_eq!(check_event(GP, false, true), Err(ReplyError::Event));
        let ud = 6 | inject::KIND_EXCEPTION | inject::VALID;
        assert_eq!(check_event(ud, false, true), Ok(()));
        assert_eq!(
            check_event(ud | inject::HAS_ERROR, true, true),
            Err(ReplyError::Event)
        );
        // Reserved vectors, software interrupts, undefined bits.
        assert_eq!(
            check_event(15 | inject::KIND_EXCEPTION | inject::VALID, true, true),
            Err(ReplyError::Event)
        );
        assert_eq!(
            check_event(0x80 | inject::KIND_SOFTWARE | inject::VALID, true, true),
            Err(ReplyError::Event)
        );
        assert_eq!(check_event(1 << 40, true, true), Err(ReplyError::Event));
        // No event at all is fine; so is only asking for the window.
        assert_eq!(check_event(0, true, false), Ok(()));
        assert_eq!(check_event(inject::WINDOW, true, false), Ok(()));
    }

    #[test]
    fn external_interrupt_checked_against_the_new_rflags() {
        let mut c = current();
        c[word::RFLAGS] = 0x2; // IF clear now
        let ext = 0x30 | inject::KIND_EXTERNAL | inject::VALID;
        let r = reply(mtd::INJECT, |w| w[word::INJECT] = ext);
        assert_eq!(check(&r, &c), Err(ReplyError::Event));
        let r = reply(mtd::INJECT | mtd::RIP, |w| {
            w[word::INJECT] = ext;
            w[word::RFLAGS] = 0x202;
        });
        assert_eq!(check(&r, &c), Ok(()));
    }
}
