//! `cargo bench --bench fanout [-- FLAGS]`: the fan-out benchmark (`-- --help` lists flags).
//!
//! Starts the release binary (and `ncat --broker` when installed) on a free loopback port,
//! pinned to CPU 0, and drives it from a single-threaded mio load generator pinned to CPU 1.
//! Every line carries (send time, sender id, sequence number); every reader checks every line
//! it receives: latency from the kernel's arrival timestamp into an HDR histogram; loss,
//! duplicates and reordering by sequence number; cut or corrupt lines as malformed. Scenarios:
//! fanout (highest sustained rate and same-rate figures, 1 → 100), chat, idle, slow-consumer,
//! all-talk, bridge (two instances joined through nats-server, when it is installed),
//! websocket (100 WebSocket receivers next to 100 TCP ones), and tls (1 → 100 over TLS next
//! to plaintext, and `ncat --ssl --broker`).
//! Prints the tables and writes them to fanout-bench.json in the target dir.

/// Throw-away certificates, shared with the tests (dev-only; some of it only they use).
#[path = "../../tests/common/certs.rs"]
#[allow(dead_code)]
mod certs;
/// WebSocket frames and the upgrade request, shared with the tests (dev-only).
#[path = "../../tests/common/frames.rs"]
#[allow(dead_code)]
mod frames;
mod hostile;
mod http_stream;
mod line;
mod load;
mod net;
mod receive;
mod report;
mod scenarios;
mod target;
mod tls_client;
mod ws;

use std::process::ExitCode;

use clap::Parser;

use report::Row;
use scenarios::Scenario;
use target::Kind;

/// The fan-out benchmark for broadcast-server (and ncat --broker, when installed).
#[derive(Parser, Debug)]
#[command(name = "fanout")]
pub struct Options {
    /// Smoke run for CI (about 10 s): short runs, broadcast-server only unless --server says
    /// otherwise; exits 1 if it loses, duplicates, reorders or cuts a line, or disconnects a
    /// client.
    #[arg(long)]
    quick: bool,

    /// Run only this scenario.
    #[arg(long, value_enum)]
    only: Option<Scenario>,

    /// Fanout (and tls: plaintext and TLS) at these offered rates (lines/s, comma-separated)
    /// on every server, instead of the search and the default rates; e.g.
    /// 5000,20000,50000,200000.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=2_560_000))]
    rates: Vec<u32>,

    /// Extra broadcast-server flags for every scenario, e.g. "--coalesce-us 1000".
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    server_args: String,

    /// Servers to run (repeat for several); default: broadcast-server, plus ncat when
    /// installed (not in --quick).
    #[arg(long = "server", value_enum)]
    servers: Vec<Kind>,

    /// The p99 latency (ms) a fanout rate must stay within to count as sustained.
    #[arg(long, default_value_t = 20.0, value_parser = parse_ms)]
    p99_bar_ms: f64,

    /// Seconds each fanout rate is offered (default 2; 0.5 with --quick).
    #[arg(long, value_parser = parse_secs)]
    trial_secs: Option<f64>,

    /// Readers ACK at once after every read (TCP_QUICKACK) instead of delaying ACKs as
    /// ordinary clients do. Shows how much of a server's latency is Nagle waiting on the
    /// readers' delayed ACKs (ncat sets no TCP_NODELAY); costs the generator CPU.
    #[arg(long)]
    quickack: bool,

    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_ms(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ms) if ms > 0.0 && ms.is_finite() => Ok(ms),
        _ => Err(format!("'{text}' is not a positive number of milliseconds")),
    }
}

fn parse_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=600.0).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "'{text}' is not a number of seconds from 0.1 to 600"
        )),
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    let checks = line::self_check()
        .and_then(|()| receive::self_check())
        .and_then(|()| ws::self_check())
        .and_then(|()| http_stream::self_check())
        .and_then(|()| tls_client::self_check());
    if let Err(why) = checks {
        eprintln!("error: the bench's own line checks fail: {why}");
        return ExitCode::FAILURE;
    }
    target::pin_current_thread(target::LOADGEN_CPU);
    let fd_limit = target::raise_fd_limit();
    let kinds = servers(&options);
    println!(
        "fanout bench ({} mode): server pinned to CPU {}, load generator to CPU {}, fd limit {fd_limit}",
        mode(&options),
        target::SERVER_CPU,
        target::LOADGEN_CPU
    );
    let mut rows: Vec<Row> = Vec::new();
    for scenario in Scenario::ALL {
        if options.only.is_some_and(|only| only != scenario) {
            continue;
        }
        for &kind in &kinds {
            if let Some(why) = scenario.skip_reason(kind) {
                println!(
                    "note: {} skipped for {}: {why}",
                    scenario.name(),
                    kind.name()
                );
                continue;
            }
            println!("== {} / {}", scenario.name(), kind.name());
            for row in scenario.run(kind, &options) {
                match &row.result {
                    Ok(metrics) => println!("   {}", report::format_metrics(metrics)),
                    Err(why) => println!("   failed: {why}"),
                }
                if !row.note.is_empty() {
                    println!("   note: {}", row.note);
                }
                rows.push(row);
            }
        }
    }
    report::print_table(&rows);
    report::print_same_rate(&rows);
    scenarios::tls::print_comparison(&rows);
    report::write_json(&rows, mode(&options));
    let failures = failures(&rows, options.quick);
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("\nFAILED:");
    for failure in &failures {
        eprintln!("  {failure}");
    }
    ExitCode::FAILURE
}

fn mode(options: &Options) -> &'static str {
    if options.quick { "quick" } else { "full" }
}

/// The servers to run: as asked, else broadcast-server plus ncat if installed (full mode).
fn servers(options: &Options) -> Vec<Kind> {
    let wanted = if !options.servers.is_empty() {
        options.servers.clone()
    } else if options.quick {
        vec![Kind::BroadcastServer]
    } else {
        vec![Kind::BroadcastServer, Kind::Ncat]
    };
    wanted
        .into_iter()
        .filter(|kind| match kind.available() {
            Ok(()) => true,
            Err(why) => {
                println!("note: skipping {}: {why}", kind.name());
                false
            }
        })
        .collect()
}

/// What makes the run exit 1: broadcast-server duplicating, reordering or cutting a line
/// anywhere (never acceptable) or failing a scenario; in quick mode, where every load is
/// modest, also any loss or disconnected client.
fn failures(rows: &[Row], quick: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for row in rows
        .iter()
        .filter(|r| r.server == Kind::BroadcastServer.name())
    {
        let what = format!("{} / {}", row.scenario, row.server);
        if let Err(why) = &row.result {
            failures.push(format!("{what}: {why}"));
            continue;
        }
        let count = |name| row.metric(name).unwrap_or(0.0);
        for fault in ["duplicates", "reordered", "malformed"] {
            if count(fault) > 0.0 {
                failures.push(format!("{what}: {} {fault} lines", count(fault)));
            }
        }
        if quick {
            for fault in ["lost", "disconnects"] {
                if count(fault) > 0.0 {
                    failures.push(format!("{what}: {} {fault}", count(fault)));
                }
            }
        }
    }
    failures
}
