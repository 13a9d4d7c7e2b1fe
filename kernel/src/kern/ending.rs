//! How threads end: a thread (or vCPU) leaves every queue, the call it served fails, callers
//! queued on its portals fail, and its quota comes back.

use abi::Status;

use super::cost;
use super::exit;
use super::ids::{PortalId, ThreadId};
use super::state::Kernel;
use super::thread::State;

impl Kernel {
    /// Ends a thread: removes it from every queue, fails a call it was serving, and frees it.
    pub fn kill(&mut self, t: ThreadId) {
        let Some(thread) = self.threads.get(t) else {
            return;
        };
        let (state, serving, pd) = (thread.state, thread.serving, thread.pd);
        if let Some(vm) = thread.vcpu.as_ref().map(|v| v.vm) {
            exit::report_profile(self, vm);
        }
        match state {
            State::Calling(portal) => {
                if let Some(p) = self.portals.get_mut(portal) {
                    p.callers.retain(|&c| c != t);
                }
            }
            State::SemWait(sem) => {
                if let Some(s) = self.sems.get_mut(sem) {
                    s.waiters.retain(|&w| w != t);
                }
            }
            _ => {}
        }
        self.run.remove(t);
        self.timeouts.cancel(t);
        if self.current == Some(t) {
            self.current = None;
        }
        if let Some(caller) = serving {
            self.abort_call(caller);
        }
        // Callers whose call this thread was about to take stay queued on its portals; a call to
        // a portal whose handler is dead fails when it is attempted (see `ipc`).
        for portal in self.portals_handled_by(t) {
            self.abort_portal_callers(portal);
        }
        if let Some(pd) = self.pds.get_mut(pd) {
            pd.threads.retain(|&x| x != t);
        }
        if let Some(thread) = self.threads.remove(t) {
            let cost = match &thread.vcpu {
                Some(vcpu) => {
                    if let Some(v) = self.vms.get_mut(vcpu.vm) {
                        v.vcpus.retain(|&x| x != t);
                    }
                    cost::VCPU
                }
                None => cost::THREAD,
            };
            if let Some(payer) = thread.charged_to.and_then(|p| self.pds.get_mut(p)) {
                payer.quota.release(cost);
            }
        }
    }

    fn portals_handled_by(&self, t: ThreadId) -> alloc::vec::Vec<PortalId> {
        // Portals are few; a linear scan keeps the portal table free of back-pointers.
        let mut found = alloc::vec::Vec::new();
        self.portals.for_each(|id, p| {
            if p.handler == t {
                found.push(id);
            }
        });
        found
    }

    /// A caller's call ends without a reply.
    pub fn abort_call(&mut self, caller: ThreadId) {
        let faulted = self.threads.get(caller).is_some_and(|c| c.faulted);
        let vcpu = self.threads.get(caller).is_some_and(|c| c.vcpu.is_some());
        if faulted {
            log::warn!("thread {caller:?}: fault handler gone; thread ended");
            self.kill(caller);
        } else if vcpu {
            // An exit nobody answered must not be entered as if it had been handled.
            crate::println!("kernel: vCPU {caller:?}: its exit handler is gone; vCPU stopped");
            self.kill(caller);
        } else {
            self.set_result(caller, Status::Aborted, 0);
            self.wake(caller);
        }
    }

    /// Fails every call queued on `portal`.
    pub fn abort_portal_callers(&mut self, portal: PortalId) {
        let callers = match self.portals.get_mut(portal) {
            Some(p) => core::mem::take(&mut p.callers),
            None => return,
        };
        for caller in callers {
            self.abort_call(caller);
        }
    }
}
