//! SIGINT and SIGTERM as events: installed before anything is acquired, so that an interrupted
//! wait or hold always ends with a release instead of the default of dying with keys left behind
//! until their lease expires.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop signals coordctl handles.
#[derive(Debug)]
pub(crate) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

/// Which stop signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Stop {
    /// The signal number.
    pub(crate) fn number(self) -> i32 {
        match self {
            Stop::Interrupt => rustix::process::Signal::INT.as_raw(),
            Stop::Terminate => rustix::process::Signal::TERM.as_raw(),
        }
    }
}

impl Signals {
    /// Starts catching SIGINT and SIGTERM.
    pub(crate) fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next stop signal. Cancel safe.
    pub(crate) async fn recv(&mut self) -> Stop {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Stop::Interrupt,
            Some(()) = self.terminate.recv() => Stop::Terminate,
            else => std::future::pending().await,
        }
    }
}
