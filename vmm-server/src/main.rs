//! The per-guest VMM (filled in by issue #4).
#![no_std]
#![no_main]
#![deny(unsafe_code)]

rt::entry!(main);

fn main(_start: rt::Start) -> ! {
    rt::syscall::thread_exit()
}
