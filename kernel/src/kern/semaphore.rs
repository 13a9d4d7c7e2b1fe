//! The semaphore: a count and the threads waiting on it (IRQ lines signal one).

use alloc::collections::VecDeque;

use super::ids::{PdId, ThreadId};

pub struct Semaphore {
    pub count: u64,
    pub waiters: VecDeque<ThreadId>,
    /// The domain whose quota paid for it.
    pub owner: PdId,
}
