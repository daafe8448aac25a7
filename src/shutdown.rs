//! SIGINT and SIGTERM as ordinary poll events, and the state of a graceful shutdown.
//!
//! signal-hook-mio turns signals into bytes on a self-pipe registered in the same `Poll` as
//! the sockets, so a signal is handled between two events, never inside a signal handler.

use std::io;

use mio::{Interest, Registry, Token};
use signal_hook_mio::v1_0::Signals;

/// The signals that ask the server to stop.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Where the server is between running and exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownState {
    Running,
    /// A stop signal arrived: not accepting, not reading, flushing until each client's
    /// drain deadline.
    Draining,
}

/// The stop signals, readable through the poller.
pub struct StopSignals {
    signals: Signals,
}

impl StopSignals {
    /// Installs the handlers and registers their pipe under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<StopSignals> {
        let mut signals = Signals::new(STOP_SIGNALS)?;
        registry.register(&mut signals, token, Interest::READABLE)?;
        Ok(StopSignals { signals })
    }

    /// The names of the stop signals received since the last call (a signal sent twice
    /// before we look may show once).
    pub fn take(&mut self) -> Vec<&'static str> {
        self.signals.pending().map(signal_name).collect()
    }
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
