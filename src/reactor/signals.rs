//! Signals as ordinary poll events, one event per signal delivered: SIGINT and SIGTERM
//! stop the server, SIGHUP reloads the TLS configuration.
//!
//! Each signal has its own self-pipe (a Unix socket pair): signal-hook's handler writes one
//! byte per delivery, and the read ends sit in the same `Poll` as the sockets, so a signal is
//! handled between two events, never inside a signal handler. Counting bytes rather than
//! reading a "pending" flag keeps two quick Ctrl-C's two signals: the second one forces the
//! exit even when both arrive before the loop looks.

use std::io::{self, Read};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::low_level::pipe;

/// A signal the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: stop (gracefully; a second stop signal forces the exit).
    Interrupt,
    /// SIGTERM: stop, as SIGINT.
    Terminate,
    /// SIGHUP: reload the TLS configuration (caught even without TLS, so that a `kill -HUP`
    /// from a log rotation never kills the server).
    Reload,
}

impl Signal {
    const ALL: [Signal; 3] = [Signal::Interrupt, Signal::Terminate, Signal::Reload];

    /// Its usual name, for the log.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Reload => "SIGHUP",
        }
    }

    fn number(self) -> i32 {
        match self {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
            Signal::Reload => SIGHUP,
        }
    }
}

/// The signals the server acts on, readable through the poller.
pub struct Signals {
    pipes: Vec<(Signal, UnixStream)>,
}

impl Signals {
    /// Installs the handlers and registers their pipes under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<Signals> {
        let mut pipes = Vec::new();
        for signal in Signal::ALL {
            let (mut read_end, write_end) = UnixStream::pair()?;
            pipe::register(signal.number(), write_end)?;
            registry.register(&mut read_end, token, Interest::READABLE)?;
            pipes.push((signal, read_end));
        }
        Ok(Signals { pipes })
    }

    /// The signals delivered since the last call, once per delivery.
    pub fn take(&mut self) -> Vec<Signal> {
        let mut delivered = Vec::new();
        let mut buf = [0u8; 64];
        for (signal, read_end) in &mut self.pipes {
            loop {
                match read_end.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => delivered.extend(std::iter::repeat_n(*signal, n)),
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
