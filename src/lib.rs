//! broadcast-server: every newline-terminated line a client sends goes to every other
//! connected client, over TCP or WebSocket, in the clear or through TLS, on one machine or
//! several joined through NATS.
//!
//! The crate is one single-threaded, edge-triggered mio event loop ([`EventLoop`]) over
//! client connections ([`connection`]), with line framing ([`framing`]) and per-turn
//! batching ([`batch`]) kept as pure, unit-tested logic. The loop *uses* parts that know
//! as little as possible: how bytes travel ([`transport`], [`tls`]), how lines look on the
//! wire ([`websocket`], [`framed_batch`]), the web listener's HTTP stage ([`http`]), who
//! may connect ([`access`]), which web pages may open a WebSocket ([`origin`]), the NATS
//! bridge ([`bridge`]), the replay for newcomers ([`history`]), the counters ([`stats`]),
//! signals as poll events ([`signals`]), the graceful stop ([`shutdown`]), and the one door
//! every log line passes ([`logger`]: escaped, bounded, rate-limited).
//! `main.rs` only turns flags into a [`Config`] and reports errors.

pub mod admission;
pub mod bridge;
pub mod broadcast;
pub mod config;
pub mod conn;
pub mod error;
pub mod observe;
pub mod reactor;
pub mod transport;
pub mod web;
pub mod wire;

pub use config::Config;
pub use error::ServerError;
pub use reactor::{EventLoop, Exit};

#[cfg(test)]
mod tests {
    /// Rooms may one day run on threads of their own: the loop must stay movable.
    #[test]
    fn the_loop_can_move_to_a_thread_of_its_own() {
        fn is_send<T: Send>() {}
        is_send::<crate::EventLoop>();
    }
}
