//! The listening sockets: `--addr` for line clients, `--http` for the web front door.
//! Bound with a deep backlog, non-blocking, registered once; closed when shutdown begins.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use mio::{Interest, Registry, Token};

use crate::config::Config;
use crate::error::ServerError;

/// Connections the kernel may hold for us before we accept them (mio's default is 128).
const LISTEN_BACKLOG: i32 = 1024;

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--addr`: plain TCP line clients.
    Lines = 0,
    /// `--http`: web requests and WebSocket clients.
    Web = 1,
}

/// Both listeners; each is `None` once shutdown has begun (new connections then wait in
/// the kernel and are reset), the web one also without `--http`.
pub struct Listeners {
    pub lines: Option<TcpListener>,
    pub web: Option<TcpListener>,
    /// The line listener's address as bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// Per listener: connections may be waiting (its event came this poll, or the accept
    /// budget ran out before it was empty: no new edge will come for those).
    pub more_to_accept: [bool; 2],
}

impl Listeners {
    /// Binds `--addr` (and `--http`) to the first address of each that works and registers
    /// them under `tokens` (lines, web).
    pub fn bind(
        config: &Config,
        registry: &Registry,
        tokens: [Token; 2],
    ) -> Result<Listeners, ServerError> {
        let mut lines = bind_any("--addr", &config.addrs)?;
        let local_addr = lines.local_addr().map_err(ServerError::Poll)?;
        registry
            .register(&mut lines, tokens[0], Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let web = match &config.http {
            Some(addrs) => {
                let mut web = bind_any("--http", addrs)?;
                registry
                    .register(&mut web, tokens[1], Interest::READABLE)
                    .map_err(ServerError::Poll)?;
                Some(web)
            }
            None => None,
        };
        Ok(Listeners {
            lines: Some(lines),
            web,
            local_addr,
            more_to_accept: [false; 2],
        })
    }

    /// The listener `which`, while it is open.
    pub fn get(&self, which: Listener) -> Option<&TcpListener> {
        match which {
            Listener::Lines => self.lines.as_ref(),
            Listener::Web => self.web.as_ref(),
        }
    }
}

/// Binds the first of `addrs` (those of `flag`) that accepts us.
/// (`Config::new` never gives an empty list; were it empty, that is an error too, not a
/// panic.)
fn bind_any(flag: &'static str, addrs: &[SocketAddr]) -> Result<TcpListener, ServerError> {
    let mut last_error = None;
    for &addr in addrs {
        match bind_with_backlog(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some((addr, e)),
        }
    }
    let (addr, source) = last_error.unwrap_or_else(|| {
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
        (
            nowhere,
            io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to listen on"),
        )
    });
    Err(ServerError::Bind { flag, addr, source })
}

/// Binds a non-blocking listener with a backlog of `LISTEN_BACKLOG` (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections then waits in the kernel for the accept
/// loop instead of having its SYNs dropped and retried a second later.
fn bind_with_backlog(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std and mio do: a restarted server can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// `accept` errors that concern one connection, not the listener: Linux reports a pending
/// network error of the new connection through `accept` (see accept(2)), and the right
/// response is to take the next one.
pub fn is_per_connection_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::PermissionDenied
    ) || matches!(
        error.raw_os_error(),
        Some(libc::EPROTO | libc::ENOPROTOOPT | libc::EHOSTDOWN | libc::ENONET | libc::EOPNOTSUPP)
    )
}
