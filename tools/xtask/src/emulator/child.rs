//! Emulator processes that never outlive the build tool.
//!
//! Each emulator runs in its own process group; it is killed as a group when its run ends, when
//! its [`Child`] guard is dropped (errors, panics), when xtask receives SIGINT/SIGTERM/SIGHUP, and
//! (through `PR_SET_PDEATHSIG`) when xtask dies.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use anyhow::{bail, Context, Result};

/// Process groups to kill on a fatal signal (0 = free slot).
static GROUPS: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];
static HANDLERS: Once = Once::new();

extern "C" fn on_fatal_signal(signal: libc::c_int) {
    for group in &GROUPS {
        let pgid = group.swap(0, Ordering::SeqCst);
        if pgid > 0 {
            // SAFETY: kill is async-signal-safe; a stale group id at worst yields ESRCH.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    // SAFETY: signal and raise are async-signal-safe; restoring the default action and raising
    // the signal again ends the process the way the signal meant to.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

fn install_handlers() {
    HANDLERS.call_once(|| {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only calls async-signal-safe functions and touches atomics.
            unsafe {
                libc::signal(
                    signal,
                    on_fatal_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
    });
}

/// A running emulator process (the leader of its own process group).
pub struct Child {
    inner: std::process::Child,
    slot: usize,
    exited: bool,
}

/// How the child's terminal is set up.
pub enum Terminal {
    /// Its own process group, standard input from /dev/null.
    None,
    /// A new session whose controlling terminal is this pseudo-terminal slave (stdin, stdout and
    /// stderr all on it).
    Pty(OwnedFd),
}

impl Child {
    pub fn spawn(mut cmd: Command, terminal: Terminal) -> Result<Self> {
        install_handlers();
        let slot = GROUPS
            .iter()
            .position(|g| g.load(Ordering::SeqCst) == 0)
            .context("too many emulators at once")?;
        match terminal {
            Terminal::None => {
                cmd.stdin(Stdio::null()).process_group(0);
                // SAFETY: between fork and exec only async-signal-safe prctl is called.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
            Terminal::Pty(slave) => {
                cmd.stdin(Stdio::from(slave.try_clone()?))
                    .stdout(Stdio::from(slave.try_clone()?))
                    .stderr(Stdio::from(slave));
                // SAFETY: between fork and exec only async-signal-safe calls are made: setsid
                // makes the child a session (and group) leader, TIOCSCTTY then makes its stdin
                // (the pty slave) its controlling terminal, prctl asks for SIGKILL if we die.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
            }
        }
        let inner = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
        let pid = i32::try_from(inner.id()).context("pid out of range")?;
        GROUPS[slot].store(pid, Ordering::SeqCst);
        Ok(Self {
            inner,
            slot,
            exited: false,
        })
    }

    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.stdout.take()
    }

    /// The exit status once the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.inner.try_wait()?;
        if status.is_some() {
            self.release();
        }
        Ok(status)
    }

    /// Kills the whole process group and reaps the leader.
    pub fn kill(&mut self) {
        if self.exited {
            return;
        }
        let pgid = self.inner.id() as i32;
        // SAFETY: the group is ours (we made it at spawn and have not reaped its leader yet).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.inner.wait();
        self.release();
    }

    fn release(&mut self) {
        self.exited = true;
        GROUPS[self.slot].store(0, Ordering::SeqCst);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pseudo-terminal pair (master, slave) of 80x25 characters.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut master = -1;
    let mut slave = -1;
    let size = libc::winsize {
        ws_row: 25,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out-pointers are valid; a null name and termios are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        bail!("openpty failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are open descriptors that nothing else owns.
    let pair = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    debug_assert!(pair.0.as_raw_fd() >= 0);
    Ok(pair)
}
