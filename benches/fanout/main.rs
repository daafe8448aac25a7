//! `cargo bench --bench fanout [-- --quick] [-- --only SCENARIO]`: the fan-out benchmark.
//!
//! Starts the release binary (and `ncat --broker` when installed) on a free loopback port,
//! pinned to CPU 0, and drives it from a single-threaded mio load generator pinned to CPU 1.
//! Scenarios: fanout (highest sustained rate, 1 → 100), chat (1,000 clients, 10 senders),
//! idle (10,000 idle receivers: memory per connection and latency) and slow-consumer (one
//! client that never reads). Prints one table and writes it to target/fanout-bench.json.

mod histogram;
mod load;
mod target;

use std::fmt::Write as _;
use std::time::Duration;

use load::{Outcome, Role, Swarm};
use target::{Kind, Target};

/// Command-line options (cargo passes `--bench`, which is ignored).
struct Options {
    quick: bool,
    only: Option<String>,
    /// Fixed fanout rates (lines/s) to compare servers at, instead of the search.
    rates: Vec<f64>,
    /// Extra flags for broadcast-server in every scenario (e.g. "--coalesce-us 1000").
    server_args: Vec<String>,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            quick: false,
            only: None,
            rates: Vec::new(),
            server_args: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--only" => options.only = args.next(),
                "--server-args" => {
                    let list = args.next().unwrap_or_default();
                    options.server_args = list.split_whitespace().map(String::from).collect();
                }
                "--rates" => {
                    let list = args.next().unwrap_or_default();
                    options.rates = list.split(',').filter_map(|r| r.parse().ok()).collect();
                }
                _ => {}
            }
        }
        options
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == scenario)
    }
}

/// One cell of the results table: a scenario's figures for one server.
struct Row {
    server: &'static str,
    scenario: &'static str,
    /// `Err` when the server could not run the scenario at all.
    result: Result<Vec<(&'static str, f64)>, String>,
}

type Scenario = fn(Kind, &Options) -> Result<Vec<(&'static str, f64)>, String>;

fn main() {
    let options = Options::parse();
    target::pin_current_thread(target::LOADGEN_CPU);
    let fd_limit = target::raise_fd_limit();
    let kinds: Vec<Kind> = [Kind::BroadcastServer, Kind::Ncat]
        .into_iter()
        .filter(|kind| match kind.available() {
            Ok(()) => true,
            Err(why) => {
                println!("note: skipping {}: {why}", kind.name());
                false
            }
        })
        .collect();
    println!(
        "fanout bench ({} mode): server pinned to CPU {}, load generator to CPU {}, fd limit {fd_limit}",
        if options.quick { "quick" } else { "full" },
        target::SERVER_CPU,
        target::LOADGEN_CPU
    );
    let scenarios: [(&'static str, Scenario); 4] = [
        ("fanout", fanout),
        ("chat", chat),
        ("idle", idle),
        ("slow-consumer", slow_consumer),
    ];
    let mut rows = Vec::new();
    for (name, scenario) in scenarios {
        if !options.wants(name) {
            continue;
        }
        for &kind in &kinds {
            println!("== {name} / {}", kind.name());
            let result = scenario(kind, &options);
            match &result {
                Ok(metrics) => println!("   {}", format_metrics(metrics)),
                Err(why) => println!("   failed: {why}"),
            }
            rows.push(Row {
                server: kind.name(),
                scenario: name,
                result,
            });
        }
    }
    print_table(&rows);
    write_json(&rows, &options);
}

/// Starts `kind`, connects the clients and warms up; returns the server and the swarm.
fn setup(
    kind: Kind,
    options: &Options,
    extra: &[&str],
    line_len: usize,
    clients: &[(Role, usize)],
) -> Result<(Target, Swarm), String> {
    let mut flags: Vec<&str> = extra.to_vec();
    flags.extend(options.server_args.iter().map(String::as_str));
    let target = Target::start(kind, &flags);
    let mut swarm = Swarm::new(line_len);
    for &(role, count) in clients {
        swarm.connect(target.addr, role, count)?;
    }
    swarm.warm_up()?;
    Ok((target, swarm))
}

/// Whether a run met the fanout bar: ≤ 0.1% missing, p99 ≤ 20 ms, nobody disconnected,
/// every sampled line whole.
fn sustained(outcome: &Outcome) -> bool {
    outcome.loss() <= 0.001
        && outcome.latency.quantile_ms(0.99) <= 20.0
        && outcome.disconnected == 0
        && outcome.misaligned == 0
        && !outcome.backlogged
}

fn fanout_trial(kind: Kind, rate: f64, options: &Options) -> Result<Outcome, String> {
    let (duration, drain) = if options.quick {
        (Duration::from_millis(300), Duration::from_millis(300))
    } else {
        (Duration::from_secs(2), Duration::from_millis(500))
    };
    let (target, mut swarm) = setup(
        kind,
        options,
        &[],
        64,
        &[(Role::Sender, 1), (Role::Reader, 100)],
    )?;
    let outcome = swarm.run(&target, rate, duration, drain);
    println!(
        "   offered {:>9.0} lines/s: {:>11.0} deliveries/s, loss {:.4}%, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0}%, loadgen CPU {:.0}%{}{}",
        rate,
        outcome.deliveries_per_sec(),
        outcome.loss() * 100.0,
        outcome.latency.quantile_ms(0.5),
        outcome.latency.quantile_ms(0.99),
        cpu_percent(outcome.server_cpu, &outcome),
        cpu_percent(outcome.loadgen_cpu, &outcome),
        if outcome.backlogged {
            ", generator backlogged"
        } else {
            ""
        },
        if outcome.misaligned > 0 {
            format!(", {} lines cut", outcome.misaligned)
        } else {
            String::new()
        }
    );
    Ok(outcome)
}

/// 1 sender → 100 receivers, 64-byte lines: the highest sustained rate, then half of it.
fn fanout(kind: Kind, options: &Options) -> Result<Vec<(&'static str, f64)>, String> {
    if !options.rates.is_empty() {
        // Same offered rates for every server: compare CPU and latency line by line.
        for &rate in &options.rates {
            fanout_trial(kind, rate, options)?;
        }
        return Ok(Vec::new());
    }
    let mut rate = 5_000.0;
    let mut best: Option<Outcome> = None;
    let mut failed_at = None;
    let max_rate = if options.quick { 5_000.0 } else { 2_000_000.0 };
    while rate <= max_rate {
        let outcome = fanout_trial(kind, rate, options)?;
        if !sustained(&outcome) {
            failed_at = Some(rate);
            break;
        }
        best = Some(outcome);
        rate *= 2.0;
    }
    if let (Some(mut low), Some(mut high)) = (best.as_ref().map(|o| o.offered_rate), failed_at) {
        for _ in 0..3 {
            let mid = (low + high) / 2.0;
            let outcome = fanout_trial(kind, mid, options)?;
            if sustained(&outcome) {
                low = mid;
                best = Some(outcome);
            } else {
                high = mid;
            }
        }
    }
    let best = best.ok_or("not even 5,000 lines/s was sustained")?;
    let half = fanout_trial(kind, best.offered_rate / 2.0, options)?;
    let per_delivery_ns = |o: &Outcome| o.server_cpu.as_nanos() as f64 / o.delivered.max(1) as f64;
    Ok(vec![
        ("max_lines_per_s", best.offered_rate),
        ("max_deliveries_per_s", best.deliveries_per_sec()),
        ("p50_ms_at_max", best.latency.quantile_ms(0.5)),
        ("p99_ms_at_max", best.latency.quantile_ms(0.99)),
        ("server_cpu_pct_at_max", cpu_percent(best.server_cpu, &best)),
        (
            "loadgen_cpu_pct_at_max",
            cpu_percent(best.loadgen_cpu, &best),
        ),
        ("p50_ms_at_half", half.latency.quantile_ms(0.5)),
        ("p99_ms_at_half", half.latency.quantile_ms(0.99)),
        (
            "server_cpu_pct_at_half",
            cpu_percent(half.server_cpu, &half),
        ),
        ("server_cpu_ns_per_delivery_at_half", per_delivery_ns(&half)),
    ])
}

/// 1,000 clients, 10 of them sending 100 lines/s in total, 128-byte lines.
fn chat(kind: Kind, options: &Options) -> Result<Vec<(&'static str, f64)>, String> {
    let duration = Duration::from_secs(if options.quick { 1 } else { 10 });
    let (target, mut swarm) = setup(
        kind,
        options,
        &[],
        128,
        &[(Role::Sender, 10), (Role::Reader, 990)],
    )?;
    let outcome = swarm.run(&target, 100.0, duration, Duration::from_secs(1));
    let mut metrics = vec![("deliveries_per_s", outcome.deliveries_per_sec())];
    metrics.extend(delivery_metrics(&outcome));
    metrics.extend([
        ("server_cpu_pct", cpu_percent(outcome.server_cpu, &outcome)),
        (
            "loadgen_cpu_pct",
            cpu_percent(outcome.loadgen_cpu, &outcome),
        ),
    ]);
    Ok(metrics)
}

/// 10,000 idle receivers beside 1 sender and 10 receivers at 1,000 lines/s.
fn idle(kind: Kind, options: &Options) -> Result<Vec<(&'static str, f64)>, String> {
    let idle_clients = if options.quick { 1_000 } else { 10_000 };
    let duration = Duration::from_secs(if options.quick { 1 } else { 5 });
    let (target, mut swarm) = setup(
        kind,
        options,
        &["--max-clients", "20000"],
        64,
        &[(Role::Sender, 1), (Role::Reader, 10)],
    )?;
    let rss_before = target.rss_bytes();
    swarm.connect(target.addr, Role::Reader, idle_clients)?;
    swarm.warm_up()?;
    let rss_after = target.rss_bytes();
    let outcome = swarm.run(&target, 1_000.0, duration, Duration::from_secs(1));
    let mut metrics = vec![
        ("clients", swarm.len() as f64),
        ("rss_before_kib", rss_before as f64 / 1024.0),
        ("rss_after_connect_kib", rss_after as f64 / 1024.0),
        (
            "bytes_per_idle_connection",
            rss_after.saturating_sub(rss_before) as f64 / idle_clients as f64,
        ),
        ("rss_after_traffic_kib", outcome.rss_end as f64 / 1024.0),
        ("deliveries_per_s", outcome.deliveries_per_sec()),
    ];
    metrics.extend(delivery_metrics(&outcome));
    metrics.push(("server_cpu_pct", cpu_percent(outcome.server_cpu, &outcome)));
    Ok(metrics)
}

/// 1 sender at 2,000 lines/s of 1 KiB, 10 receivers, 1 client that never reads.
fn slow_consumer(kind: Kind, options: &Options) -> Result<Vec<(&'static str, f64)>, String> {
    let duration = Duration::from_secs(if options.quick { 2 } else { 20 });
    let (target, mut swarm) = setup(
        kind,
        options,
        &[],
        1024,
        &[(Role::Sender, 1), (Role::Reader, 10), (Role::Stuck, 1)],
    )?;
    let outcome = swarm.run(&target, 2_000.0, duration, Duration::from_secs(1));
    let mut metrics = delivery_metrics(&outcome);
    metrics.extend([
        (
            "slow_client_dropped_after_s",
            outcome
                .stuck_dropped_after
                .first()
                .map_or(f64::NAN, Duration::as_secs_f64),
        ),
        ("rss_start_kib", outcome.rss_start as f64 / 1024.0),
        ("rss_max_kib", outcome.rss_max as f64 / 1024.0),
    ]);
    Ok(metrics)
}

/// CPU time as a percentage of the run's wall time (send phase plus drain).
fn cpu_percent(cpu: Duration, outcome: &Outcome) -> f64 {
    100.0 * cpu.as_secs_f64() / outcome.wall.as_secs_f64().max(1e-9)
}

/// What every delivery scenario reports: loss, latency, disconnects, and lines that did not
/// arrive whole where a line should start (a framing fault; always 0 for a correct server).
fn delivery_metrics(outcome: &Outcome) -> Vec<(&'static str, f64)> {
    vec![
        ("loss_pct", outcome.loss() * 100.0),
        ("p50_ms", outcome.latency.quantile_ms(0.5)),
        ("p99_ms", outcome.latency.quantile_ms(0.99)),
        ("max_ms", outcome.latency.max_ms()),
        ("disconnects", outcome.disconnected as f64),
        ("misaligned_lines", outcome.misaligned as f64),
    ]
}

fn format_metrics(metrics: &[(&str, f64)]) -> String {
    metrics
        .iter()
        .map(|(name, value)| format!("{name}={}", format_value(*value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "-".to_string()
    } else if value.abs() >= 1000.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn print_table(rows: &[Row]) {
    println!("\n| scenario | server | figures |\n|---|---|---|");
    for row in rows {
        let figures = match &row.result {
            Ok(metrics) => format_metrics(metrics),
            Err(why) => format!("failed: {why}"),
        };
        println!("| {} | {} | {figures} |", row.scenario, row.server);
    }
}

/// Writes the rows as JSON under the cargo target directory.
fn write_json(rows: &[Row], options: &Options) {
    let mut json = format!(
        "{{\"mode\":\"{}\",\"rows\":[",
        if options.quick { "quick" } else { "full" }
    );
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            "{{\"scenario\":\"{}\",\"server\":\"{}\",",
            row.scenario, row.server
        );
        match &row.result {
            Ok(metrics) => {
                json.push_str("\"metrics\":{");
                for (j, (name, value)) in metrics.iter().enumerate() {
                    let value = if value.is_finite() {
                        format!("{value}")
                    } else {
                        "null".into()
                    };
                    let _ = write!(json, "{}\"{name}\":{value}", if j > 0 { "," } else { "" });
                }
                json.push_str("}}");
            }
            Err(why) => {
                let _ = write!(json, "\"error\":\"{}\"}}", why.replace('"', "'"));
            }
        }
    }
    json.push_str("]}\n");
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("fanout-bench.json");
    match std::fs::write(&path, json) {
        Ok(()) => println!("\nwrote {}", path.display()),
        Err(e) => println!("\ncould not write {}: {e}", path.display()),
    }
}
