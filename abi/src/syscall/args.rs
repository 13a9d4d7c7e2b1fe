//! Per-syscall argument views: one struct per [`Syscall`] that names its arguments, in register
//! order (RDI, RSI, RDX, R10, R8, R9; see [`super`]).
//!
//! `to_regs` gives the six argument registers (unused ones 0); `from_regs` reads them back and
//! never fails or panics: every `u64` is a valid [`Sel`], count or address, and an argument that
//! must name a value of a closed set (rights, a memory mode, a vCPU operation, a flag) is kept
//! as the [`Word`] the caller passed, whose [`Word::get`] checks it and answers
//! [`Status::BadArgument`] when it is out of range. Registers a call does not use are ignored.
//! So a view carries exactly what the caller's registers said, and deciding what is acceptable
//! stays with the kernel's checks.

use core::fmt;
use core::marker::PhantomData;

use super::Syscall;
use crate::vm::{MemoryMode, VcpuOp, PATCH_VIRTUAL};
use crate::{Rights, Sel, Status};

/// A value of a closed set as it travels in one argument register.
pub trait ArgValue: Sized {
    /// The register value.
    fn to_word(self) -> u64;
    /// The value a register holds, if it names one.
    fn from_word(word: u64) -> Option<Self>;
}

impl ArgValue for Rights {
    fn to_word(self) -> u64 {
        u64::from(self.0)
    }
    fn from_word(word: u64) -> Option<Self> {
        Rights::from_bits(word)
    }
}

impl ArgValue for bool {
    fn to_word(self) -> u64 {
        u64::from(self)
    }
    fn from_word(word: u64) -> Option<Self> {
        match word {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

impl ArgValue for MemoryMode {
    fn to_word(self) -> u64 {
        self as u64
    }
    fn from_word(word: u64) -> Option<Self> {
        MemoryMode::from_u64(word)
    }
}

impl ArgValue for VcpuOp {
    fn to_word(self) -> u64 {
        self as u64
    }
    fn from_word(word: u64) -> Option<Self> {
        VcpuOp::from_u64(word)
    }
}

/// An argument register meant to hold a `T`, kept as passed: any word decodes, and
/// [`Word::get`] says whether it names a `T`.
#[repr(transparent)]
pub struct Word<T> {
    raw: u64,
    _value: PhantomData<T>,
}

impl<T: ArgValue> Word<T> {
    /// The word for `value`.
    pub fn new(value: T) -> Self {
        Self::from_raw(value.to_word())
    }

    /// The value, or `BadArgument` when the word names none.
    pub fn get(self) -> Result<T, Status> {
        T::from_word(self.raw).ok_or(Status::BadArgument)
    }
}

impl<T> Word<T> {
    /// The word as a register held it.
    pub const fn from_raw(raw: u64) -> Self {
        Word {
            raw,
            _value: PhantomData,
        }
    }

    /// The register value.
    pub const fn raw(self) -> u64 {
        self.raw
    }
}

// By hand: derives would require `T: Clone` etc. of the marker.
impl<T> Clone for Word<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Word<T> {}
impl<T> PartialEq for Word<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<T> Eq for Word<T> {}
impl<T> fmt::Debug for Word<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.raw)
    }
}

/// One argument's conversion to and from its register.
trait Reg: Sized {
    fn to_reg(self) -> u64;
    fn from_reg(reg: u64) -> Self;
}

impl Reg for u64 {
    fn to_reg(self) -> u64 {
        self
    }
    fn from_reg(reg: u64) -> Self {
        reg
    }
}

impl Reg for Sel {
    fn to_reg(self) -> u64 {
        self.raw()
    }
    fn from_reg(reg: u64) -> Self {
        Sel::new(reg)
    }
}

impl<T> Reg for Word<T> {
    fn to_reg(self) -> u64 {
        self.raw
    }
    fn from_reg(reg: u64) -> Self {
        Word::from_raw(reg)
    }
}

/// What every argument view offers.
pub trait Args: Sized {
    /// The syscall these are the arguments of.
    const SYSCALL: Syscall;
    /// The six argument registers, unused ones 0.
    fn to_regs(&self) -> [u64; 6];
    /// The arguments the registers hold; never fails (see the module text).
    fn from_regs(a: [u64; 6]) -> Self;
}

macro_rules! views {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),* $(,)? }
    )*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $name {
            /// The six argument registers, unused ones 0.
            pub fn to_regs(&self) -> [u64; 6] {
                let used: &[u64] = &[$(Reg::to_reg(self.$field)),*];
                let mut a = [0u64; 6];
                for (reg, value) in a.iter_mut().zip(used) {
                    *reg = *value;
                }
                a
            }

            /// The arguments the registers hold; never fails or panics (see the module text).
            #[allow(unused_mut, unused_variables)]
            pub fn from_regs(a: [u64; 6]) -> Self {
                let mut regs = a.into_iter();
                $name {
                    $($field: Reg::from_reg(regs.next().unwrap_or(0)),)*
                }
            }
        }

        impl Args for $name {
            const SYSCALL: Syscall = Syscall::$name;
            fn to_regs(&self) -> [u64; 6] {
                $name::to_regs(self)
            }
            fn from_regs(a: [u64; 6]) -> Self {
                $name::from_regs(a)
            }
        }
    )*};
}

views! {
    /// [`Syscall::Call`].
    Call { portal: Sel }
    /// [`Syscall::Reply`] (no arguments).
    Reply {}
    /// [`Syscall::ReplyWait`].
    ReplyWait { portal: Sel }
    /// [`Syscall::CreatePd`].
    CreatePd {
        dest: Sel,
        /// Bytes of the caller's kernel-memory quota moved to the new domain.
        quota: u64,
    }
    /// [`Syscall::CreateThread`].
    CreateThread {
        dest: Sel,
        pd: Sel,
        /// User address of the entry point.
        entry: u64,
        /// Initial RSP.
        stack_top: u64,
        priority: u64,
        /// User address of the thread's UTCB page in `pd`.
        utcb: u64,
    }
    /// [`Syscall::CreatePortal`].
    CreatePortal { dest: Sel, handler: Sel, badge: u64 }
    /// [`Syscall::CreateSemaphore`].
    CreateSemaphore { dest: Sel, initial: u64 }
    /// [`Syscall::Delegate`].
    Delegate { src: Sel, pd: Sel, dest: Sel, rights: Word<Rights> }
    /// [`Syscall::Revoke`].
    Revoke { sel: Sel, include_self: Word<bool> }
    /// [`Syscall::Lookup`].
    Lookup { sel: Sel }
    /// [`Syscall::SemUp`].
    SemUp { sem: Sel }
    /// [`Syscall::SemDown`].
    SemDown {
        sem: Sel,
        /// Timer ticks; 0 waits forever.
        timeout_ticks: u64,
    }
    /// [`Syscall::Map`].
    Map {
        mem: Sel,
        pd: Sel,
        /// User address in `pd`.
        virt: u64,
        first_page: u64,
        pages: u64,
        rights: Word<Rights>,
    }
    /// [`Syscall::Yield`] (no arguments).
    Yield {}
    /// [`Syscall::IrqBind`].
    IrqBind { irq: Sel, sem: Sel }
    /// [`Syscall::ThreadExit`] (no arguments).
    ThreadExit {}
    /// [`Syscall::PowerOff`].
    PowerOff {
        /// 0 = success.
        status: u64,
    }
    /// [`Syscall::ConsoleWrite`].
    ConsoleWrite {
        /// User address of the bytes.
        ptr: u64,
        len: u64,
    }
    /// [`Syscall::Carve`].
    Carve {
        src: Sel,
        dest: Sel,
        /// First page (Memory) or port (IoPorts) of `src` in the new capability.
        first: u64,
        count: u64,
    }
    /// [`Syscall::CreateVm`].
    CreateVm { dest: Sel, pd: Sel, mode: Word<MemoryMode> }
    /// [`Syscall::CreateVcpu`].
    CreateVcpu {
        dest: Sel,
        vm: Sel,
        pd: Sel,
        priority: u64,
        /// The portal of exit reason 0; reason `r` calls `exit_base + r`.
        exit_base: Sel,
    }
    /// [`Syscall::VmMap`].
    VmMap {
        vm: Sel,
        mem: Sel,
        first_page: u64,
        pages: u64,
        /// Guest-physical address.
        gpa: u64,
        rights: Word<Rights>,
    }
    /// [`Syscall::VcpuControl`].
    VcpuControl {
        vcpu: Sel,
        op: Word<VcpuOp>,
        /// The operation's first argument (`SetMask`: the exit reason; `Hypercalls`: on).
        a: u64,
        /// The operation's second argument (`SetMask`: the mask).
        b: u64,
    }
    /// [`Syscall::VmPatch`].
    VmPatch {
        vm: Sel,
        /// Guest-physical, or guest-linear with [`PATCH_VIRTUAL`] in `len_flags`.
        address: u64,
        /// The length (1-64) ORed with the flags; see [`VmPatch::length`], [`VmPatch::linear`].
        len_flags: u64,
        /// Guest-linear RIP a vCPU may stand at inside the range (0: none) ...
        from: u64,
        /// ... and where it is moved to (in the DMP window).
        to: u64,
    }
    /// [`Syscall::VmWindow`].
    VmWindow {
        vm: Sel,
        /// First guest-linear page address.
        linear: u64,
        /// First guest-physical page address.
        physical: u64,
        /// 1-512; 0 removes the window.
        pages: u64,
    }
    /// [`Syscall::VmRead`].
    VmRead {
        vm: Sel,
        /// As for [`VmPatch`].
        address: u64,
        /// As for [`VmPatch`].
        len_flags: u64,
    }
    /// [`Syscall::VmDmp`].
    VmDmp {
        vm: Sel,
        /// One of [`crate::vm::dmp_op`].
        op: u64,
        arg: u64,
    }
    /// [`Syscall::KernelStats`].
    KernelStats {
        /// One of [`super::stats`].
        which: u64,
    }
}

/// The `len | flags` word of `VmPatch` and `VmRead`.
pub const fn len_flags(len: u64, linear: bool) -> u64 {
    if linear {
        len | PATCH_VIRTUAL
    } else {
        len
    }
}

impl VmPatch {
    /// The byte count without the flags (the kernel checks its range).
    pub const fn length(&self) -> u64 {
        self.len_flags & !PATCH_VIRTUAL
    }

    /// Whether `address` is guest-linear.
    pub const fn linear(&self) -> bool {
        self.len_flags & PATCH_VIRTUAL != 0
    }
}

impl VmRead {
    /// The byte count without the flags (the kernel checks its range).
    pub const fn length(&self) -> u64 {
        self.len_flags & !PATCH_VIRTUAL
    }

    /// Whether `address` is guest-linear.
    pub const fn linear(&self) -> bool {
        self.len_flags & PATCH_VIRTUAL != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers a view with `n` arguments reads back unchanged: the first `n` of `a`.
    fn used(a: [u64; 6], n: usize) -> [u64; 6] {
        let mut out = [0; 6];
        out[..n].copy_from_slice(&a[..n]);
        out
    }

    /// Calls `f::<View>(arguments)` for every view, with its argument count.
    macro_rules! each_view {
        ($f:ident) => {
            $f::<Call>(1);
            $f::<Reply>(0);
            $f::<ReplyWait>(1);
            $f::<CreatePd>(2);
            $f::<CreateThread>(6);
            $f::<CreatePortal>(3);
            $f::<CreateSemaphore>(2);
            $f::<Delegate>(4);
            $f::<Revoke>(2);
            $f::<Lookup>(1);
            $f::<SemUp>(1);
            $f::<SemDown>(2);
            $f::<Map>(6);
            $f::<Yield>(0);
            $f::<IrqBind>(2);
            $f::<ThreadExit>(0);
            $f::<PowerOff>(1);
            $f::<ConsoleWrite>(2);
            $f::<Carve>(4);
            $f::<CreateVm>(3);
            $f::<CreateVcpu>(5);
            $f::<VmMap>(6);
            $f::<VcpuControl>(4);
            $f::<VmPatch>(5);
            $f::<VmWindow>(4);
            $f::<VmRead>(3);
            $f::<VmDmp>(3);
            $f::<KernelStats>(1);
        };
    }

    /// A small deterministic generator (xorshift), so the test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Mostly edge values, sometimes anything.
        fn word(&mut self) -> u64 {
            const EDGES: [u64; 8] = [0, 1, 2, 63, 64, u64::MAX, 1 << 63, 0x7f];
            let r = self.next();
            match r % 4 {
                0 => EDGES[(r >> 8) as usize % EDGES.len()],
                _ => self.next(),
            }
        }
    }

    fn round_trip<V: Args + PartialEq + fmt::Debug>(n: usize) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64 ^ (V::SYSCALL as u64) << 32);
        for _ in 0..2000 {
            let a: [u64; 6] = core::array::from_fn(|_| rng.word());
            let v = V::from_regs(a);
            assert_eq!(v.to_regs(), used(a, n), "{:?}", V::SYSCALL);
            assert_eq!(V::from_regs(v.to_regs()), v, "{:?}", V::SYSCALL);
        }
    }

    #[test]
    fn every_view_round_trips_any_registers() {
        each_view!(round_trip);
    }

    #[test]
    fn every_syscall_has_a_view() {
        let mut seen = [false; super::super::COUNT as usize];
        macro_rules! mark {
            ($($v:ident),*) => {$( seen[$v::SYSCALL as usize] = true; )*};
        }
        mark!(
            Call,
            Reply,
            ReplyWait,
            CreatePd,
            CreateThread,
            CreatePortal,
            CreateSemaphore,
            Delegate,
            Revoke,
            Lookup,
            SemUp,
            SemDown,
            Map,
            Yield,
            IrqBind,
            ThreadExit,
            PowerOff,
            ConsoleWrite,
            Carve,
            CreateVm,
            CreateVcpu,
            VmMap,
            VcpuControl,
            VmPatch,
            VmWindow,
            VmRead,
            VmDmp,
            KernelStats
        );
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn typed_fields_check_their_range() {
        let d = Delegate {
            src: Sel::new(3),
            pd: Sel::new(0),
            dest: Sel::new(40),
            rights: Word::new(Rights::READ | Rights::GRANT),
        };
        assert_eq!(d.to_regs(), [3, 0, 40, 0b10_0001, 0, 0]);
        assert_eq!(d.rights.get(), Ok(Rights::READ | Rights::GRANT));
        let bad = Delegate::from_regs([3, 0, 40, 1 << 7, 0, 0]);
        assert_eq!(bad.rights.get(), Err(Status::BadArgument));
        assert_eq!(bad.rights.raw(), 1 << 7);
        assert_eq!(
            Revoke::from_regs([5, 2, 0, 0, 0, 0]).include_self.get(),
            Err(Status::BadArgument)
        );
        assert_eq!(
            Revoke::from_regs([5, 1, 0, 0, 0, 0]).include_self.get(),
            Ok(true)
        );
        assert_eq!(
            CreateVm::from_regs([1, 2, 1, 0, 0, 0]).mode.get(),
            Ok(MemoryMode::Shadow)
        );
        assert_eq!(
            CreateVm::from_regs([1, 2, 9, 0, 0, 0]).mode.get(),
            Err(Status::BadArgument)
        );
        assert_eq!(
            VcpuControl::from_regs([1, 2, 0, 0, 0, 0]).op.get(),
            Ok(VcpuOp::Hypercalls)
        );
        let r = VmRead::from_regs([1, 0x1000, len_flags(8, true), 0, 0, 0]);
        assert_eq!((r.length(), r.linear()), (8, true));
        let p = VmPatch::from_regs([1, 0x1000, 64, 0, 0, 0]);
        assert_eq!((p.length(), p.linear()), (64, false));
    }
}
