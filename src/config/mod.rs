//! The server's settings: validated values with their defaults as named constants.
//!
//! `Config` knows nothing about clap or mio; `main.rs` builds one from the command line and
//! the event loop only reads it. Every limit is checked here once, so the loop can trust it.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::admission::access::{AccessList, Cidr};
use crate::bridge::envelope::MessageKey;
use crate::bridge::{self, BridgeSettings};
use crate::transport::tls::TlsSettings;
use crate::web::origin::OriginPolicy;

/// The NATS subject used when `--nats-subject` is not given.
pub const DEFAULT_NATS_SUBJECT: &str = "broadcast-server.lines";
/// Address used when `--addr` is not given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Longest line a client may send, in bytes, not counting its `\n`.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Most bytes the server holds for one client before calling it a slow consumer.
pub const DEFAULT_MAX_QUEUE: usize = 8 * 1024 * 1024;
/// Most clients connected at once.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// The longest a batch of lines may be held while batches keep arriving back to back.
pub const DEFAULT_COALESCE: Duration = Duration::from_micros(1000);
/// The most `--coalesce-us` accepts: holding lines longer than this is never useful.
pub const MAX_COALESCE_US: u64 = 1_000_000;
/// How long a graceful shutdown waits for pending output to drain.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes `--history` keeps when `--history-bytes` is not given.
pub const DEFAULT_HISTORY_BYTES: usize = 1 << 20;
/// How long a WebSocket client may be silent before it is pinged (and, silent as long
/// again, dropped).
pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Idle time before TCP keepalive starts probing a silent client.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// The most `--tcp-keepalive` accepts: Linux's limit for `TCP_KEEPIDLE`.
pub const MAX_TCP_KEEPALIVE_SECS: u64 = 32_767;
/// The longest `--max-line`: a line is held whole in memory, and a gigabyte is already far
/// past any sensible line.
pub const MAX_MAX_LINE: usize = 1 << 30;
/// The longest duration a seconds flag accepts (365 days): longer values, `inf` or `nan`
/// are refused rather than overflowing a clock.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_HOLD: Duration = Duration::from_micros(MAX_COALESCE_US);
const MAX_KEEPALIVE: Duration = Duration::from_secs(MAX_TCP_KEEPALIVE_SECS);
/// `--max-rooms` when not given.
pub const DEFAULT_MAX_ROOMS: usize = 1000;
/// A batch is handed out before it can grow past this many bytes (or less: see
/// [`Config::batch_limit`]).
pub const BATCH_LIMIT: usize = 256 * 1024;

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
    /// The longest a batch may be held while batches keep arriving (0: every turn); see
    /// `Batch::due_at`.
    pub coalesce: Duration,
    /// How long shutdown waits for pending output before closing everyone.
    pub shutdown_timeout: Duration,
    /// How often to log the counters; `None` logs them only at shutdown.
    pub stats_interval: Option<Duration>,
    /// Idle time before keepalive probes start; `None` turns keepalive off.
    pub tcp_keepalive: Option<Duration>,
    /// The NATS bridge, when `--nats` is given.
    pub nats: Option<BridgeSettings>,
    /// Addresses to try for the web listener (HTTP and WebSocket), when `--http` is given.
    pub http: Option<Vec<SocketAddr>>,
    /// How long a WebSocket client may be silent before it is pinged; `None`: never.
    pub ws_ping: Option<Duration>,
    /// `--allow` / `--deny`.
    pub access: AccessList,
    /// Most clients from one address (0: no limit).
    pub max_clients_per_ip: usize,
    /// TLS on every listener, with `--tls-cert` and `--tls-key`.
    pub tls: Option<TlsSettings>,
    /// Lines (and at most how many bytes of them) replayed to every newcomer; `None`: off.
    pub history: Option<(usize, usize)>,
    /// Which pages may open `/ws` besides the server's own (`--allow-origin`).
    pub origins: OriginPolicy,
    /// `--rooms`: the most rooms at once (`--max-rooms`); `None`: one broadcast.
    pub rooms: Option<usize>,
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
    pub tcp_keepalive: Duration,
    /// `--nats`: comma-separated URLs, or `None`.
    pub nats: Option<String>,
    pub nats_subject: String,
    /// `--nats-key FILE`: the shared secret that signs NATS messages.
    pub nats_key: Option<std::path::PathBuf>,
    /// `--http HOST:PORT`, or `None`.
    pub http: Option<String>,
    pub ws_ping_interval: Duration,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub max_clients_per_ip: usize,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_client_ca: Option<std::path::PathBuf>,
    pub history: usize,
    pub history_bytes: usize,
    /// `--allow-origin` values: exact origins, or `*`.
    pub allow_origin: Vec<String>,
    pub rooms: bool,
    pub max_rooms: usize,
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
            tcp_keepalive: DEFAULT_TCP_KEEPALIVE,
            nats: None,
            nats_subject: DEFAULT_NATS_SUBJECT.to_string(),
            nats_key: None,
            http: None,
            ws_ping_interval: DEFAULT_WS_PING_INTERVAL,
            allow: Vec::new(),
            deny: Vec::new(),
            max_clients_per_ip: 0,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            history: 0,
            history_bytes: DEFAULT_HISTORY_BYTES,
            allow_origin: Vec::new(),
            rooms: false,
            max_rooms: DEFAULT_MAX_ROOMS,
        }
    }
}

/// Why a setting was refused; each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `--addr` (or `--http`) is not `HOST:PORT` or the host does not resolve.
    BadAddr {
        flag: &'static str,
        addr: String,
        why: String,
    },
    /// `--http` would take `--addr`'s port.
    SharedPort { http: String, port: u16 },
    /// A limit that must be positive was zero.
    Zero { flag: &'static str },
    /// `--nats` or `--nats-subject` cannot be used.
    BadNats { why: String },
    /// A full history and a batch could not fit in a joiner's `--max-queue`.
    HistoryOverQueue { history_bytes: usize, room: usize },
    /// The TLS flags do not go together.
    BadTls { why: &'static str },
    /// A flag's value cannot be used: an `--allow`/`--deny` value that is not an address
    /// range, an `--allow-origin` that is not an origin.
    BadValue { flag: &'static str, why: String },
    /// `--max-queue` cannot hold a full line with its newline and more.
    QueueNotLargerThanLine { max_queue: usize, max_line: usize },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadAddr { flag, addr, why } => write!(
                f,
                "invalid {flag} '{addr}': {why} (expected HOST:PORT, e.g. 127.0.0.1:8080, \
                 localhost:0 or [::1]:8080)"
            ),
            ConfigError::SharedPort { http, port } => write!(
                f,
                "invalid --http '{http}': --addr listens on port {port} already; give the web \
                 listener a port of its own"
            ),
            ConfigError::Zero { flag } => write!(f, "{flag} must be at least 1"),
            ConfigError::BadNats { why } => write!(f, "invalid --nats: {why}"),
            ConfigError::BadValue { flag, why } => write!(f, "invalid {flag}: {why}"),
            ConfigError::BadTls { why } => write!(f, "{why}"),
            ConfigError::HistoryOverQueue {
                history_bytes,
                room,
            } => write!(
                f,
                "--history-bytes ({history_bytes} bytes) must fit in --max-queue with a batch \
                 and a line (twice over with --http: WebSocket framing can double it), or a \
                 joiner that reads would still be a slow consumer: at most {room} bytes with \
                 these flags (lower --history-bytes or raise --max-queue)"
            ),
            ConfigError::QueueNotLargerThanLine {
                max_queue,
                max_line,
            } => write!(
                f,
                "--max-queue ({max_queue} bytes) must be larger than a full line of \
                 --max-line ({max_line} bytes) with its newline: raise --max-queue or lower \
                 --max-line"
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
        if settings.max_queue <= settings.max_line.saturating_add(1) {
            return Err(ConfigError::QueueNotLargerThanLine {
                max_queue: settings.max_queue,
                max_line: settings.max_line,
            });
        }
        let addrs = resolve_addr("--addr", &settings.addr)?;
        let http = settings
            .http
            .as_deref()
            .map(|addr| resolve_addr("--http", addr))
            .transpose()?;
        // Each listener binds the first of its addresses that works: compare those.
        if let (Some(web), Some(lines)) = (http.as_ref().and_then(|h| h.first()), addrs.first())
            && same_port(lines, web)
        {
            return Err(ConfigError::SharedPort {
                http: settings.http.clone().unwrap_or_default(),
                port: web.port(),
            });
        }
        let nats = settings
            .nats
            .as_deref()
            .map(|urls| nats_settings(urls, &settings.nats_subject, settings.nats_key.as_deref()))
            .transpose()?;
        // Each flag repeats, and each value may hold several ranges separated by commas.
        let ranges = |flag: &'static str, texts: &[String]| {
            texts
                .iter()
                .flat_map(|text| text.split(','))
                .map(|text| match text.trim() {
                    "" => Err(ConfigError::BadValue {
                        flag,
                        why: "an empty range (a stray comma?)".to_string(),
                    }),
                    range => Cidr::parse(range).map_err(|why| ConfigError::BadValue { flag, why }),
                })
                .collect::<Result<Vec<Cidr>, ConfigError>>()
        };
        let access = AccessList {
            allow: ranges("--allow", &settings.allow)?,
            deny: ranges("--deny", &settings.deny)?,
        };
        let tls = match (settings.tls_cert, settings.tls_key, settings.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(TlsSettings {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (Some(_), None, _) => {
                return Err(ConfigError::BadTls {
                    why: "--tls-cert needs --tls-key (the certificate's private key)",
                });
            }
            (None, Some(_), _) => {
                return Err(ConfigError::BadTls {
                    why: "--tls-key needs --tls-cert (the certificate chain it belongs to)",
                });
            }
            (None, None, Some(_)) => {
                return Err(ConfigError::BadTls {
                    why: "--tls-client-ca needs --tls-cert and --tls-key (TLS must be on)",
                });
            }
        };
        if settings.history > 0 && settings.history_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "--history-bytes",
            });
        }
        // A joiner gets the whole history and then the live batches: both must fit in its
        // queue, so that only a joiner that does not read is a slow consumer.
        let line_room = settings.max_queue - settings.max_line - 1;
        let mut room = line_room - BATCH_LIMIT.min(line_room);
        if settings.http.is_some() {
            // A WebSocket joiner's replay is framed: at worst twice the bytes (an empty line
            // becomes a 2-byte frame).
            room /= 2;
        }
        if settings.history > 0 && settings.history_bytes > room {
            return Err(ConfigError::HistoryOverQueue {
                history_bytes: settings.history_bytes,
                room,
            });
        }
        if settings.rooms && settings.max_rooms == 0 {
            return Err(ConfigError::Zero {
                flag: "--max-rooms",
            });
        }
        let origins =
            OriginPolicy::parse(&settings.allow_origin).map_err(|why| ConfigError::BadValue {
                flag: "--allow-origin",
                why,
            })?;
        Ok(Config {
            rooms: settings.rooms.then_some(settings.max_rooms),
            nats: nats.map(|nats| BridgeSettings {
                rooms: settings.rooms,
                ..nats
            }),
            origins,
            history: (settings.history > 0).then_some((settings.history, settings.history_bytes)),
            tls,
            access,
            max_clients_per_ip: settings.max_clients_per_ip,
            addrs,
            echo: settings.echo,
            max_line: settings.max_line,
            max_queue: settings.max_queue,
            max_clients: settings.max_clients,
            // The flag parsers refuse longer values; capping here keeps every clock
            // computation in range for any caller.
            coalesce: settings.coalesce.min(MAX_HOLD),
            shutdown_timeout: settings.shutdown_timeout.min(MAX_DURATION),
            stats_interval: Some(settings.stats_interval.min(MAX_DURATION))
                .filter(|d| !d.is_zero()),
            tcp_keepalive: Some(settings.tcp_keepalive.min(MAX_KEEPALIVE)).filter(|d| !d.is_zero()),
            http,
            ws_ping: Some(settings.ws_ping_interval.min(MAX_DURATION)).filter(|d| !d.is_zero()),
        })
    }

    /// The most bytes of lines handed out at once: at most [`BATCH_LIMIT`], and small enough
    /// that a whole batch plus the line that completes it fits in an empty `--max-queue`.
    /// So a client whose socket is briefly full is never a slow consumer because of how the
    /// server batches: only a client that stays behind is.
    pub fn batch_limit(&self) -> usize {
        BATCH_LIMIT.min(self.max_queue - self.max_line - 1)
    }
}

/// Checks the NATS URLs and subject, and reads the key file.
fn nats_settings(
    urls: &str,
    subject: &str,
    key_file: Option<&std::path::Path>,
) -> Result<BridgeSettings, ConfigError> {
    let (servers, credentials) =
        bridge::parse_servers(urls).map_err(|why| ConfigError::BadNats { why })?;
    let valid = subject.split('.').all(|token| {
        !token.is_empty() && !token.contains(char::is_whitespace) && token != "*" && token != ">"
    });
    if !valid {
        return Err(ConfigError::BadNats {
            why: format!(
                "--nats-subject '{subject}' must be a NATS subject to publish on: dot-separated \
                 non-empty names, no spaces or wildcards (e.g. {DEFAULT_NATS_SUBJECT})"
            ),
        });
    }
    let key = key_file
        .map(|path| read_nats_key(path, subject))
        .transpose()?;
    Ok(BridgeSettings {
        servers,
        credentials,
        subject: subject.to_string(),
        key,
        rooms: false,
    })
}

/// Shortest secret `--nats-key` accepts, in bytes.
const MIN_NATS_KEY: usize = 16;

/// Reads the shared secret of `--nats-key` (its bytes, less a trailing line end).
fn read_nats_key(path: &std::path::Path, subject: &str) -> Result<MessageKey, ConfigError> {
    let bad = |why: String| ConfigError::BadNats {
        why: format!("--nats-key '{}': {why}", path.display()),
    };
    let secret = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let secret = secret.trim_ascii_end();
    if secret.len() < MIN_NATS_KEY {
        return Err(bad(format!(
            "the key is {} bytes; give at least {MIN_NATS_KEY} (make one with: head -c 32 \
             /dev/urandom | base64 > FILE, and give every instance the same file)",
            secret.len()
        )));
    }
    Ok(MessageKey::new(secret, subject))
}

/// Whether two listening addresses would take the same port: the same address (IPv4-mapped
/// IPv6 spellings as IPv4), or one of them a wildcard that covers the other (`0.0.0.0`
/// covers IPv4, `[::]` covers both, as Linux binds it by default); port 0 picks a free
/// port and never clashes.
fn same_port(a: &SocketAddr, b: &SocketAddr) -> bool {
    let covers = |wide: IpAddr, other: IpAddr| match wide {
        IpAddr::V6(v6) => v6.is_unspecified(),
        IpAddr::V4(v4) => v4.is_unspecified() && other.is_ipv4(),
    };
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    a.port() == b.port() && a.port() != 0 && (x == y || covers(x, y) || covers(y, x))
}

/// Turns `HOST:PORT` into the socket addresses to try, the way `TcpListener::bind` would.
fn resolve_addr(flag: &'static str, addr: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let bad = |why: String| ConfigError::BadAddr {
        flag,
        addr: addr.to_string(),
        why,
    };
    match addr.rsplit_once(':') {
        None if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(bad(format!(
                "a port without a host: write 127.0.0.1:{addr} for this machine only, or \
                 0.0.0.0:{addr} for every interface"
            )));
        }
        None => return Err(bad("missing ':PORT'".to_string())),
        Some(("", port)) => {
            return Err(bad(format!(
                "missing the host before ':{port}': write 127.0.0.1:{port} for this machine \
                 only, or 0.0.0.0:{port} for every interface"
            )));
        }
        Some(_) => {}
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

/// Parses `--max-line`: a byte count (see [`parse_size`]) of at most [`MAX_MAX_LINE`].
pub fn parse_line_length(text: &str) -> Result<usize, String> {
    let bytes = parse_size(text)?;
    if bytes > MAX_MAX_LINE {
        return Err(format!(
            "'{text}' is longer than the longest line allowed, 1GiB"
        ));
    }
    Ok(bytes)
}

/// Parses `--stats-interval`: 0 (off), or at least 0.01 s (more often would be a busy loop
/// of log lines) and at most [`MAX_SECONDS`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_seconds(text)?;
    if !interval.is_zero() && interval < Duration::from_millis(10) {
        return Err(format!("'{text}' must be 0 (off) or at least 0.01 seconds"));
    }
    Ok(interval)
}

/// Parses a non-negative number of seconds such as `5` or `0.25`, up to [`MAX_SECONDS`].
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds (try 5 or 0.5)"))?;
    if !(0.0..=MAX_SECONDS).contains(&seconds) {
        return Err(format!(
            "'{text}' must be a number of seconds from 0 to {MAX_SECONDS} (365 days)"
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}' must be a finite, non-negative number of seconds"))
}

#[cfg(test)]
mod tests;
