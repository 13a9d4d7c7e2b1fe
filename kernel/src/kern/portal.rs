//! The portal: an entry point into a handler thread, with the callers queued on it.

use alloc::collections::VecDeque;

use super::ids::{PdId, ThreadId};

pub struct Portal {
    pub handler: ThreadId,
    pub badge: u64,
    /// Callers waiting for the handler, in arrival order.
    pub callers: VecDeque<ThreadId>,
    /// The domain whose quota paid for it.
    pub owner: PdId,
}
