//! SIGINT and SIGTERM as ordinary poll events, one event per signal delivered, and the state
//! of a graceful shutdown.
//!
//! Each stop signal has its own self-pipe (a Unix socket pair): signal-hook's handler writes
//! one byte per delivery, and the read ends sit in the same `Poll` as the sockets, so a signal
//! is handled between two events, never inside a signal handler. Counting bytes rather than
//! reading a "pending" flag keeps two quick Ctrl-C's two signals: the second one forces the
//! exit even when both arrive before the loop looks.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read};
use std::time::Instant;

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::low_level::pipe;

/// The stop signals, and SIGHUP (reload), readable through the poller. SIGHUP is caught
/// even without TLS, so that a `kill -HUP` from a log rotation never kills the server.
pub struct StopSignals {
    pipes: Vec<(&'static str, UnixStream)>,
}

impl StopSignals {
    /// Installs the handlers and registers their pipes under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<StopSignals> {
        let mut pipes = Vec::new();
        for (name, signal) in [("SIGINT", SIGINT), ("SIGTERM", SIGTERM), ("SIGHUP", SIGHUP)] {
            let (mut read_end, write_end) = UnixStream::pair()?;
            pipe::register(signal, write_end)?;
            registry.register(&mut read_end, token, Interest::READABLE)?;
            pipes.push((name, read_end));
        }
        Ok(StopSignals { pipes })
    }

    /// The names of the stop signals delivered since the last call, once per delivery.
    pub fn take(&mut self) -> Vec<&'static str> {
        let mut delivered = Vec::new();
        let mut buf = [0u8; 64];
        for (name, read_end) in &mut self.pipes {
            loop {
                match read_end.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => delivered.extend(std::iter::repeat_n(*name, n)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // WouldBlock: drained. Anything else cannot happen to a socket pair we
                    // hold both ends of; treat it as drained too.
                    Err(_) => break,
                }
            }
        }
        delivered
    }
}

/// A graceful shutdown in progress: first the input that had already arrived when the stop
/// signal came is framed and handed out, a batch at a time; then every client drains.
#[derive(Debug)]
pub struct Shutdown {
    /// When clients still holding output are reset.
    pub deadline: Instant,
    /// When finales not handed out yet are dropped, leaving the rest of the time to drain.
    pub finales_deadline: Instant,
    /// Clients whose input must still be framed and handed out, in order.
    pub finales: VecDeque<Finale>,
    /// Since when the next batch of finales has waited for a client to make room.
    pub blocked_since: Option<Instant>,
    /// Clients that had no room for a batch for the whole patience: not waited for again
    /// (`--max-queue` judges them).
    pub not_waited_for: HashSet<Token>,
    /// Set once the finales are done and every client was told to drain.
    pub draining: bool,
}

/// One client's input that arrived before the stop signal and is not handed out yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finale {
    pub token: Token,
    /// Bytes still in the kernel that arrived before the signal: read them, no more.
    pub unread: usize,
}
