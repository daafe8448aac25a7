//! The `broadcast-server` command: flags, logging, the descriptor budget and exit codes.
//! Errors from anywhere below are printed here, once, as `error: ...`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use log::{LevelFilter, warn};

use broadcast_server::admission::fd_limit;
use broadcast_server::config::{self, Config, Settings};
use broadcast_server::observe::logger::GuardedLogger;
use broadcast_server::{EventLoop, Exit, ServerError};

/// Forward every line a TCP client sends to every other connected client.
///
/// A line is any run of bytes ending in a newline; bytes pass through unchanged. Try it with
/// `nc 127.0.0.1 8080` in two terminals.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to listen on, HOST:PORT (e.g. 0.0.0.0:8080, [::1]:8080, localhost:0; port 0
    /// picks a free port, reported in the "listening on" log line)
    #[arg(long, value_name = "HOST:PORT", default_value = config::DEFAULT_ADDR)]
    addr: String,

    /// Also send each line back to the client that sent it
    #[arg(long)]
    echo: bool,

    /// Longest line a client may send, not counting its newline (e.g. 65536, 64KiB); a
    /// longer line gets the client an ERR line and a disconnect
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = config::parse_line_length)]
    max_line: usize,

    /// Most bytes held for one client that does not keep up; past it the client is
    /// disconnected as a slow consumer (more than --max-line)
    #[arg(long, value_name = "BYTES", default_value = "8MiB", value_parser = config::parse_size)]
    max_queue: usize,

    /// Most clients connected at once; more are refused with an ERR line
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,

    /// While lines keep arriving, hold them up to MICROS (0 to 1000000) and send them
    /// together: fewer writes per line under load; a line after a quiet spell never waits;
    /// 0 sends every turn
    #[arg(
        long,
        value_name = "MICROS",
        default_value_t = config::DEFAULT_COALESCE.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(..=config::MAX_COALESCE_US),
    )]
    coalesce_us: u64,

    /// On SIGINT/SIGTERM, how long to keep flushing pending output before closing everyone
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = config::parse_seconds)]
    shutdown_timeout: Duration,

    /// Log the counters every SECS seconds (0: only at shutdown; else at least 0.01)
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = config::parse_interval)]
    stats_interval: Duration,

    /// Probe a client that has been silent for SECS seconds (0 to 32767; 0: off) and drop it
    /// when its host is gone: about SECS more seconds of unanswered probes
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = config::DEFAULT_TCP_KEEPALIVE.as_secs(),
        value_parser = clap::value_parser!(u64).range(..=config::MAX_TCP_KEEPALIVE_SECS),
    )]
    tcp_keepalive: u64,

    /// Join a NATS bus so that every instance on the same subject forms one broadcast:
    /// nats://HOST:PORT, several comma-separated for one cluster, credentials as
    /// nats://USER:PASS@HOST:PORT or nats://TOKEN@HOST:PORT
    #[arg(long, value_name = "URLS")]
    nats: Option<String>,

    /// The NATS subject of the broadcast (instances on another subject are another broadcast)
    #[arg(
        long,
        value_name = "SUBJECT",
        default_value = config::DEFAULT_NATS_SUBJECT,
        requires = "nats"
    )]
    nats_subject: String,

    /// Sign every NATS message with the secret in FILE (at least 16 bytes; every instance
    /// gets the same file) and drop messages not signed with it: no one else on the NATS
    /// server can forge or inject lines
    #[arg(long, value_name = "FILE", requires = "nats")]
    nats_key: Option<std::path::PathBuf>,

    /// Also serve browsers and curl on HOST:PORT: a live page at /, WebSocket clients at /ws,
    /// the lines as a streamed body at /lines and as Server-Sent Events at /events (members
    /// of the same broadcast), publishing with POST /lines, Prometheus metrics at /metrics,
    /// /healthz (port 0 picks a free port, reported in the "http listening on" log line)
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<String>,

    /// Also let pages from ORIGIN (scheme://host[:port], exactly as browsers send it; repeatable)
    /// open /ws; pages of other sites are refused (403). '*' turns the check off
    #[arg(long, value_name = "ORIGIN", requires = "http")]
    allow_origin: Vec<String>,

    /// Ping a WebSocket client silent for SECS seconds, and drop it if it stays silent for
    /// SECS more (0: never)
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        value_parser = config::parse_seconds
    )]
    ws_ping_interval: Duration,

    /// Accept clients only from this address range (repeatable, or several separated by
    /// commas; CIDR like 10.0.0.0/8 or 2001:db8::/32, or a bare address); others are closed
    /// at once
    #[arg(long, value_name = "CIDR")]
    allow: Vec<String>,

    /// Close clients from this address range at once (repeatable, or several separated by
    /// commas; wins over --allow)
    #[arg(long, value_name = "CIDR")]
    deny: Vec<String>,

    /// Most clients from one address at once (0: no limit); one more gets an ERR line (a 429
    /// for a WebSocket upgrade)
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_clients_per_ip: usize,

    /// Speak TLS on every listener with this certificate chain (PEM); needs --tls-key.
    /// SIGHUP re-reads the certificate, key and client CA files
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, SEC1 or RSA)
    #[arg(long, value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<std::path::PathBuf>,

    /// Replay the last N lines to every client that joins, before the live ones (0: off)
    #[arg(long, value_name = "N", default_value_t = 0)]
    history: usize,

    /// Most bytes the --history lines may hold; the oldest whole lines leave first
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = config::parse_size)]
    history_bytes: usize,

    /// Many broadcasts in one server: every client is in one room (`main` at first) and
    /// moves with `/join NAME`; `/rooms` lists them, `//text` sends `/text`
    #[arg(long)]
    rooms: bool,

    /// With --rooms: most rooms at once; a join that would create one more gets an ERR line
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_MAX_ROOMS, requires = "rooms")]
    max_rooms: usize,

    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,

    /// Less log output (-q: warnings and errors only, -qq: errors only)
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet);
    match run(args) {
        Ok(Exit::Graceful) => ExitCode::SUCCESS,
        Ok(Exit::Forced) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<Exit, ServerError> {
    let config = Config::new(Settings {
        addr: args.addr,
        echo: args.echo,
        max_line: args.max_line,
        max_queue: args.max_queue,
        max_clients: args.max_clients,
        coalesce: Duration::from_micros(args.coalesce_us),
        shutdown_timeout: args.shutdown_timeout,
        stats_interval: args.stats_interval,
        tcp_keepalive: Duration::from_secs(args.tcp_keepalive),
        nats: args.nats,
        nats_subject: args.nats_subject,
        nats_key: args.nats_key,
        http: args.http,
        ws_ping_interval: args.ws_ping_interval,
        allow: args.allow,
        deny: args.deny,
        max_clients_per_ip: args.max_clients_per_ip,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_client_ca: args.tls_client_ca,
        history: args.history,
        history_bytes: args.history_bytes,
        allow_origin: args.allow_origin,
        rooms: args.rooms,
        max_rooms: args.max_rooms,
    })?;
    check_descriptor_budget(config.max_clients);
    if config.origins.allows_any() {
        warn!(
            "--allow-origin '*': any web page a user visits can read and write the broadcast \
             through the user's browser (no Origin check on /ws)"
        );
    }
    check_batch_room(&config);
    EventLoop::bind(config)?.run()
}

/// Raises the descriptor limit and warns, once, if `--max-clients` still cannot fit in it.
fn check_descriptor_budget(max_clients: usize) {
    match fd_limit::raise_to_hard_limit() {
        Ok(limit) => {
            let fit = fd_limit::clients_that_fit(limit);
            if (max_clients as u64) > fit {
                warn!(
                    "--max-clients {max_clients} is more than the open-file limit allows \
                     ({limit} descriptors, about {fit} clients); past that, new clients wait \
                     until others leave. Raise the limit (ulimit -n) or lower --max-clients"
                );
            }
        }
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
}

/// Warns, once, when `--max-queue` leaves a batch so little room beyond one line that reads
/// and fan-out crawl (a batch plus one line must fit in an empty queue).
fn check_batch_room(config: &Config) {
    const COMFORTABLE: usize = 4096;
    if config.batch_limit() < COMFORTABLE {
        warn!(
            "--max-queue {} leaves only {} bytes for a batch of lines beyond one --max-line: \
             reads and fan-out will take many small steps. Give --max-queue at least \
             --max-line + 64KiB",
            config.max_queue,
            config.batch_limit()
        );
    }
}

/// Starts the logger at info, moved by -v/-q; RUST_LOG, when set, has the last word.
fn init_logging(verbose: u8, quiet: u8) {
    let level = match i16::from(verbose) - i16::from(quiet) {
        ..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    // rustls warns about what clients send (an IP address as SNI, say): noise an operator
    // cannot act on; the handshakes' own failures are logged by us. Its lines show from -v,
    // or as RUST_LOG says (which then has the last word alone).
    if verbose == 0 && std::env::var_os("RUST_LOG").is_none() {
        builder.filter_module("rustls", level.min(LevelFilter::Error));
    }
    let logger = builder.parse_default_env().build();
    let max_level = logger.filter();
    // Every record, ours and our dependencies', is escaped, bounded and (for dependencies)
    // rate-limited on its way to env_logger.
    if log::set_boxed_logger(Box::new(GuardedLogger::new(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}
