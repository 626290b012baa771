//! SIGINT and SIGTERM as a flag, so long-running commands (servers) stop cleanly: close their
//! sockets, flush their store and print their counters. A closed stdout asks for the same stop
//! ([`requested`]; see [`crate::output`]).
//!
//! The handler only sets an atomic flag (async-signal-safe). It is installed without
//! `SA_RESTART`, so a blocking wait in the event loop returns early, and with `SA_RESETHAND`, so a
//! second signal kills the process the default way if the clean stop hangs. Callers run their loop
//! in short slices and check [`requested`] between them. On other platforms [`install`] does
//! nothing (Ctrl-C ends the process).

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether the command should stop: SIGINT or SIGTERM has arrived since [`install`], or stdout is
/// gone (its reader closed it, or writing failed: [`crate::output::poll_stdout_gone`]).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst) || crate::output::poll_stdout_gone()
}

#[cfg(unix)]
extern "C" fn on_signal(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT and SIGTERM handlers.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is plain old data (all-zero is a valid empty value); the handler
        // only stores to an atomic, which is async-signal-safe; the pointers passed are valid for
        // the calls.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Does nothing on this platform.
#[cfg(not(unix))]
pub fn install() -> std::io::Result<()> {
    Ok(())
}
