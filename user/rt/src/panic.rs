//! The panic handler: a best-effort message, then the thread ends.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::{log, syscall, thread, Utcb};

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // A panic while printing a panic (or in a second thread at once) prints nothing more.
    if !PANICKING.swap(true, Ordering::AcqRel) {
        let addr = thread::current_utcb();
        if addr != 0 {
            // SAFETY: `current_utcb` names this thread's UTCB. Another handle to it may exist up
            // the stack, but the thread never returns there: it ends below.
            let mut utcb = unsafe { Utcb::from_addr(addr) };
            let _ = log::print(&mut utcb, format_args!("{}: {info}\n", log::name()));
        }
        PANICKING.store(false, Ordering::Release);
    }
    syscall::thread_exit()
}
