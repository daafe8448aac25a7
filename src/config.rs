//! The server's settings: validated values with their defaults as named constants.
//!
//! `Config` knows nothing about clap or mio; `main.rs` builds one from the command line and
//! the event loop only reads it. Every limit is checked here once, so the loop can trust it.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Address used when `--addr` is not given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Longest line a client may send, in bytes, not counting its `\n`.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Most bytes the server holds for one client before calling it a slow consumer.
pub const DEFAULT_MAX_QUEUE: usize = 8 * 1024 * 1024;
/// Most clients connected at once.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// How long lines arriving close together may be held to leave in one write per client.
pub const DEFAULT_COALESCE: Duration = Duration::from_micros(200);
/// How long a graceful shutdown waits for pending output to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the event loop needs to know, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to try, in order, until one binds.
    pub addrs: Vec<SocketAddr>,
    /// Send each line back to its sender too.
    pub echo: bool,
    /// Longest accepted line in bytes, without its `\n`.
    pub max_line: usize,
    /// Most bytes queued for one client before it is disconnected as a slow consumer.
    pub max_queue: usize,
    /// Most clients connected at once; more are refused with an `ERR` line.
    pub max_clients: usize,
    /// Least time between two hand-outs of the batch (0: every turn); see `Batch::due_at`.
    pub coalesce: Duration,
    /// How long shutdown waits for pending output before closing everyone.
    pub shutdown_timeout: Duration,
    /// How often to log the counters; `None` logs them only at shutdown.
    pub stats_interval: Option<Duration>,
}

/// The values `Config::new` checks, as given on the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: String,
    pub echo: bool,
    pub max_line: usize,
    pub max_queue: usize,
    pub max_clients: usize,
    pub coalesce: Duration,
    pub shutdown_timeout: Duration,
    pub stats_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            addr: DEFAULT_ADDR.to_string(),
            echo: false,
            max_line: DEFAULT_MAX_LINE,
            max_queue: DEFAULT_MAX_QUEUE,
            max_clients: DEFAULT_MAX_CLIENTS,
            coalesce: DEFAULT_COALESCE,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            stats_interval: Duration::ZERO,
        }
    }
}

/// Why a setting was refused; each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `--addr` is not `HOST:PORT` or the host does not resolve.
    BadAddr { addr: String, why: String },
    /// A limit that must be positive was zero.
    Zero { flag: &'static str },
    /// `--max-queue` cannot hold even one full line.
    QueueSmallerThanLine { max_queue: usize, max_line: usize },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadAddr { addr, why } => write!(
                f,
                "invalid --addr '{addr}': {why} (expected HOST:PORT, e.g. 127.0.0.1:8080, \
                 localhost:0 or [::1]:8080)"
            ),
            ConfigError::Zero { flag } => write!(f, "{flag} must be at least 1"),
            ConfigError::QueueSmallerThanLine {
                max_queue,
                max_line,
            } => write!(
                f,
                "--max-queue ({max_queue} bytes) must be larger than --max-line ({max_line} \
                 bytes) so that one full line fits in a client's queue"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks every setting and resolves the address.
    pub fn new(settings: Settings) -> Result<Config, ConfigError> {
        for (flag, value) in [
            ("--max-line", settings.max_line),
            ("--max-queue", settings.max_queue),
            ("--max-clients", settings.max_clients),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        if settings.max_queue <= settings.max_line {
            return Err(ConfigError::QueueSmallerThanLine {
                max_queue: settings.max_queue,
                max_line: settings.max_line,
            });
        }
        let addrs = resolve_addr(&settings.addr)?;
        Ok(Config {
            addrs,
            echo: settings.echo,
            max_line: settings.max_line,
            max_queue: settings.max_queue,
            max_clients: settings.max_clients,
            coalesce: settings.coalesce,
            shutdown_timeout: settings.shutdown_timeout,
            stats_interval: Some(settings.stats_interval).filter(|d| !d.is_zero()),
        })
    }
}

/// Turns `HOST:PORT` into the socket addresses to try, the way `TcpListener::bind` would.
fn resolve_addr(addr: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let bad = |why: String| ConfigError::BadAddr {
        addr: addr.to_string(),
        why,
    };
    if addr.rsplit_once(':').is_none() {
        return Err(bad("missing ':PORT'".to_string()));
    }
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("the host name resolves to no address".to_string()));
    }
    Ok(addrs)
}

/// Parses a byte count such as `65536`, `64K`, `64KiB`, `8M` or `1GiB` (binary multiples).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "'{text}' is not a byte count (try 65536, 64KiB or 8MiB)"
        ));
    }
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use B, KiB, MiB or GiB)"
            ));
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8 mb"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::new(Settings::default()).expect("defaults must validate");
        assert_eq!(config.addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(config.stats_interval, None);
    }

    #[test]
    fn zero_limits_are_refused() {
        for (settings, flag) in [
            (
                Settings {
                    max_line: 0,
                    ..Settings::default()
                },
                "--max-line",
            ),
            (
                Settings {
                    max_queue: 0,
                    ..Settings::default()
                },
                "--max-queue",
            ),
            (
                Settings {
                    max_clients: 0,
                    ..Settings::default()
                },
                "--max-clients",
            ),
        ] {
            assert_eq!(Config::new(settings), Err(ConfigError::Zero { flag }));
        }
    }

    #[test]
    fn queue_must_hold_a_line() {
        let settings = Settings {
            max_line: 100,
            max_queue: 100,
            ..Settings::default()
        };
        assert!(matches!(
            Config::new(settings),
            Err(ConfigError::QueueSmallerThanLine { .. })
        ));
    }

    #[test]
    fn addresses_resolve_or_explain() {
        let v6 = Config::new(Settings {
            addr: "[::1]:0".into(),
            ..Settings::default()
        })
        .expect("[::1]:0 is a valid address");
        assert_eq!(v6.addrs, vec!["[::1]:0".parse().unwrap()]);
        for bad in ["nonsense", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:port"] {
            let err = Config::new(Settings {
                addr: bad.into(),
                ..Settings::default()
            })
            .expect_err(bad);
            assert!(err.to_string().contains("invalid --addr"), "{err}");
        }
    }
}
