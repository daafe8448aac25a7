//! A new client's socket options: no Nagle, and TCP keepalive when asked for.

use std::io;
use std::time::Duration;

use mio::net::TcpStream;
use socket2::{SockRef, TcpKeepalive};

/// Unanswered keepalive probes before a client's host counts as gone.
const KEEPALIVE_PROBES: u32 = 4;

/// Sets a new client's socket options: no Nagle (lines are batched already; Nagle would only
/// add latency), and keepalive after `keepalive` of silence (`None`: off).
pub fn configure_socket(stream: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    match keepalive {
        Some(idle) => enable_keepalive(stream, idle),
        None => Ok(()),
    }
}

/// Turns on TCP keepalive: probes after `idle` of silence, then every `idle / 4` (at least
/// 1 s), [`KEEPALIVE_PROBES`] of them.
///
/// Not `TCP_USER_TIMEOUT` as well: since Linux 5.11 it also aborts a live client that keeps
/// its window shut (one that is not reading), which would drop a slow reader by time instead
/// of by `--max-queue`. A vanished host with output in flight is caught anyway: it stops
/// acknowledging, so its queue fills and it is a slow consumer, or, with little traffic,
/// the kernel's retransmissions give up on it (`tcp_retries2`, about 15 minutes).
fn enable_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let interval = (idle / 4).max(Duration::from_secs(1));
    SockRef::from(stream).set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(KEEPALIVE_PROBES),
    )
}
