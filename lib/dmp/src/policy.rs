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

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use abi::profile::ProfileBatch;
use abi::vm::Exit;

use crate::{build_stub, classify, plan_patch, replacement, Bitness, SiteKind, MAX_CODE};

/// What the policy needs from the guest.
pub trait GuestAccess {
    /// `out.len()` bytes at guest-linear `la` (inside one page).
    fn read(&mut self, la: u64, out: &mut [u8]) -> Result<(), Failure>;
    /// Compare-and-swap of guest bytes (guest-linear when `linear`, else guest-physical).
    fn patch(
        &mut self,
        address: u64,
        linear: bool,
        expected: &[u8],
        new: &[u8],
    ) -> Result<(), Failure>;
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
    Held {
        rip: u64,
        at_patch: u64,
        now: u64,
    },
}

#[derive(Clone, Debug)]
struct Patch {
    rip: u64,
    expected: Vec<u8>,
    new: Vec<u8>,
    count_at_patch: u64,
    live: bool,
    verified: bool,
}

/// The policy state of one guest.
pub struct GuestPolicy {
    config: Config,
    next_slot: u64,
    patches: Vec<Patch>,
    /// Sites decided against for good: (reason, rip).
    skipped: Vec<(u8, u64)>,
}

impl GuestPolicy {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            next_slot: 0,
            patches: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Live patches.
    pub fn live(&self) -> usize {
        self.patches.iter().filter(|p| p.live).count()
    }

    /// Acts on one profile: checks the patches made so far, then patches new hot sites.
    pub fn on_profile(&mut self, batch: &ProfileBatch, guest: &mut impl GuestAccess) -> Vec<Event> {
        let mut events = Vec::new();
        self.verify(batch, guest, &mut events);
        for site in &batch.sites {
            let Some(reason) = site.exit() else { continue };
            if site.count < self.config.threshold
                || self.skipped.contains(&(site.reason, site.rip))
                || self.patches.iter().any(|p| p.rip == site.rip)
            {
                continue;
            }
            if reason != Exit::ControlRegister {
                continue;
            }
            match self.try_patch(site.rip, site.count, reason, guest) {
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
        for p in self.patches.iter_mut().filter(|p| p.live) {
            let Some(now) = batch
                .sites
                .iter()
                .find(|s| s.rip == p.rip && s.exit() == Some(Exit::ControlRegister))
                .map(|s| s.count)
            else {
                // Out of the hottest sites: cold now.
                if !p.verified {
                    p.verified = true;
                    events.push(Event::Held {
                        rip: p.rip,
                        at_patch: p.count_at_patch,
                        now: p.count_at_patch,
                    });
                }
                continue;
            };
            if now > p.count_at_patch + slack {
                if guest.patch(p.rip, true, &p.new, &p.expected).is_ok() {
                    p.live = false;
                    events.push(Event::RolledBack {
                        rip: p.rip,
                        at_patch: p.count_at_patch,
                        now,
                    });
                }
            } else if !p.verified {
                p.verified = true;
                events.push(Event::Held {
                    rip: p.rip,
                    at_patch: p.count_at_patch,
                    now,
                });
            }
        }
    }

    /// Patches the site at `rip`: `Ok(None)` to retry later, `Err` to give up on it.
    fn try_patch(
        &mut self,
        rip: u64,
        count: u64,
        reason: Exit,
        guest: &mut impl GuestAccess,
    ) -> Result<Option<Event>, String> {
        let room = (4096 - (rip & 0xfff)).min(MAX_CODE as u64) as usize;
        let mut code = vec![0u8; room];
        guest
            .read(rip, &mut code)
            .map_err(|e| format!("code unreadable ({e:?})"))?;
        let site = classify(&code, rip, reason, Bitness::Bits64, false);
        let SiteKind::Cr3Read { gpr } = site.kind else {
            return Err(format!("{:?}: not handled yet", site.kind));
        };
        let slot = self.next_slot;
        let capacity = (self.config.window_pages * 4096 - abi::dmp::WINDOW_RESERVED) / SLOT;
        if slot >= capacity {
            return Err(String::from("window full"));
        }
        let offset = abi::dmp::WINDOW_RESERVED + slot * SLOT;
        let stub_la = self.config.window_linear + offset;
        let plan = plan_patch(&site, stub_la).map_err(|e| format!("{e:?}"))?;
        let cr3_field = self.config.window_linear + abi::vm::WINDOW_CR3;
        let repl = replacement::cr3_read(&site, cr3_field).map_err(|e| format!("{e:?}"))?;
        let stub = build_stub(&plan, &repl, SLOT as usize).map_err(|e| format!("{e:?}"))?;
        // The stub first (the window starts zeroed), in pieces that stay inside a page.
        let base = self.config.window_physical + offset;
        let mut done = 0;
        while done < stub.code.len() {
            let at = base + done as u64;
            let n = (stub.code.len() - done)
                .min(64)
                .min((4096 - (at & 0xfff)) as usize);
            let zeros = vec![0u8; n];
            guest
                .patch(at, false, &zeros, &stub.code[done..done + n])
                .map_err(|e| format!("stub not written ({e:?})"))?;
            done += n;
        }
        self.next_slot += 1;
        match guest.patch(rip, true, &plan.expected, &plan.new) {
            Ok(()) => {}
            Err(Failure::Busy) => {
                // The stub stays in its slot; the next profile tries the site again with a new
                // slot (slots are plentiful, and a half-used one is never reused).
                return Ok(None);
            }
            Err(e) => return Err(format!("site not patched ({e:?})")),
        }
        self.patches.push(Patch {
            rip,
            expected: plan.expected.clone(),
            new: plan.new.clone(),
            count_at_patch: count,
            live: true,
            verified: false,
        });
        Ok(Some(Event::Patched {
            rip,
            form: format!("mov {gpr:?}, cr3").to_lowercase(),
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
            Event::Held { rip, at_patch, now } => write!(
                f,
                "patch at {rip:#x} holds ({at_patch} exits at the patch, {now} now)"
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
        fn read(&mut self, la: u64, out: &mut [u8]) -> Result<(), Failure> {
            let pa = self.phys(la, true);
            out.copy_from_slice(&self.get(pa, out.len()));
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
        assert!(matches!(&ev[..], [Event::Held { now: 5010, .. }]), "{ev:?}");
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
}
