//! The errors that stop the server. Clients' troubles never get here: they end one
//! connection (see `DisconnectReason`), not the process.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::config::ConfigError;

/// Why the server could not start or keep running; `main` prints it once and exits non-zero.
#[derive(Debug)]
pub enum ServerError {
    /// A flag had a value the server cannot use.
    Config(ConfigError),
    /// The listening socket could not be bound.
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The poller itself failed.
    Poll(io::Error),
    /// The TLS files could not be used.
    Tls(crate::transport::tls::TlsError),
    /// The SIGINT/SIGTERM handlers could not be installed.
    Signals(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Config(e) => write!(f, "{e}"),
            ServerError::Bind { flag, addr, source } => {
                write!(f, "cannot listen on {addr}: {source}")?;
                match source.kind() {
                    io::ErrorKind::AddrInUse => write!(
                        f,
                        " (another process holds this port: stop it, or pick another port \
                         with {flag}, e.g. {flag} {}:0 for any free one)",
                        host_of(addr)
                    ),
                    io::ErrorKind::PermissionDenied => {
                        write!(f, " (ports below 1024 need privileges: pick a higher port)")
                    }
                    io::ErrorKind::AddrNotAvailable => {
                        write!(f, " (no network interface has this address)")
                    }
                    _ => Ok(()),
                }
            }
            ServerError::Poll(e) => write!(f, "event loop failed: {e}"),
            ServerError::Tls(e) => write!(f, "{e}"),
            ServerError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Config(e) => Some(e),
            ServerError::Bind { source, .. } => Some(source),
            ServerError::Poll(e) | ServerError::Signals(e) => Some(e),
            ServerError::Tls(e) => Some(e),
        }
    }
}

impl From<ConfigError> for ServerError {
    fn from(e: ConfigError) -> Self {
        ServerError::Config(e)
    }
}

/// The host part of `addr` as it would be written in `--addr`.
fn host_of(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}
