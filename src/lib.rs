//! broadcast-server: every newline-terminated line a client sends goes to every other
//! connected client, over TCP or WebSocket, in the clear or through TLS, on one machine or
//! several joined through NATS.
//!
//! # The map
//!
//! One single-threaded, edge-triggered mio loop ([`reactor`]) owns the `Poll` and one map of
//! connections, each in its stage: a TLS handshake ([`transport`]), an HTTP request on the
//! web listener ([`web`]), or a member of a room's broadcast ([`conn`]). Components own
//! their state and deadlines: who gets in ([`admission`]), the fan-out and its rooms
//! ([`broadcast`], pure), the NATS bridge ([`bridge`]), the counters and the one logger
//! ([`observe`]). The codecs are pure and know no socket ([`wire`]). `main.rs` only turns flags into a [`Config`] and
//! reports errors. docs/design.md has the picture and the walk of one line.
//!
//! # Glossary (one word per concept)
//!
//! - **line**: bytes up to and including `\n`; the unit of the broadcast.
//! - **unfinished line**: what a client sent after its last `\n`; delivered with a `\n`
//!   added when the client goes, never lost, never cut.
//! - **batch**: the lines framed in one turn (or a held stretch of turns), by sender.
//! - **hand-out**: giving one batch to every member: one `writev` each.
//! - **form**: how a member takes the batch: the lines, WebSocket frames, HTTP chunks, or
//!   Server-Sent Events.
//! - **wire**: how lines look on one member's connection (lines, WebSocket, the body of
//!   `GET /lines` or of `GET /events`): decoding, farewells, liveness.
//! - **reader**: a member that only reads (`GET /lines`, `GET /events`): what it sends is
//!   thrown away.
//! - **event id**: `EPOCH-SEQ`, a line's number in its room's stream (`GET /events`): the
//!   epoch names the stream (room, run, instance), the sequence the line.
//! - **body**: what a `POST /lines` sends: read whole (bounded), then published all or
//!   none.
//! - **transport**: how bytes travel on a socket: plain or TLS.
//! - **stage**: where a connection is: handshake, request, member.
//! - **member**: a connection that takes part in the broadcast; **open**, or **leaving**
//!   (being sent away: it gets what it is owed and a farewell, then it is closed).
//! - **farewell**: what a member is told as it is sent away: an `ERR` line or a Close frame.
//! - **slow consumer**: a member with more than `--max-queue` bytes waiting: reset.
//! - **turn**: one pass of the loop: poll, events, carried work, hand-out, timers.
//! - **carried**: work a budget cut short, taken up in the next turn.
//! - **address place**: a connection's place in its address's count
//!   (`--max-clients-per-ip`), given back when it is dropped.
//! - **finale**: at shutdown, a member's input already received, delivered before the drain.
//! - **kept line**: an unfinished line of a client closed meanwhile, waiting for the batch.
//! - **instance**: one server process; instances joined through NATS are one broadcast.
//! - **history**: the last lines handed out, replayed to a newcomer (`--history`).
//! - **room**: one broadcast among many (`--rooms`): its batch, history and members; every
//!   member is in one, `main` first. Without `--rooms` there is one room, `main`.
//! - **command**: with `--rooms`, a line starting with `/` (`/join NAME`, `/rooms`): obeyed
//!   and answered with a **reply** (`OK ...` or `ERR ...`), never broadcast.

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
