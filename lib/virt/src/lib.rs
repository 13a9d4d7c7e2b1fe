//! The hardware-virtualization logic that does not need the hardware: adjusting VMX controls to
//! what the CPU's capability MSRs allow, building EPT entries and pointers, checking an SVM guest
//! state before VMRUN, and decoding VM exits of both VMX and SVM into one architecture-neutral
//! form.
//!
//! The kernel's VMX and SVM back ends (issue #4) feed raw MSR values, exit reasons and
//! qualifications in and act on the results; every input is treated as untrusted (a VMM or a
//! guest controls much of it), so nothing here panics on any value.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod confine;
pub mod decode;
pub mod ept;
pub mod exit;
pub mod hypercall;
pub mod nested;
pub mod patch;
pub mod profile;
pub mod reply;
pub mod shadow;
pub mod svm_state;
pub mod tags;
pub mod vmx_controls;
pub mod xcr0;
