//! The thread's message area (UTCB) and the IPC built on it.
//!
//! A message is a label, up to [`MSG_WORDS`] untyped words and optionally one capability
//! (`abi::utcb`). Structured payloads are postcard encodings packed by [`uwire`]: **word 0 holds
//! the byte length, the bytes follow from word 1 on, eight per word, little-endian**; the label
//! stays free for the operation code. Replies of the system's protocols carry an
//! [`abi::Status`] code in word 0 (see [`Utcb::reply_status`]).
//!
//! The kernel writes the UTCB during the IPC syscalls, which therefore take `&mut Utcb`; the
//! accessors borrow it only between syscalls.

use abi::utcb::{self, MsgTag, MSG_WORDS};
use abi::{Rights, Sel, Status};
use serde::{Deserialize, Serialize};

use crate::{syscall, Error};

/// A handle to the calling thread's UTCB page. Not `Send`: a UTCB belongs to one thread.
pub struct Utcb {
    page: *mut utcb::Utcb,
}

impl Utcb {
    /// The UTCB at user address `addr`.
    ///
    /// # Safety
    ///
    /// `addr` is the calling thread's mapped UTCB page, and no other handle to it is used while
    /// this one is.
    pub unsafe fn from_addr(addr: u64) -> Utcb {
        Utcb {
            page: addr as *mut utcb::Utcb,
        }
    }

    /// Its user address.
    pub fn addr(&self) -> u64 {
        self.page as u64
    }

    fn page(&self) -> &utcb::Utcb {
        // SAFETY: the page is mapped (see `from_addr`), properly aligned, and the kernel writes it
        // only during the IPC syscalls (which take `&mut self`) or while this thread is stopped
        // on a fault, so no write happens while this shared borrow lives.
        unsafe { &*self.page }
    }

    fn page_mut(&mut self) -> &mut utcb::Utcb {
        // SAFETY: as for `page`; `&mut self` makes this the only borrow.
        unsafe { &mut *self.page }
    }

    /// The message's tag.
    pub fn tag(&self) -> MsgTag {
        self.page().tag
    }

    /// The message's label (operation code).
    pub fn label(&self) -> u64 {
        self.tag().label()
    }

    /// The message's words (an invalid word count reads as none).
    pub fn words(&self) -> &[u64] {
        let count = self.tag().words().unwrap_or(0);
        &self.page().words[..count]
    }

    /// Word `i` of the message, 0 beyond its end.
    pub fn word(&self, i: usize) -> u64 {
        self.words().get(i).copied().unwrap_or(0)
    }

    /// The badge of the portal that delivered the current call.
    pub fn badge(&self) -> u64 {
        self.page().badge
    }

    /// Whether the last message received brought a capability (at [`Utcb::cap_recv`]).
    pub fn cap_received(&self) -> bool {
        self.page().cap_received == 1
    }

    /// Where a received capability lands.
    pub fn cap_recv(&self) -> Sel {
        Sel::new(self.page().cap_recv)
    }

    /// Sets where a received capability lands (a free selector of this domain).
    pub fn set_cap_recv(&mut self, sel: Sel) {
        self.page_mut().cap_recv = sel.raw();
    }

    /// Makes the message `label` with `words` (at most [`MSG_WORDS`]; more are cut), no
    /// capability.
    pub fn set_msg(&mut self, label: u64, words: &[u64]) {
        let count = words.len().min(MSG_WORDS);
        let page = self.page_mut();
        page.words[..count].copy_from_slice(&words[..count]);
        page.tag = MsgTag::new(label, count, false);
    }

    /// Sets word `i` (`i < MSG_WORDS`) and grows the word count to cover it; other words keep
    /// their values.
    pub fn set_word(&mut self, i: usize, value: u64) {
        if i >= MSG_WORDS {
            return;
        }
        let tag = self.tag();
        let count = tag.words().unwrap_or(0).max(i + 1);
        let page = self.page_mut();
        page.words[i] = value;
        page.tag = MsgTag::new(tag.label(), count, tag.has_cap());
    }

    /// Makes the message `label` with `value` postcard-encoded as its payload.
    pub fn set_payload<T: Serialize + ?Sized>(
        &mut self,
        label: u64,
        value: &T,
    ) -> Result<(), Error> {
        let page = self.page_mut();
        let count = uwire::encode(value, &mut page.words)?;
        page.tag = MsgTag::new(label, count, false);
        Ok(())
    }

    /// Decodes the message's payload; the value may borrow from `buf`.
    pub fn payload<'b, T: Deserialize<'b>>(&self, buf: &'b mut uwire::Buf) -> Result<T, Error> {
        Ok(uwire::decode(self.words(), buf)?)
    }

    /// Attaches capability `sel` to the message; the receiver gets a copy with `rights` (a
    /// subset of what this domain holds, which must include GRANT).
    pub fn attach_cap(&mut self, sel: Sel, rights: Rights) {
        let tag = self.tag();
        let page = self.page_mut();
        page.cap_send = sel.raw();
        page.cap_send_rights = u64::from(rights.0);
        page.tag = MsgTag::new(tag.label(), tag.words().unwrap_or(0), true);
    }

    /// Sends the prepared message to `portal` and waits for the reply, which replaces it.
    pub fn call_msg(&mut self, portal: Sel) -> Result<(), Error> {
        syscall::call(self, portal)
    }

    /// Calls `portal` with `label` and `words`; the reply is in the UTCB afterwards.
    pub fn call(&mut self, portal: Sel, label: u64, words: &[u64]) -> Result<(), Error> {
        self.set_msg(label, words);
        self.call_msg(portal)
    }

    /// Replies with the prepared message (if serving a call) and waits on `portal`; returns the
    /// badge of the call that arrives.
    pub fn reply_wait(&mut self, portal: Sel) -> Result<u64, Error> {
        syscall::reply_wait(self, portal)
    }

    /// Replies with the prepared message and goes on running.
    pub fn reply(&mut self) -> Result<(), Error> {
        syscall::reply(self)
    }

    /// The protocol status in reply word 0 (a reply without words is malformed).
    pub fn reply_status(&self) -> Result<(), Error> {
        match self.words().first() {
            Some(&code) => Error::from_reply(code),
            None => Err(Error::Protocol),
        }
    }

    /// Makes a reply that carries only `status` in word 0.
    pub fn set_status(&mut self, status: Status) {
        self.set_msg(0, &[status as u64]);
    }
}

/// What a [`serve`] handler decides about the call it was given.
pub enum Next {
    /// Reply with the message now in the UTCB and wait for the next call.
    Reply,
    /// Stop serving; [`serve`] returns (the caller is still waiting for a reply).
    Stop,
}

/// Serves calls on `portal` (bound to this thread): waits, hands each call to `handler` with
/// its badge, replies with what the handler left in the UTCB, and repeats. Before every wait the
/// capability landing slot is set to `cap_recv`.
///
/// Returns `Ok` when the handler says [`Next::Stop`], or the error when waiting fails in a way
/// that retrying cannot fix (the portal is not this thread's, or is gone).
pub fn serve(
    utcb: &mut Utcb,
    portal: Sel,
    cap_recv: Sel,
    mut handler: impl FnMut(&mut Utcb, u64) -> Next,
) -> Result<(), Error> {
    // Nothing to reply to before the first call.
    utcb.set_msg(0, &[]);
    loop {
        utcb.set_cap_recv(cap_recv);
        match utcb.reply_wait(portal) {
            Ok(badge) => match handler(utcb, badge) {
                Next::Reply => {}
                Next::Stop => return Ok(()),
            },
            Err(e @ Error::Kernel(Status::BadSelector | Status::WrongKind | Status::NoRights)) => {
                return Err(e)
            }
            // The reply could not travel or the caller went away: wait again, replying nothing.
            Err(_) => utcb.set_msg(0, &[]),
        }
    }
}
