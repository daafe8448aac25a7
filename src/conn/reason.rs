//! Why a connection ended: one typed reason, logged once and counted once.

use std::fmt;
use std::io;

use crate::observe::stats::Ending;

/// Why a connection ended; logged once and counted in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed (or half-closed) its side.
    ClientClosed,
    /// A read or write failed (reset by peer, broken pipe, ...).
    Error(io::ErrorKind),
    /// The client's host stopped answering: keepalive probes (`--tcp-keepalive`) or the
    /// kernel's retransmissions went unacknowledged until it gave up.
    PeerVanished,
    /// More than `--max-queue` bytes were waiting for the client.
    SlowConsumer { queued: usize },
    /// The client sent a line longer than `--max-line`.
    LineTooLong,
    /// The client's first line was an HTTP request line: a web page's request (a no-cors
    /// `fetch` or a form) sent to the line port, whose lines must not be broadcast.
    HttpRequest,
    /// The server shut down; the client got everything that was queued for it.
    Shutdown,
    /// The server shut down, and the drain deadline passed before the client took its output.
    ShutdownTimeout { unsent: usize },
    /// A WebSocket client sent a Close frame (with this status code, if any).
    WebSocketClosed { code: Option<u16> },
    /// A WebSocket client broke the protocol; it is closed with `code`.
    WebSocketViolation { code: u16, why: &'static str },
    /// A WebSocket client did not answer a ping.
    PingTimeout,
}

impl DisconnectReason {
    /// Which counter this ending goes to.
    pub fn ending(self) -> Ending {
        match self {
            DisconnectReason::ClientClosed | DisconnectReason::WebSocketClosed { .. } => {
                Ending::ByClient
            }
            DisconnectReason::Error(_) => Ending::Error,
            DisconnectReason::PeerVanished => Ending::PeerVanished,
            DisconnectReason::SlowConsumer { .. } => Ending::SlowConsumer,
            DisconnectReason::LineTooLong => Ending::LineTooLong,
            DisconnectReason::HttpRequest => Ending::HttpRequest,
            DisconnectReason::Shutdown | DisconnectReason::ShutdownTimeout { .. } => {
                Ending::Shutdown
            }
            DisconnectReason::WebSocketViolation { .. } => Ending::ProtocolError,
            DisconnectReason::PingTimeout => Ending::PingTimeout,
        }
    }

    /// Whether the client is dropped with output it will never take: then the close is a
    /// reset, so the kernel frees that output at once instead of holding it for minutes
    /// (with zero-window probes) for a peer that is not reading.
    pub fn abandons_output(self) -> bool {
        matches!(
            self,
            DisconnectReason::SlowConsumer { .. } | DisconnectReason::ShutdownTimeout { .. }
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClientClosed => write!(f, "client closed"),
            DisconnectReason::Error(kind) => write!(f, "error: {kind}"),
            DisconnectReason::PeerVanished => {
                write!(
                    f,
                    "peer vanished (no answer to keepalive or retransmissions)"
                )
            }
            DisconnectReason::SlowConsumer { queued } => {
                write!(f, "slow consumer: {queued} bytes queued")
            }
            DisconnectReason::LineTooLong => write!(f, "line too long"),
            DisconnectReason::HttpRequest => write!(f, "sent an HTTP request to the line port"),
            DisconnectReason::Shutdown => write!(f, "server shutdown"),
            DisconnectReason::ShutdownTimeout { unsent } => {
                write!(f, "server shutdown timed out with {unsent} bytes unsent")
            }
            DisconnectReason::WebSocketClosed { code: Some(code) } => {
                write!(f, "client closed (WebSocket close {code})")
            }
            DisconnectReason::WebSocketClosed { code: None } => {
                write!(f, "client closed (WebSocket close)")
            }
            DisconnectReason::WebSocketViolation { code, why } => {
                write!(f, "WebSocket protocol error {code}: {why}")
            }
            DisconnectReason::PingTimeout => write!(f, "no answer to WebSocket pings"),
        }
    }
}

/// Maps a socket error to why the client is dropped.
pub fn failure(error: &io::Error) -> DisconnectReason {
    match error.kind() {
        // ETIMEDOUT on a connected socket: keepalive probes or retransmissions went
        // unanswered.
        io::ErrorKind::TimedOut => DisconnectReason::PeerVanished,
        kind => DisconnectReason::Error(kind),
    }
}
