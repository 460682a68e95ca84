//! SIGTERM in the shell (`kill`, a service manager, a closing terminal emulator): the
//! queries are stopped after their current batch, as `\q` does, the terminal is put
//! back as it was before the line editor took it, and the process exits with status
//! 143 (128 + SIGTERM), as a process ended by the signal would.
//!
//! The line editor blocks the shell's thread in `readline`, so the signal is awaited
//! on a thread of its own, which [`Watch::finish`] releases when the shell ends first.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::session::Session;

/// How long queries get to finish their batch before the process exits anyway.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A SIGTERM listener set up before the shell's first prompt, so that a signal that
/// comes at any moment afterwards is caught (and no longer kills the process outright).
pub(super) struct Watch {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
    finished: Arc<Notify>,
    #[cfg(unix)]
    terminal: Option<libc::termios>,
}

impl Watch {
    /// Listens for SIGTERM from now on and remembers the terminal's mode.
    pub(super) fn listen(runtime: &Runtime) -> Self {
        let _entered = runtime.enter();
        Watch {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
            finished: Arc::new(Notify::new()),
            #[cfg(unix)]
            terminal: terminal_mode(),
        }
    }

    /// A handle that tells the waiting thread the shell ended on its own.
    pub(super) fn finisher(&self) -> Arc<Notify> {
        self.finished.clone()
    }

    /// Waits for SIGTERM or the shell's end; on SIGTERM stops the session's queries
    /// and exits the process. Runs on its own thread.
    pub(super) fn wait(self, session: &Session, runtime: &Runtime) {
        #[cfg(unix)]
        {
            let Watch {
                signal,
                finished,
                terminal,
            } = self;
            let Some(mut signal) = signal else {
                return;
            };
            let terminated = runtime.block_on(async {
                tokio::select! {
                    received = signal.recv() => received.is_some(),
                    _ = finished.notified() => false,
                }
            });
            if !terminated {
                return;
            }
            if let Some(mode) = terminal {
                restore_terminal_mode(&mode);
            }
            let active = session.queries().iter().filter(|q| q.is_active()).count();
            eprintln!(
                "\r\nmillrace: terminated (SIGTERM); stopping {active} streaming {} after the \
                 current batch",
                if active == 1 { "query" } else { "queries" }
            );
            session.stop_all();
            match session.await_all_timeout(STOP_TIMEOUT) {
                Ok(true) => {}
                Ok(false) => eprintln!(
                    "millrace: queries still running after {} s; exiting anyway (they \
                     resume from their checkpoints)",
                    STOP_TIMEOUT.as_secs()
                ),
                Err(e) => eprintln!("millrace: a query failed while stopping: {e}"),
            }
            std::process::exit(143);
        }
        #[cfg(not(unix))]
        {
            let _ = (self, session, runtime);
        }
    }
}

/// The terminal's mode on standard input, when it is a terminal.
#[cfg(unix)]
fn terminal_mode() -> Option<libc::termios> {
    // SAFETY: tcgetattr writes a termios into the zeroed struct it is given and
    // touches nothing else; fd 0 is valid for the process's life.
    unsafe {
        let mut mode: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(libc::STDIN_FILENO, &mut mode) == 0).then_some(mode)
    }
}

/// Puts back a mode saved by [`terminal_mode`] (the line editor leaves the terminal
/// in raw mode while it waits for a key, and the process is about to exit).
#[cfg(unix)]
fn restore_terminal_mode(mode: &libc::termios) {
    // SAFETY: tcsetattr reads the termios it is given; a failure changes nothing.
    unsafe {
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, mode);
    }
}
