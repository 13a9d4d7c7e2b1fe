//! The DMP service's decisions for one guest, over its exit profiles: which hot sites to patch,
//! where their stubs go in the guest's DMP window, and whether a patch earned its keep.
//!
//! The guest is reached through [`GuestAccess`] (the service implements it with `VmRead` and
//! `VmPatch`), so the whole loop is tested on the host against a fake guest. Today the policy
//! patches CR3 reads (`mov reg, cr3`, which under shadow paging exits on every execution) into a
//! load of the CR3 word the kernel keeps in the window; other forms are classified and logged as
//! not handled yet.
//!
//! **Verification and rollback.** Profiles are cumulative. When a patch goes in, the site's
//! count is noted; if a later profile shows the site still hot (more than [`Config::slack`]
//! further exits there), the patch did not take and is swapped back. A patch refused because the
//! vCPU was inside the range (`Busy`) is retried with the next profile.
//!
//! **Forwarding page faults.** When the guest's page-fault exits reach [`Config::threshold`],
//! the policy hands #PF to the guest ([`crate::fault_gate`]), in this order: ask for the view of
//! guest RAM (`VmDmp` `VIEW` at [`Config::view_base`]; the call also refreshes the window's
//! words); read the guest's IDTR from the window (words `WINDOW_IDTR_BASE`/`LIMIT`) and gate 14
//! (guest-linear), which must be a present interrupt or trap gate without IST; read the view's
//! base and size back from words `WINDOW_VIEW_BASE`/`SIZE` (the kernel knows the guest's RAM,
//! the service does not); write the fault stub into consecutive window slots; swap gate 14's
//! offset to the stub (a compare-and-swap of the 16 gate bytes); and only then `VmDmp`
//! `FORWARD_FAULTS` 1. A failed step undoes the earlier ones (the view is removed only when
//! nothing points at the stub). Verification as for patches: if the page-fault exits keep
//! growing (more than [`Config::slack`] beyond their count at the install), forwarding is
//! turned off (`FORWARD_FAULTS` 0), the gate swapped back, and the view removed.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use abi::profile::ProfileBatch;
use abi::vm::Exit;

use crate::fault_gate::{self, FaultStubConfig, Gate, GATE_LEN, PF_VECTOR};
use crate::replacement::HypercallInsn;
use crate::{build_stub, classify, plan_patch, replacement, Bitness, SiteKind, MAX_CODE};

/// What the policy needs from the guest.
pub trait GuestAccess {
    /// `out.len()` (1-64) bytes at `address`, inside one page: guest-linear when `linear`, else
    /// guest-physical (the window's words).
    fn read(&mut self, address: u64, linear: bool, out: &mut [u8]) -> Result<(), Failure>;
    /// Compare-and-swap of guest bytes (guest-linear when `linear`, else guest-physical).
    fn patch(
        &mut self,
        address: u64,
        linear: bool,
        expected: &[u8],
        new: &[u8],
    ) -> Result<(), Failure>;
    /// `VmDmp(op, arg)` (`abi::vm::dmp_op`).
    fn control(&mut self, op: u64, arg: u64) -> Result<(), Failure>;
    /// [`GuestAccess::patch`] of a guest-linear range that moves a vCPU standing at `from`
    /// (inside the range) to `to` (in the stub) instead of failing `Busy`.
    fn patch_moving(
        &mut self,
        address: u64,
        expected: &[u8],
        new: &[u8],
        from: u64,
        to: u64,
    ) -> Result<(), Failure> {
        let _ = (from, to);
        self.patch(address, true, expected, new)
    }
}

/// Why the guest could not be read or patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A vCPU is inside the range: try again later.
    Busy,
    /// The bytes were not the expected ones (the guest changed them).
    Mismatch,
    /// Anything else (no memory there, no rights).
    Refused,
}

/// The service's knobs and the guest's window.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Exits a site needs before it is patched.
    pub threshold: u64,
    /// Exits a patched site may still take before the patch counts as failed.
    pub slack: u64,
    pub window_linear: u64,
    pub window_physical: u64,
    pub window_pages: u64,
    /// Guest-linear base of the view of guest RAM the fault stub walks the guest's tables
    /// through (1 GiB-aligned, upper half, clear of the window and of the guest's own use).
    pub view_base: u64,
    /// The host's hypercall instruction (the guest runs on the same CPU).
    pub call: HypercallInsn,
}

/// Bytes per stub slot in the window.
pub const SLOT: u64 = 128;

/// One decision, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Patched {
        rip: u64,
        form: String,
        stub: u64,
        displaced: usize,
        count: u64,
    },
    NotPatched {
        rip: u64,
        why: String,
    },
    RolledBack {
        rip: u64,
        at_patch: u64,
        now: u64,
    },
    /// The site cooled: measured (`Count`), or out of a full table of hottest sites whose
    /// coldest entry bounds its count (`AtMost`).
    Held {
        rip: u64,
        at_patch: u64,
        now: Evidence,
    },
    /// A rollback was decided but the bytes could not be swapped back.
    RollbackFailed {
        rip: u64,
        why: String,
    },
    /// Gate 14 (at guest-linear `gate`) now points at the fault stub instead of `handler`, and
    /// the kernel no longer intercepts #PF (`exits` page-fault exits so far).
    ForwardingFaults {
        gate: u64,
        handler: u64,
        stub: u64,
        exits: u64,
    },
    /// Page faults stay intercepted, for good.
    NotForwarding {
        why: String,
    },
    /// Forwarding did not reduce the page-fault exits: turned off, the gate restored (or
    /// `why` not).
    ForwardingRolledBack {
        at_install: u64,
        now: u64,
        why: Option<String>,
    },
    /// Forwarding works: the page-fault exits stopped growing.
    ForwardingHeld {
        at_install: u64,
        now: u64,
    },
}

/// What a profile says of a patched site's exits now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The site is in the profile with this count.
    Count(u64),
    /// The site left the profile's full table of hottest sites: its count is at most the
    /// coldest entry's (Space-Saving, `virt::profile`).
    AtMost(u64),
}

#[derive(Clone, Debug)]
struct Patch {
    rip: u64,
    /// Where the swapped range starts (before `rip` when a UART patch displaced the port load).
    address: u64,
    /// The exit reason the site took before the patch.
    reason: Exit,
    expected: Vec<u8>,
    new: Vec<u8>,
    count_at_patch: u64,
    live: bool,
    verified: bool,
}

/// Gate 14 while it points at the fault stub: where it is, its bytes before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hook {
    gate_la: u64,
    old: [u8; GATE_LEN],
    new: [u8; GATE_LEN],
    /// Page-fault exits when forwarding went on.
    at_install: u64,
}

/// Page-fault forwarding of one guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forwarding {
    /// Not tried yet (or postponed).
    Off,
    /// On, with the gate hooked; `verified` once a profile showed it working.
    Live { hook: Hook, verified: bool },
    /// Turned off (or never on), but the gate could not be restored yet (`Busy`); `now` is the
    /// page-fault count the rollback was decided at.
    Unhooking { hook: Hook, now: u64 },
    /// Given up or rolled back: never again.
    Done,
}

/// Why [`GuestPolicy::install`] stopped: `why` = `None` to retry with the next profile;
/// `stub_in_use` when the gate may still point at the stub (the view must stay).
struct InstallFailed {
    why: Option<String>,
    stub_in_use: bool,
}

/// The policy state of one guest.
pub struct GuestPolicy {
    config: Config,
    next_slot: u64,
    patches: Vec<Patch>,
    /// Sites decided against for good: (reason, rip).
    skipped: Vec<(u8, u64)>,
    forwarding: Forwarding,
}

/// The guest's code from `rip` to the end of its page (at most `MAX_CODE` bytes).
fn read_code(rip: u64, guest: &mut impl GuestAccess) -> Result<Vec<u8>, String> {
    let room = (4096 - (rip & 0xfff)).min(MAX_CODE as u64) as usize;
    let mut code = vec![0u8; room];
    guest
        .read(rip, true, &mut code)
        .map_err(|e| format!("code unreadable ({e:?})"))?;
    Ok(code)
}

/// Reads the patched range back: a patch is claimed only once the guest's bytes are the new
/// ones (a kernel or service that reports success without writing is caught here).
fn confirm(address: u64, new: &[u8], guest: &mut impl GuestAccess) -> Result<(), String> {
    let mut now = vec![0u8; new.len()];
    guest
        .read(address, true, &mut now)
        .map_err(|e| format!("patched bytes unreadable ({e:?})"))?;
    if now != new {
        return Err(format!(
            "patch did not take at {address:#x}: {now:02x?} read back"
        ));
    }
    Ok(())
}

/// Page-fault exits of a profile: the exact per-reason count, or the hot sites' sum if that is
/// larger (site counts are upper bounds; a profile may carry only sites).
pub fn page_fault_exits(batch: &ProfileBatch) -> u64 {
    let sites = batch
        .sites
        .iter()
        .filter(|s| s.exit() == Some(Exit::PageFault))
        .fold(0u64, |sum, s| sum.saturating_add(s.count));
    sites.max(batch.count(Exit::PageFault))
}

impl GuestPolicy {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            next_slot: 0,
            patches: Vec::new(),
            skipped: Vec::new(),
            forwarding: Forwarding::Off,
        }
    }

    /// Whether the guest's page faults are forwarded to its patched gate now.
    pub fn forwarding(&self) -> bool {
        matches!(self.forwarding, Forwarding::Live { .. })
    }

    /// Live patches.
    pub fn live(&self) -> usize {
        self.patches.iter().filter(|p| p.live).count()
    }

    /// Acts on one profile: checks the patches and the page-fault forwarding made so far, then
    /// forwards page faults if they are hot and patches new hot sites.
    pub fn on_profile(&mut self, batch: &ProfileBatch, guest: &mut impl GuestAccess) -> Vec<Event> {
        let mut events = Vec::new();
        self.verify(batch, guest, &mut events);
        let faults = page_fault_exits(batch);
        self.verify_forwarding(faults, guest, &mut events);
        if self.forwarding == Forwarding::Off && faults >= self.config.threshold {
            match self.forward_faults(faults, guest) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(why) => {
                    // (A gate left hooked is already Unhooking.)
                    if self.forwarding == Forwarding::Off {
                        self.forwarding = Forwarding::Done;
                    }
                    events.push(Event::NotForwarding { why });
                }
            }
        }
        for site in &batch.sites {
            let Some(reason) = site.exit() else { continue };
            if site.count < self.config.threshold
                || self.skipped.contains(&(site.reason, site.rip))
                || self.patches.iter().any(|p| p.rip == site.rip)
            {
                continue;
            }
            if !matches!(reason, Exit::ControlRegister | Exit::Invlpg | Exit::Io) {
                continue;
            }
            let attempt = if reason == Exit::Io {
                self.try_uart(site.rip, site.count, guest)
            } else {
                self.try_patch(site.rip, site.count, reason, guest)
            };
            match attempt {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(why) => {
                    self.skipped.push((site.reason, site.rip));
                    events.push(Event::NotPatched { rip: site.rip, why });
                }
            }
        }
        events
    }

    fn verify(
        &mut self,
        batch: &ProfileBatch,
        guest: &mut impl GuestAccess,
        events: &mut Vec<Event>,
    ) {
        let slack = self.config.slack;
        // A site missing from a full table has at most the coldest entry's count; missing from
        // a table that is not full, it says nothing (the table is cumulative: a patched site
        // leaves it only by eviction).
        let full = batch.sites.len() >= abi::profile::MAX_SITES;
        let coldest = batch.sites.iter().map(|s| s.count).min();
        for p in self.patches.iter_mut().filter(|p| p.live) {
            let found = batch
                .sites
                .iter()
                .find(|s| s.rip == p.rip && s.exit() == Some(p.reason))
                .map(|s| s.count);
            let (now, evidence) = match (found, full, coldest) {
                (Some(n), _, _) => (n, Evidence::Count(n)),
                (None, true, Some(m)) => (m, Evidence::AtMost(m)),
                _ => continue,
            };
            if now <= p.count_at_patch + slack {
                if !p.verified {
                    p.verified = true;
                    events.push(Event::Held {
                        rip: p.rip,
                        at_patch: p.count_at_patch,
                        now: evidence,
                    });
                }
                continue;
            }
            let Evidence::Count(now) = evidence else {
                // Only a bound, and not a low one: wait for a profile that says more.
                continue;
            };
            match guest.patch(p.address, true, &p.new, &p.expected) {
                Ok(()) => {
                    p.live = false;
                    events.push(Event::RolledBack {
                        rip: p.rip,
                        at_patch: p.count_at_patch,
                        now,
                    });
                }
                // Busy: retried with the next profile, silently; anything else is logged (and
                // retried too: the patch stays live).
                Err(Failure::Busy) => {}
                Err(e) => events.push(Event::RollbackFailed {
                    rip: p.rip,
                    why: format!("{e:?}"),
                }),
            }
        }
    }

    /// Slots in the window (none for a window too small for its reserved words).
    fn capacity(&self) -> u64 {
        let pages = self
            .config
            .window_pages
            .saturating_sub(abi::dmp::WINDOW_SCRATCH_PAGES);
        (pages.saturating_mul(4096)).saturating_sub(abi::dmp::WINDOW_RESERVED) / SLOT
    }

    /// The guest-linear address of the fault stub's last-fault word (in the scratch page).
    fn last_fault_word(&self) -> u64 {
        let scratch = abi::dmp::uart::ring_offset(self.config.window_pages);
        self.config
            .window_linear
            .wrapping_add(scratch + abi::dmp::SCRATCH_LAST_FAULT)
    }

    /// Writes a stub into the window at byte `offset` (the window starts zeroed), in pieces that
    /// stay inside a page.
    fn write_stub(
        &self,
        offset: u64,
        code: &[u8],
        guest: &mut impl GuestAccess,
    ) -> Result<(), String> {
        let base = self.config.window_physical.wrapping_add(offset);
        let mut done = 0;
        while done < code.len() {
            let at = base.wrapping_add(done as u64);
            let n = (code.len() - done)
                .min(64)
                .min((4096 - (at & 0xfff)) as usize);
            let zeros = vec![0u8; n];
            guest
                .patch(at, false, &zeros, &code[done..done + n])
                .map_err(|e| format!("stub not written ({e:?})"))?;
            done += n;
        }
        Ok(())
    }

    /// Reads two words of the window (guest-physical).
    fn window_words(&self, offset: u64, guest: &mut impl GuestAccess) -> Result<[u64; 2], String> {
        let mut b = [0u8; 16];
        guest
            .read(
                self.config.window_physical.wrapping_add(offset),
                false,
                &mut b,
            )
            .map_err(|e| format!("window unreadable ({e:?})"))?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Ok([word(0), word(8)])
    }

    /// Installs page-fault forwarding (the order is in the module documentation): `Ok(None)` to
    /// retry with the next profile, `Err` to give up.
    fn forward_faults(
        &mut self,
        faults: u64,
        guest: &mut impl GuestAccess,
    ) -> Result<Option<Event>, String> {
        let view = self.config.view_base;
        guest
            .control(abi::vm::dmp_op::VIEW, view)
            .map_err(|e| format!("no view at {view:#x} ({e:?})"))?;
        match self.install(faults, guest) {
            Ok(event) => Ok(Some(event)),
            Err(failed) => {
                if !failed.stub_in_use {
                    let _ = guest.control(abi::vm::dmp_op::VIEW, 0);
                }
                match failed.why {
                    None => Ok(None),
                    Some(why) => Err(why),
                }
            }
        }
    }

    /// The steps of [`Self::forward_faults`] after the view, whose `VmDmp` call refreshed the
    /// window's words: the gate's checks, the stub, the gate, forwarding on.
    fn install(
        &mut self,
        faults: u64,
        guest: &mut impl GuestAccess,
    ) -> Result<Event, InstallFailed> {
        use abi::vm::{dmp_op, WINDOW_IDTR_BASE, WINDOW_VIEW_BASE};
        let give_up = |why: String| InstallFailed {
            why: Some(why),
            stub_in_use: false,
        };
        let [idt, limit] = self
            .window_words(WINDOW_IDTR_BASE, guest)
            .map_err(give_up)?;
        if limit < PF_VECTOR * 16 + 15 {
            return Err(give_up(format!("IDT limit {limit:#x} has no #PF gate")));
        }
        let gate_la = idt
            .checked_add(PF_VECTOR * 16)
            .filter(|la| la & 0xfff <= 4096 - GATE_LEN as u64)
            .ok_or_else(|| give_up(format!("#PF gate of IDT {idt:#x} crosses a page")))?;
        let mut old = [0u8; GATE_LEN];
        guest
            .read(gate_la, true, &mut old)
            .map_err(|e| give_up(format!("#PF gate unreadable ({e:?})")))?;
        let gate = Gate::parse(&old);
        if !gate.is_handler_gate() {
            return Err(give_up(format!(
                "#PF gate {gate:x?} is not an interrupt or trap gate"
            )));
        }
        if gate.ist != 0 {
            // A nested #PF in the stub (the view is filled on demand) would restart the IST
            // stack and overwrite the outer frame.
            return Err(give_up(format!("#PF gate uses IST {}", gate.ist)));
        }
        let window_len = self.config.window_pages.saturating_mul(4096);
        if gate.offset.wrapping_sub(self.config.window_linear) < window_len {
            return Err(give_up(String::from(
                "#PF gate already points into the window",
            )));
        }
        let handler = gate.offset;
        let mut hook = Hook {
            gate_la,
            old,
            new: old,
            at_install: faults,
        };

        let [base, view_size] = self
            .window_words(WINDOW_VIEW_BASE, guest)
            .map_err(give_up)?;
        if base != self.config.view_base || view_size == 0 {
            return Err(give_up(format!(
                "the window shows view {base:#x} of {view_size:#x} bytes"
            )));
        }
        let offset = abi::dmp::WINDOW_RESERVED + self.next_slot * SLOT;
        let stub_la = self.config.window_linear.wrapping_add(offset);
        let code = fault_gate::build_fault_stub(&FaultStubConfig {
            stub_la,
            window_la: self.config.window_linear,
            window_len,
            view_base: base,
            view_size,
            original_handler: handler,
            call: self.config.call,
            last_fault: self.last_fault_word(),
            stack_top: self.last_fault_word() + 8 - 4096 + abi::dmp::SCRATCH_STACK_TOP,
            stack_size: abi::dmp::SCRATCH_STACK_SIZE,
        })
        .map_err(|e| give_up(format!("{e}")))?;
        let slots = (code.len() as u64).div_ceil(SLOT);
        if self.next_slot + slots > self.capacity() {
            return Err(give_up(String::from("window full")));
        }
        self.write_stub(offset, &code, guest).map_err(give_up)?;
        self.next_slot += slots;

        hook.new = fault_gate::with_offset(&hook.old, stub_la);
        match guest.patch(hook.gate_la, true, &hook.old, &hook.new) {
            Ok(()) => {}
            Err(Failure::Busy) => {
                return Err(InstallFailed {
                    why: None,
                    stub_in_use: false,
                })
            }
            Err(e) => return Err(give_up(format!("#PF gate not patched ({e:?})"))),
        }
        if let Err(e) = guest.control(dmp_op::FORWARD_FAULTS, 1) {
            // The stub works without forwarding too (every fault it gets was reflected by the
            // kernel), so a gate that cannot be restored now is restored later.
            let why = format!("forwarding refused ({e:?})");
            return match self.unhook(&hook, guest) {
                Ok(()) => Err(give_up(why)),
                Err(Failure::Busy) => {
                    self.forwarding = Forwarding::Unhooking {
                        hook,
                        now: hook.at_install,
                    };
                    Err(InstallFailed {
                        why: Some(why),
                        stub_in_use: true,
                    })
                }
                Err(_) => Err(InstallFailed {
                    why: Some(why),
                    stub_in_use: true,
                }),
            };
        }
        self.forwarding = Forwarding::Live {
            hook,
            verified: false,
        };
        Ok(Event::ForwardingFaults {
            gate: hook.gate_la,
            handler,
            stub: stub_la,
            exits: hook.at_install,
        })
    }

    /// Swaps gate 14 back to the guest's handler, then removes the view.
    fn unhook(&self, hook: &Hook, guest: &mut impl GuestAccess) -> Result<(), Failure> {
        guest.patch(hook.gate_la, true, &hook.new, &hook.old)?;
        let _ = guest.control(abi::vm::dmp_op::VIEW, 0);
        Ok(())
    }

    /// Checks live forwarding against the page-fault exits `now`: rolls it back when they keep
    /// growing, finishes a rollback a busy gate postponed.
    fn verify_forwarding(
        &mut self,
        now: u64,
        guest: &mut impl GuestAccess,
        events: &mut Vec<Event>,
    ) {
        let (hook, now) = match self.forwarding {
            Forwarding::Live { hook, verified } => {
                if now <= hook.at_install.saturating_add(self.config.slack) {
                    if !verified {
                        self.forwarding = Forwarding::Live {
                            hook,
                            verified: true,
                        };
                        events.push(Event::ForwardingHeld {
                            at_install: hook.at_install,
                            now,
                        });
                    }
                    return;
                }
                if guest.control(abi::vm::dmp_op::FORWARD_FAULTS, 0).is_err() {
                    // Still forwarding (the stub is needed): try again with the next profile.
                    return;
                }
                (hook, now)
            }
            Forwarding::Unhooking { hook, now } => (hook, now),
            Forwarding::Off | Forwarding::Done => return,
        };
        let why = match self.unhook(&hook, guest) {
            Ok(()) => None,
            Err(Failure::Busy) => {
                self.forwarding = Forwarding::Unhooking { hook, now };
                return;
            }
            // The guest rewrote its gate: the stub (and the view it needs) stay.
            Err(e) => Some(format!("#PF gate not restored ({e:?})")),
        };
        self.forwarding = Forwarding::Done;
        events.push(Event::ForwardingRolledBack {
            at_install: hook.at_install,
            now,
            why,
        });
    }

    /// Patches the UART site at `rip` (`dmp::uart`: an LSR read or a THR write), reading the
    /// bytes before it too (the port load the patch may displace): `Ok(None)` to retry later,
    /// `Err` to give up on it.
    fn try_uart(
        &mut self,
        rip: u64,
        count: u64,
        guest: &mut impl GuestAccess,
    ) -> Result<Option<Event>, String> {
        use crate::uart::{plan_uart_patch, UartWindow, BEFORE};
        let code = read_code(rip, guest)?;
        let n = ((rip & 0xfff) as usize).min(BEFORE);
        let mut before = vec![0u8; n];
        if n > 0 {
            guest
                .read(rip - n as u64, true, &mut before)
                .map_err(|e| format!("code unreadable ({e:?})"))?;
        }
        let site = classify(&code, rip, Exit::Io, Bitness::Bits64, false);
        let slot = self.next_slot;
        if slot >= self.capacity() {
            return Err(String::from("window full"));
        }
        let offset = abi::dmp::WINDOW_RESERVED + slot * SLOT;
        let stub_la = self.config.window_linear.wrapping_add(offset);
        let window = UartWindow::new(self.config.window_linear, self.config.window_pages);
        let up = plan_uart_patch(&site, &before, stub_la, &window, self.config.call)
            .map_err(|e| format!("{e}"))?;
        let stub = up.build(SLOT as usize).map_err(|e| format!("{e:?}"))?;
        self.write_stub(offset, &stub.code, guest)?;
        self.next_slot += 1;
        match guest.patch(up.plan.site, true, &up.plan.expected, &up.plan.new) {
            Ok(()) => {}
            Err(Failure::Busy) => return Ok(None),
            Err(e) => return Err(format!("site not patched ({e:?})")),
        }
        confirm(up.plan.site, &up.plan.new, guest)?;
        self.patches.push(Patch {
            rip,
            address: up.plan.site,
            reason: Exit::Io,
            expected: up.plan.expected.clone(),
            new: up.plan.new.clone(),
            count_at_patch: count,
            live: true,
            verified: false,
        });
        Ok(Some(Event::Patched {
            rip,
            form: up.form(&window),
            stub: stub_la,
            displaced: up.plan.covered,
            count,
        }))
    }

    /// Patches the site at `rip`: `Ok(None)` to retry later, `Err` to give up on it.
    fn try_patch(
        &mut self,
        rip: u64,
        count: u64,
        reason: Exit,
        guest: &mut impl GuestAccess,
    ) -> Result<Option<Event>, String> {
        let code = read_code(rip, guest)?;
        let site = classify(&code, rip, reason, Bitness::Bits64, false);
        let form = match site.kind {
            SiteKind::Cr3Read { gpr } => format!("mov {gpr:?}, cr3").to_lowercase(),
            // The hypercall does the INVLPG and maps the page again, saving the refill fault.
            SiteKind::Invlpg { .. } => String::from("invlpg"),
            _ => return Err(format!("{:?}: not handled yet", site.kind)),
        };
        let slot = self.next_slot;
        if slot >= self.capacity() {
            return Err(String::from("window full"));
        }
        let offset = abi::dmp::WINDOW_RESERVED + slot * SLOT;
        let stub_la = self.config.window_linear.wrapping_add(offset);
        let plan = plan_patch(&site, stub_la).map_err(|e| format!("{e:?}"))?;
        let cr3_field = self.config.window_linear.wrapping_add(abi::vm::WINDOW_CR3);
        let repl = match site.kind {
            SiteKind::Invlpg { .. } => replacement::invlpg(&site, self.config.call),
            _ => replacement::cr3_read(&site, cr3_field),
        }
        .map_err(|e| format!("{e:?}"))?;
        let stub = build_stub(&plan, &repl, SLOT as usize).map_err(|e| format!("{e:?}"))?;
        self.write_stub(offset, &stub.code, guest)?;
        self.next_slot += 1;
        // After the exit that made the site hot the vCPU usually stands right behind the hot
        // instruction, inside the range: it goes on at that instruction's copy in the stub.
        let after = plan.displaced[0].next_ip();
        let swapped = match stub.offsets.first() {
            Some(Some(at)) if after < plan.resume() => guest.patch_moving(
                rip,
                &plan.expected,
                &plan.new,
                after,
                stub.address + *at as u64,
            ),
            _ => guest.patch(rip, true, &plan.expected, &plan.new),
        };
        match swapped {
            Ok(()) => {}
            Err(Failure::Busy) => {
                // The stub stays in its slot; the next profile tries the site again with a new
                // slot (slots are plentiful, and a half-used one is never reused).
                return Ok(None);
            }
            Err(e) => return Err(format!("site not patched ({e:?})")),
        }
        confirm(rip, &plan.new, guest)?;
        self.patches.push(Patch {
            rip,
            address: rip,
            reason,
            expected: plan.expected.clone(),
            new: plan.new.clone(),
            count_at_patch: count,
            live: true,
            verified: false,
        });
        Ok(Some(Event::Patched {
            rip,
            form,
            stub: stub_la,
            displaced: plan.covered,
            count,
        }))
    }
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Event::Patched {
                rip,
                form,
                stub,
                displaced,
                count,
            } => write!(
                f,
                "patched {rip:#x} ({form}, {count} exits): jmp to stub {stub:#x}, {displaced} bytes displaced"
            ),
            Event::NotPatched { rip, why } => write!(f, "not patching {rip:#x}: {why}"),
            Event::RolledBack { rip, at_patch, now } => write!(
                f,
                "rolled back {rip:#x}: still hot ({at_patch} exits at the patch, {now} now)"
            ),
            Event::Held {
                rip,
                at_patch,
                now: Evidence::Count(now),
            } => write!(
                f,
                "patch at {rip:#x} holds ({at_patch} exits at the patch, {now} now)"
            ),
            Event::Held {
                rip,
                at_patch,
                now: Evidence::AtMost(now),
            } => write!(
                f,
                "patch at {rip:#x} holds ({at_patch} exits at the patch, at most {now} now: out of the hottest sites)"
            ),
            Event::RollbackFailed { rip, why } => {
                write!(f, "rollback of {rip:#x} failed ({why}); retried")
            }
            Event::ForwardingFaults {
                gate,
                handler,
                stub,
                exits,
            } => write!(
                f,
                "forwarding page faults ({exits} exits): #PF gate {gate:#x} to stub {stub:#x} (handler {handler:#x})"
            ),
            Event::NotForwarding { why } => write!(f, "not forwarding page faults: {why}"),
            Event::ForwardingRolledBack {
                at_install,
                now,
                why,
            } => {
                write!(
                    f,
                    "page-fault forwarding rolled back ({at_install} page-fault exits at the install, {now} now)"
                )?;
                match why {
                    Some(why) => write!(f, ": {why}"),
                    None => Ok(()),
                }
            }
            Event::ForwardingHeld { at_install, now } => write!(
                f,
                "page-fault forwarding holds ({at_install} page-fault exits at the install, {now} now)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::profile::HotSite;
    use std::collections::HashMap;

    const WINDOW_LA: u64 = 0xffff_ffff_fff0_0000;
    const WINDOW_PA: u64 = 0xf_0000;

    /// Guest memory as a byte map; linear addresses below 1 GiB are identity, the window maps
    /// to its physical pages.
    #[derive(Default)]
    struct Fake {
        bytes: HashMap<u64, u8>,
        busy_once: bool,
        patches: usize,
        /// `VmDmp` operations the fake kernel refuses.
        refuse: Vec<u64>,
        /// The fake kernel's state: the view's base, forwarding on.
        view: u64,
        forwarding: bool,
        /// Every `VmDmp` call.
        controls: Vec<(u64, u64)>,
        /// A lying kernel: patches answer Ok and change nothing.
        lie: bool,
        /// Patches refused from now on (a rollback that cannot happen).
        refuse_patches: bool,
    }

    impl Fake {
        fn phys(&self, address: u64, linear: bool) -> u64 {
            if linear && address >= WINDOW_LA {
                address - WINDOW_LA + WINDOW_PA
            } else {
                address
            }
        }
        fn put(&mut self, at: u64, code: &[u8]) {
            for (i, b) in code.iter().enumerate() {
                self.bytes.insert(at + i as u64, *b);
            }
        }
        fn get(&self, at: u64, n: usize) -> Vec<u8> {
            (0..n as u64)
                .map(|i| *self.bytes.get(&(at + i)).unwrap_or(&0))
                .collect()
        }
    }

    impl GuestAccess for Fake {
        fn read(&mut self, address: u64, linear: bool, out: &mut [u8]) -> Result<(), Failure> {
            let pa = self.phys(address, linear);
            out.copy_from_slice(&self.get(pa, out.len()));
            Ok(())
        }
        fn control(&mut self, op: u64, arg: u64) -> Result<(), Failure> {
            use abi::vm::{dmp_op, WINDOW_VIEW_BASE, WINDOW_VIEW_SIZE};
            self.controls.push((op, arg));
            if self.refuse.contains(&op) {
                return Err(Failure::Refused);
            }
            match op {
                dmp_op::VIEW => {
                    self.view = arg;
                    let size = if arg == 0 { 0 } else { GUEST_RAM };
                    self.put(WINDOW_PA + WINDOW_VIEW_BASE, &arg.to_le_bytes());
                    self.put(WINDOW_PA + WINDOW_VIEW_SIZE, &size.to_le_bytes());
                }
                dmp_op::FORWARD_FAULTS => self.forwarding = arg == 1,
                _ => return Err(Failure::Refused),
            }
            Ok(())
        }
        fn patch(
            &mut self,
            address: u64,
            linear: bool,
            expected: &[u8],
            new: &[u8],
        ) -> Result<(), Failure> {
            if linear && core::mem::take(&mut self.busy_once) {
                return Err(Failure::Busy);
            }
            if self.refuse_patches {
                return Err(Failure::Refused);
            }
            if self.lie {
                return Ok(());
            }
            let pa = self.phys(address, linear);
            if self.get(pa, expected.len()) != expected {
                return Err(Failure::Mismatch);
            }
            self.put(pa, new);
            self.patches += 1;
            Ok(())
        }
    }

    fn config() -> Config {
        Config {
            threshold: 1000,
            slack: 100,
            window_linear: WINDOW_LA,
            window_physical: WINDOW_PA,
            window_pages: 16,
            view_base: VIEW,
            call: HypercallInsn::Vmmcall,
        }
    }

    fn batch(sites: &[(Exit, u64, u64)]) -> ProfileBatch {
        let mut b = ProfileBatch::new(1, 1);
        for &(reason, rip, count) in sites {
            b.sites
                .push(HotSite {
                    reason: reason as u8,
                    rip,
                    count,
                    error: 0,
                })
                .unwrap();
        }
        b
    }

    /// `mov rax, cr3; mov [rdi], rax; ret` at 0x10_0000.
    const SITE: u64 = 0x10_0000;
    const CODE: [u8; 7] = [0x0f, 0x20, 0xd8, 0x48, 0x89, 0x07, 0xc3];

    #[test]
    fn patches_a_hot_invlpg_into_the_hypercall() {
        // `invlpg [rdi]; pop rbp; ret`, as the test OS's `arch::invlpg` compiles.
        let mut g = Fake::default();
        g.put(SITE, &[0x0f, 0x01, 0x3f, 0x5d, 0xc3]);
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(&batch(&[(Exit::Invlpg, SITE, 5000)]), &mut g);
        let [Event::Patched { form, stub, .. }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert_eq!(form, "invlpg");
        assert_eq!(g.get(SITE, 1), [0xe9]);
        // The stub makes the kernel's INVLPG hypercall: RAX = 1, RBX = the operand's address.
        let code = g.get(*stub - WINDOW_LA + WINDOW_PA, SLOT as usize);
        let text: Vec<_> = iced_x86::Decoder::with_ip(64, &code, *stub, 0)
            .into_iter()
            .take_while(|i| !i.is_invalid())
            .map(|i| i.mnemonic())
            .collect();
        assert!(text.contains(&iced_x86::Mnemonic::Vmmcall), "{text:?}");
        assert!(!text.contains(&iced_x86::Mnemonic::Invlpg), "{text:?}");
        // A later profile where the site stayed cold: the patch holds.
        let ev = p.on_profile(&batch(&[(Exit::Invlpg, SITE, 5000)]), &mut g);
        assert!(matches!(&ev[..], [Event::Held { .. }]), "{ev:?}");
    }

    #[test]
    fn patches_a_hot_cr3_read_and_keeps_it_when_it_cools() {
        let mut g = Fake::default();
        g.put(SITE, &CODE);
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        assert!(
            matches!(
                &ev[..],
                [Event::Patched {
                    rip: SITE,
                    displaced: 6,
                    ..
                }]
            ),
            "{ev:?}"
        );
        // The site now jumps into the window; the stub is there.
        assert_eq!(g.get(SITE, 1), [0xe9]);
        let stub = WINDOW_PA + abi::dmp::WINDOW_RESERVED;
        assert_ne!(g.get(stub, 16), vec![0; 16]);
        assert_eq!(p.live(), 1);
        // The next profile shows (almost) no new exits there: the patch holds.
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5010)]), &mut g);
        assert!(
            matches!(
                &ev[..],
                [Event::Held {
                    now: Evidence::Count(5010),
                    ..
                }]
            ),
            "{ev:?}"
        );
        assert_eq!(p.live(), 1);
    }

    #[test]
    fn rolls_back_a_patch_that_does_not_help() {
        let mut g = Fake::default();
        g.put(SITE, &CODE);
        let mut p = GuestPolicy::new(config());
        p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 9000)]), &mut g);
        assert!(
            matches!(&ev[..], [Event::RolledBack { now: 9000, .. }]),
            "{ev:?}"
        );
        assert_eq!(g.get(SITE, CODE.len()), CODE);
        assert_eq!(p.live(), 0);
    }

    #[test]
    fn cold_sites_other_forms_and_busy_vcpus() {
        let mut g = Fake::default();
        g.put(SITE, &CODE);
        // invlpg [rax] at 0x20_0000: classified, not handled yet, not retried.
        g.put(0x20_0000, &[0x0f, 0x01, 0x38, 0x90, 0x90, 0x90, 0xc3]);
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(
            &batch(&[
                (Exit::ControlRegister, SITE, 10),
                (Exit::ControlRegister, 0x20_0000, 5000),
            ]),
            &mut g,
        );
        assert!(
            matches!(&ev[..], [Event::NotPatched { rip: 0x20_0000, .. }]),
            "{ev:?}"
        );
        assert_eq!(g.get(SITE, CODE.len()), CODE);
        // A busy vCPU postpones the patch; the next profile does it.
        g.busy_once = true;
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        assert!(ev.is_empty(), "{ev:?}");
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 6000)]), &mut g);
        assert!(matches!(&ev[..], [Event::Patched { .. }]), "{ev:?}");
        // A changed site (the guest rewrote its code) is given up.
        let mut g2 = Fake::default();
        g2.put(SITE, &[0x90; 7]);
        let mut p2 = GuestPolicy::new(config());
        let ev = p2.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g2);
        assert!(matches!(&ev[..], [Event::NotPatched { .. }]), "{ev:?}");
    }

    const VIEW: u64 = 0xffff_ff80_0000_0000;
    const GUEST_RAM: u64 = 256 << 20;
    /// The guest's IDT (identity-mapped), its #PF gate and handler.
    const IDT: u64 = 0x8000;
    const GATE: u64 = IDT + 14 * 16;
    const HANDLER: u64 = 0xffff_ffff_8100_2000;

    /// A guest with an IDT whose #PF gate is `gate`, and the IDTR in the window.
    fn idt_guest(gate: Gate, limit: u64) -> Fake {
        let mut g = Fake::default();
        g.put(WINDOW_PA + abi::vm::WINDOW_IDTR_BASE, &IDT.to_le_bytes());
        g.put(WINDOW_PA + abi::vm::WINDOW_IDTR_LIMIT, &limit.to_le_bytes());
        let mut bytes = gate.encode();
        bytes[13] = 0x5a; // reserved bits a compare-and-swap must keep
        g.put(GATE, &bytes);
        g
    }

    fn pf_gate() -> Gate {
        Gate {
            offset: HANDLER,
            selector: 0x10,
            ist: 0,
            attributes: 0x8e,
        }
    }

    /// A profile with `faults` page-fault exits (by reason, no sites).
    fn faults(n: u64) -> ProfileBatch {
        let mut b = batch(&[]);
        b.by_reason[Exit::PageFault as usize] = n;
        b
    }

    fn gate_now(g: &Fake) -> Gate {
        let mut b = [0u8; GATE_LEN];
        b.copy_from_slice(&g.get(GATE, GATE_LEN));
        assert_eq!(b[13], 0x5a);
        Gate::parse(&b)
    }

    #[test]
    fn forwards_hot_page_faults_and_keeps_it() {
        use abi::vm::dmp_op;
        let mut g = idt_guest(pf_gate(), 0xfff);
        let mut p = GuestPolicy::new(config());
        // Below the threshold: nothing.
        assert!(p.on_profile(&faults(999), &mut g).is_empty());
        assert!(g.controls.is_empty());
        let ev = p.on_profile(&faults(5000), &mut g);
        let stub = WINDOW_LA + abi::dmp::WINDOW_RESERVED;
        assert_eq!(
            ev,
            [Event::ForwardingFaults {
                gate: GATE,
                handler: HANDLER,
                stub,
                exits: 5000
            }]
        );
        assert!(p.forwarding() && g.forwarding);
        assert_eq!(g.view, VIEW);
        // VIEW before FORWARD_FAULTS, nothing else
        assert_eq!(
            g.controls,
            [(dmp_op::VIEW, VIEW), (dmp_op::FORWARD_FAULTS, 1)]
        );
        // the gate points at the stub, everything else kept
        assert_eq!(
            gate_now(&g),
            Gate {
                offset: stub,
                ..pf_gate()
            }
        );
        // the stub in the window is the one for this guest
        let code = fault_gate::build_fault_stub(&FaultStubConfig {
            stub_la: stub,
            window_la: WINDOW_LA,
            window_len: 16 * 4096,
            view_base: VIEW,
            view_size: GUEST_RAM,
            original_handler: HANDLER,
            call: HypercallInsn::Vmmcall,
            last_fault: WINDOW_LA + 16 * 4096 - 8,
            stack_top: WINDOW_LA + 16 * 4096 - 16,
            stack_size: abi::dmp::SCRATCH_STACK_SIZE,
        })
        .unwrap();
        let at = WINDOW_PA + abi::dmp::WINDOW_RESERVED;
        assert_eq!(g.get(at, code.len()), code);
        // A CR3 read patched afterwards takes the slot after the stub's.
        g.put(SITE, &CODE);
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        let slots = (code.len() as u64).div_ceil(SLOT);
        assert!(
            matches!(&ev[..], [Event::ForwardingHeld { at_install: 5000, now: 0 }, Event::Patched { stub: s, .. }] if *s == stub + slots * SLOT),
            "{ev:?}"
        );
        // Page faults stay quiet: nothing more to say about them, nor about the patch, which a
        // table that is not full no longer lists (no evidence either way).
        let ev = p.on_profile(&faults(5050), &mut g);
        assert!(ev.is_empty(), "{ev:?}");
        assert!(p.forwarding());
    }

    /// A full table of other sites, the coldest with `coldest` exits.
    fn full_table(coldest: u64) -> ProfileBatch {
        let sites: Vec<(Exit, u64, u64)> = (0..abi::profile::MAX_SITES as u64)
            .map(|i| (Exit::Cpuid, 0x50_0000 + i, coldest + i))
            .collect();
        batch(&sites)
    }

    #[test]
    fn holds_only_on_evidence() {
        let mut g = Fake::default();
        g.put(SITE, &CODE);
        let mut p = GuestPolicy::new(config());
        p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        // Missing from a table that is not full: no claim.
        let ev = p.on_profile(&batch(&[(Exit::Cpuid, 0x50_0000, 7000)]), &mut g);
        assert!(ev.is_empty(), "{ev:?}");
        // Missing from a full table whose coldest entry is far above the patch's count: no
        // claim, and no rollback on a mere bound either.
        let ev = p.on_profile(&full_table(90_000), &mut g);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(p.live(), 1);
        // Missing from a full table whose coldest entry is within the slack: holds, with the
        // bound said as a bound.
        let ev = p.on_profile(&full_table(5001), &mut g);
        let [e @ Event::Held {
            now: Evidence::AtMost(5001),
            ..
        }] = &ev[..]
        else {
            panic!("{ev:?}")
        };
        assert!(e.to_string().contains("at most 5001 now"), "{e}");
    }

    #[test]
    fn a_patch_that_did_not_take_is_not_claimed() {
        let mut g = Fake {
            lie: true,
            ..Fake::default()
        };
        g.put(SITE, &CODE);
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        let [Event::NotPatched { why, .. }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert!(why.contains("did not take"), "{why}");
        assert_eq!(p.live(), 0);
    }

    #[test]
    fn a_failed_rollback_is_said() {
        let mut g = Fake::default();
        g.put(SITE, &CODE);
        let mut p = GuestPolicy::new(config());
        p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 5000)]), &mut g);
        g.refuse_patches = true;
        let ev = p.on_profile(&batch(&[(Exit::ControlRegister, SITE, 9000)]), &mut g);
        assert!(
            matches!(&ev[..], [Event::RollbackFailed { rip: SITE, .. }]),
            "{ev:?}"
        );
        assert_eq!(p.live(), 1);
    }

    #[test]
    fn rolls_back_forwarding_that_does_not_help() {
        use abi::vm::dmp_op;
        let mut g = idt_guest(pf_gate(), 0xfff);
        let mut p = GuestPolicy::new(config());
        p.on_profile(&faults(5000), &mut g);
        assert!(g.forwarding);
        let ev = p.on_profile(&faults(5101), &mut g);
        assert_eq!(
            ev,
            [Event::ForwardingRolledBack {
                at_install: 5000,
                now: 5101,
                why: None
            }]
        );
        assert!(!p.forwarding() && !g.forwarding);
        assert_eq!(gate_now(&g), pf_gate());
        assert_eq!(g.view, 0);
        // forwarding off before the gate goes back, then the view
        assert_eq!(
            &g.controls[2..],
            [(dmp_op::FORWARD_FAULTS, 0), (dmp_op::VIEW, 0)]
        );
        // never again
        assert!(p.on_profile(&faults(50_000), &mut g).is_empty());
        assert_eq!(g.controls.len(), 4);
    }

    #[test]
    fn page_fault_count_from_sites() {
        // Only hot sites, no per-reason counts: their sum counts.
        let mut g = idt_guest(pf_gate(), 0xfff);
        let mut p = GuestPolicy::new(config());
        let b = batch(&[
            (Exit::PageFault, 0x1000, 600),
            (Exit::ControlRegister, SITE, 10),
            (Exit::PageFault, 0x2000, 500),
        ]);
        assert_eq!(page_fault_exits(&b), 1100);
        let ev = p.on_profile(&b, &mut g);
        assert!(
            matches!(&ev[..], [Event::ForwardingFaults { exits: 1100, .. }]),
            "{ev:?}"
        );
    }

    /// Runs one hot profile on `g`; returns the events and the policy.
    fn attempt(g: &mut Fake) -> (Vec<Event>, GuestPolicy) {
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(&faults(5000), g);
        (ev, p)
    }

    fn refused(g: &mut Fake) -> String {
        let (ev, mut p) = attempt(g);
        let [Event::NotForwarding { why }] = &ev[..] else {
            panic!("{ev:?}")
        };
        assert!(!p.forwarding() && !g.forwarding);
        // given up: no second attempt
        let n = g.controls.len();
        assert!(p.on_profile(&faults(9000), g).is_empty());
        assert_eq!(g.controls.len(), n);
        why.clone()
    }

    #[test]
    fn hostile_or_unusable_idts_are_refused() {
        use abi::vm::dmp_op;
        // An IDT too short for vector 14; a gate crossing a page; a not-present gate, a call
        // gate, an IST gate, a gate already in the window: refused, the view removed again.
        let mut g = idt_guest(pf_gate(), 14 * 16 + 14);
        assert!(refused(&mut g).contains("limit"));
        assert_eq!(g.view, 0);
        let mut g = idt_guest(pf_gate(), 0xfff);
        g.put(
            WINDOW_PA + abi::vm::WINDOW_IDTR_BASE,
            &(0x1000u64 - 14 * 16 - 8).to_le_bytes(),
        );
        assert!(refused(&mut g).contains("crosses"));
        for gate in [
            Gate {
                attributes: 0x0e,
                ..pf_gate()
            },
            Gate {
                attributes: 0x8c,
                ..pf_gate()
            },
            Gate {
                ist: 1,
                ..pf_gate()
            },
            Gate {
                offset: WINDOW_LA + 0x100,
                ..pf_gate()
            },
        ] {
            let mut g = idt_guest(gate, 0xfff);
            refused(&mut g);
            assert_eq!(
                g.controls,
                [(dmp_op::VIEW, VIEW), (dmp_op::VIEW, 0)],
                "{gate:?}"
            );
            assert_eq!(gate_now(&g), gate);
        }
        // IDTR base near the top of the address space
        let mut g = idt_guest(pf_gate(), 0xfff);
        g.put(
            WINDOW_PA + abi::vm::WINDOW_IDTR_BASE,
            &u64::MAX.to_le_bytes(),
        );
        refused(&mut g);
        // The kernel refuses the view.
        let mut g = idt_guest(pf_gate(), 0xfff);
        g.refuse.push(dmp_op::VIEW);
        assert!(refused(&mut g).contains("view"));
        assert_eq!(gate_now(&g), pf_gate());
    }

    #[test]
    fn forwarding_refused_restores_the_gate_and_the_view() {
        use abi::vm::{dmp_op, WINDOW_VIEW_SIZE};
        let mut g = idt_guest(pf_gate(), 0xfff);
        g.refuse.push(dmp_op::FORWARD_FAULTS);
        assert!(refused(&mut g).contains("forwarding refused"));
        assert_eq!(gate_now(&g), pf_gate());
        assert_eq!(g.view, 0);
        // A view of size 0 in the window: refused, the view removed, the gate untouched.
        struct NoSize(Fake);
        impl GuestAccess for NoSize {
            fn read(&mut self, a: u64, l: bool, out: &mut [u8]) -> Result<(), Failure> {
                self.0.read(a, l, out)
            }
            fn patch(&mut self, a: u64, l: bool, e: &[u8], n: &[u8]) -> Result<(), Failure> {
                self.0.patch(a, l, e, n)
            }
            fn control(&mut self, op: u64, arg: u64) -> Result<(), Failure> {
                self.0.control(op, arg)?;
                self.0
                    .put(WINDOW_PA + WINDOW_VIEW_SIZE, &0u64.to_le_bytes());
                Ok(())
            }
        }
        let mut g = NoSize(idt_guest(pf_gate(), 0xfff));
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(&faults(5000), &mut g);
        assert!(matches!(&ev[..], [Event::NotForwarding { .. }]), "{ev:?}");
        assert_eq!(g.0.view, 0);
        assert_eq!(gate_now(&g.0), pf_gate());
    }

    #[test]
    fn a_busy_gate_is_retried() {
        let mut g = idt_guest(pf_gate(), 0xfff);
        g.busy_once = true;
        let mut p = GuestPolicy::new(config());
        assert!(p.on_profile(&faults(5000), &mut g).is_empty());
        assert_eq!((g.view, g.forwarding), (0, false));
        let ev = p.on_profile(&faults(6000), &mut g);
        assert!(
            matches!(&ev[..], [Event::ForwardingFaults { exits: 6000, .. }]),
            "{ev:?}"
        );
        // the first stub's slots are not reused
        let Event::ForwardingFaults { stub, .. } = ev[0] else {
            unreachable!()
        };
        assert!(stub > WINDOW_LA + abi::dmp::WINDOW_RESERVED);
        // A rollback whose gate swap is busy finishes with the next profile.
        g.busy_once = true;
        assert!(p.on_profile(&faults(9000), &mut g).is_empty());
        assert!(!g.forwarding && !p.forwarding());
        assert_eq!(gate_now(&g).offset, stub);
        let ev = p.on_profile(&faults(9100), &mut g);
        assert!(
            matches!(
                &ev[..],
                [Event::ForwardingRolledBack {
                    now: 9000,
                    why: None,
                    ..
                }]
            ),
            "{ev:?}"
        );
        assert_eq!(gate_now(&g), pf_gate());
        assert_eq!(g.view, 0);
    }

    #[test]
    fn hostile_window_words_and_gates_never_panic() {
        // xorshift64*: random IDTR words, gate bytes, view answers and page-fault counts.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut installed = 0;
        for i in 0..2000 {
            let mut g = Fake::default();
            let base = [IDT, next(), u64::MAX - 8, 0xfff][i % 4];
            let limit = [0xfff, next(), 0, 14 * 16 + 15][(i / 4) % 4];
            g.put(WINDOW_PA + abi::vm::WINDOW_IDTR_BASE, &base.to_le_bytes());
            g.put(WINDOW_PA + abi::vm::WINDOW_IDTR_LIMIT, &limit.to_le_bytes());
            let mut gate = [0u8; GATE_LEN];
            for b in gate.iter_mut() {
                *b = next() as u8;
            }
            if i % 3 == 0 {
                gate[4] = 0;
                gate[5] = 0x8e;
            }
            g.put(base.wrapping_add(14 * 16), &gate);
            if i % 5 == 0 {
                g.refuse.push(next() % 3);
            }
            let mut p = GuestPolicy::new(Config {
                window_pages: [16, 0, 1, u64::MAX][(i / 16) % 4],
                ..config()
            });
            for n in [next() % 4000, next() % 8000, next()] {
                for e in p.on_profile(&faults(n), &mut g) {
                    if let Event::ForwardingFaults { gate: at, .. } = e {
                        assert_eq!(at, base + 14 * 16);
                        installed += 1;
                    }
                    let _ = alloc::format!("{e}");
                }
            }
        }
        assert!(installed > 0);
    }

    /// grt's polled print loop (release pagingos): `mov dx, 0x3f8; mov eax, esi; out dx, al`
    /// at 0x108220, `mov dx, 0x3fd; in al, dx; test al, 0x20; jne` at 0x108240.
    const GRT: [u8; 65] = [
        0x48, 0xd1, 0xe9, 0x74, 0x36, 0x4c, 0x01, 0xc1, 0xeb, 0x0c, 0x66, 0xba, 0xf8, 0x03, 0x89,
        0xf0, 0xee, 0x49, 0x39, 0xc8, 0x74, 0x25, 0x41, 0x0f, 0xb6, 0x30, 0x49, 0xff, 0xc0, 0xbf,
        0x40, 0x42, 0x0f, 0x00, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0xba, 0xfd,
        0x03, 0xec, 0xa8, 0x20, 0x75, 0xd7, 0xf3, 0x90, 0xff, 0xcf, 0x75, 0xf1, 0xeb, 0xcf, 0x48,
        0x83, 0xc4, 0x10, 0x5d, 0xc3,
    ];

    #[test]
    fn patches_hot_uart_sites_from_the_port_load_and_rolls_them_back_there() {
        let mut g = Fake::default();
        g.put(0x10_8216, &GRT);
        let mut p = GuestPolicy::new(config());
        let ev = p.on_profile(
            &batch(&[(Exit::Io, 0x10_8244, 5000), (Exit::Io, 0x10_8226, 5000)]),
            &mut g,
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(ev[0]
            .to_string()
            .contains("(in al, dx (LSR 0x3fd, port load displaced)"));
        assert!(ev[1]
            .to_string()
            .contains("(out dx, al (THR 0x3f8, port load displaced)"));
        // The jumps start at the port loads.
        assert_eq!(g.get(0x10_8240, 1), [0xe9]);
        assert_eq!(g.get(0x10_8220, 1), [0xe9]);
        // Still hot: both swapped back, from where they start.
        let ev = p.on_profile(
            &batch(&[(Exit::Io, 0x10_8244, 9000), (Exit::Io, 0x10_8226, 9000)]),
            &mut g,
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(g.get(0x10_8216, GRT.len()), GRT);
    }
}
