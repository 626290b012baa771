//! The one way `p2pd` writes to stdout and stderr, so that a closed pipe never panics.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`p2pd ... | head -n 2`): Rust
//! ignores SIGPIPE, so the write fails with `EPIPE` and the macro turns that into a panic.
//! Every line of the CLI goes through [`outln!`](crate::outln) / [`out!`](crate::out) (stdout) or
//! [`errln!`](crate::errln) / [`err!`](crate::err) (stderr) instead; the crate denies
//! `clippy::print_stdout` and `clippy::print_stderr` so no `println!` comes back.
//!
//! What happens when stdout is gone:
//!
//! - The failed line and every later one are dropped quietly (a closed pipe is not an error
//!   worth a message; any other failure, such as a full disk, is reported once on stderr).
//! - [`stdout_gone`] turns true. Commands that run until stopped (`stun-server`, `pnp-server`,
//!   `signal listen`) check it with SIGINT and SIGTERM ([`crate::commands::stop_signal::requested`])
//!   and stop cleanly: they close their sockets and their store as on SIGTERM. Commands that end
//!   by themselves finish their (bounded) work.
//! - The process exits with [`EXIT_STDOUT_CLOSED`] (141) after a closed pipe, or 1 after another
//!   write failure, whatever the command's own result ([`exit_code`]). 141 is what a shell reports
//!   for a tool killed by SIGPIPE (128 + 13), so `set -o pipefail` scripts see `p2pd` behave like
//!   `seq` or `cat` in the same place.
//!
//! Errors writing to stderr are ignored: there is nowhere left to report them.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};

/// The exit code after stdout was closed by its reader: 141, as for a process killed by SIGPIPE.
pub const EXIT_STDOUT_CLOSED: i32 = 141;

/// Stdout works (as far as we know).
const OPEN: u8 = 0;
/// The reader closed the pipe (`EPIPE`).
const CLOSED: u8 = 1;
/// Another write error (a full disk, an I/O error).
const FAILED: u8 = 2;

static STDOUT_STATE: AtomicU8 = AtomicU8::new(OPEN);

/// Whether stdout is gone: its reader closed it, or a write to it failed. Long-running commands
/// stop when this turns true.
pub fn stdout_gone() -> bool {
    STDOUT_STATE.load(Ordering::SeqCst) != OPEN
}

/// Whether stdout is gone, also checking without writing: a pipe whose reader has gone reports
/// an error condition to `poll` (POLLERR on Linux, POLLHUP on some other systems), so a server
/// that prints nothing for hours still notices `| head -n 2` has ended. Marks stdout gone as a
/// failed write would. Servers call it between slices of their loop
/// ([`crate::commands::stop_signal::requested`]).
pub fn poll_stdout_gone() -> bool {
    if stdout_gone() {
        return true;
    }
    if stdout_reader_gone() {
        let _ = STDOUT_STATE.compare_exchange(OPEN, CLOSED, Ordering::SeqCst, Ordering::SeqCst);
        return true;
    }
    false
}

#[cfg(unix)]
#[allow(unsafe_code)]
fn stdout_reader_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid, initialised `pollfd`, a count of 1 and no wait; `poll` writes only
    // `revents`. (Rust's runtime keeps fds 0 to 2 open, so fd 1 is stdout, never a socket.)
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

#[cfg(not(unix))]
fn stdout_reader_gone() -> bool {
    false
}

/// The process exit code for a command that returned `code`: [`EXIT_STDOUT_CLOSED`] if stdout
/// was closed by its reader, 1 if writing to it failed otherwise, else `code`.
pub fn exit_code(code: i32) -> i32 {
    match STDOUT_STATE.load(Ordering::SeqCst) {
        CLOSED => EXIT_STDOUT_CLOSED,
        FAILED => 1,
        _ => code,
    }
}

/// Records that writing to stdout failed with `error` (for commands that write stdout by
/// themselves, such as `punch` copying the peer's bytes): a closed pipe quietly, anything else
/// with one line on stderr.
pub fn stdout_failed(error: &io::Error) {
    let state = if error.kind() == io::ErrorKind::BrokenPipe {
        CLOSED
    } else {
        FAILED
    };
    if STDOUT_STATE
        .compare_exchange(OPEN, state, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
        && state == FAILED
    {
        stderr_write(format_args!("p2pd: cannot write to stdout: {error}\n"));
    }
}

/// Writes `text` to stdout and flushes it; drops it if stdout is gone (see the module docs).
pub fn stdout_write(text: fmt::Arguments<'_>) {
    if stdout_gone() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        stdout_failed(&e);
    }
}

/// Writes `text` to stderr, ignoring failures.
pub fn stderr_write(text: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(text).and_then(|()| err.flush());
}

/// `println!` for the CLI: a line on stdout through [`stdout_write`] (never panics).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout_write(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout_write(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// `print!` for the CLI: text on stdout through [`stdout_write`] (never panics).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout_write(::core::format_args!($($arg)*))
    };
}

/// `eprintln!` for the CLI: a line on stderr through [`stderr_write`] (never panics).
#[macro_export]
macro_rules! errln {
    () => {
        $crate::output::stderr_write(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stderr_write(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// `eprint!` for the CLI: text on stderr through [`stderr_write`] (never panics).
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::stderr_write(::core::format_args!($($arg)*))
    };
}
