//! The scenarios: what clients connect, what they offer, and which figures they report;
//! one file each, and here what they share (setup, measuring, the rate search, verdicts).

mod all_talk;
pub mod bridge;
mod chaos;

mod chat;
mod fanout;
mod http_stream;
mod idle;
mod rooms;
mod slow_consumer;
pub mod tls;
pub mod websocket;

use std::time::Duration;

use crate::Options;
use crate::load::{Load, Outcome, Role, Swarm};
use crate::report::{self, Metrics, Row, SAME_RATE, delivery_metrics, print_trial};
use crate::target::{Kind, LoggedTarget, Target, Watched, nats_server_available};

/// The scenarios, in run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 1 sender → 100 receivers, 64-byte lines: highest sustained rate, and same-rate figures.
    Fanout,
    /// 1,000 clients, 10 of them sending 100 lines/s in all, 128-byte lines.
    Chat,
    /// 10,000 idle receivers beside 1 sender and 10 receivers at 1,000 lines/s.
    Idle,
    /// 1 sender at 2,000 lines/s of 1 KiB, 10 receivers, 1 client that never reads.
    SlowConsumer,
    /// 1,000 clients, every one sending 1 line/s and receiving everyone else's.
    AllTalk,
    /// Two instances joined through nats-server (`--nats`): 1 sender on A, 50 receivers on
    /// A and 50 on B; broadcast-server only.
    Bridge,
    /// 1 TCP sender → 100 WebSocket receivers (`--http`), 64-byte lines, next to the same
    /// with 100 TCP receivers; broadcast-server only.
    Websocket,
    /// 1 → 100, 64-byte lines, every client speaking TLS, next to the same in plaintext;
    /// ncat as `ncat --ssl --broker`.
    Tls,
    /// `--rooms`: the deliveries/s of one room of 1,000 receivers spread over 100 rooms × 10
    /// and 1,000 rooms × 1 (a sender each); broadcast-server only.
    Rooms,
    /// 1 TCP sender → 100 TCP receivers and 1, 10 or 100 readers of `GET /lines` or
    /// `GET /events` (`--http`), next to the same with TCP receivers only; broadcast-server
    /// only.
    HttpStream,
    /// 60 s of hostile clients on every transport beside good clients of each: no line
    /// lost, no descriptor leaked; broadcast-server only.
    Chaos,
    /// 10 minutes of steady load on every transport: RSS and descriptors flat; broadcast-
    /// server only.
    Soak,
}

/// The rates of the same-rate fanout table when `--rates` is not given.
pub const DEFAULT_RATES: [u32; 4] = [5_000, 20_000, 50_000, 200_000];

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Fanout,
        Scenario::Chat,
        Scenario::Idle,
        Scenario::SlowConsumer,
        Scenario::AllTalk,
        Scenario::Bridge,
        Scenario::Websocket,
        Scenario::Tls,
        Scenario::Rooms,
        Scenario::HttpStream,
        Scenario::Chaos,
        Scenario::Soak,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Chat => "chat",
            Scenario::Idle => "idle",
            Scenario::SlowConsumer => "slow-consumer",
            Scenario::AllTalk => "all-talk",
            Scenario::Bridge => "bridge",
            Scenario::Websocket => "websocket",
            Scenario::Tls => "tls",
            Scenario::Rooms => "rooms",
            Scenario::HttpStream => "http-stream",
            Scenario::Chaos => "chaos",
            Scenario::Soak => "soak",
        }
    }

    /// Why the scenario cannot run against `kind` here (then it is skipped, not failed).
    pub fn skip_reason(self, kind: Kind) -> Option<String> {
        match (self, kind) {
            (Scenario::Bridge, Kind::Ncat) => {
                Some("ncat --broker has no equivalent of --nats".to_string())
            }
            (Scenario::Bridge, Kind::BroadcastServer) => nats_server_available().err(),
            (Scenario::Rooms, Kind::Ncat) => Some("ncat --broker has no rooms".to_string()),
            (Scenario::Websocket, Kind::Ncat) => {
                Some("ncat --broker has no WebSocket listener".to_string())
            }
            (Scenario::HttpStream, Kind::Ncat) => {
                Some("ncat --broker has no HTTP listener".to_string())
            }
            (Scenario::Chaos | Scenario::Soak, Kind::Ncat) => {
                Some("ncat --broker has neither rooms nor an HTTP listener".to_string())
            }
            _ => None,
        }
    }

    /// Runs the scenario against `kind`; fanout gives several rows, the others one.
    pub fn run(self, kind: Kind, options: &Options) -> Vec<Row> {
        let row = |result: Result<(Metrics, String), String>| {
            let (result, note) = match result {
                Ok((metrics, note)) => (Ok(metrics), note),
                Err(why) => (Err(why), String::new()),
            };
            vec![Row {
                scenario: self.name().to_string(),
                server: kind.name(),
                result,
                note,
            }]
        };
        match self {
            Scenario::Fanout => fanout::fanout(kind, options),
            Scenario::Chat => row(chat::chat(kind, options)),
            Scenario::Idle => row(idle::idle(kind, options)),
            Scenario::SlowConsumer => row(slow_consumer::slow_consumer(kind, options)),
            Scenario::AllTalk => row(all_talk::all_talk(kind, options)),
            Scenario::Bridge => bridge::bridge(kind, options),
            Scenario::Websocket => websocket::websocket(kind, options),
            Scenario::Tls => tls::tls(kind, options),
            Scenario::Rooms => rooms::rooms(kind, options),
            Scenario::HttpStream => http_stream::http_stream(kind, options),
            Scenario::Chaos => chaos::chaos(kind, options),
            Scenario::Soak => chaos::soak(kind, options),
        }
    }
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
    flags.extend(options.server_args.split_whitespace());
    let target = Target::start(kind, &flags)?;
    let mut swarm = Swarm::new(line_len, options.quickack)?;
    for &(role, count) in clients {
        swarm.connect(target.addr, role, count)?;
    }
    swarm.warm_up()?;
    Ok((target, swarm))
}

/// What besides the server limited a run, for a row's note ("" if nothing).
pub fn limit_note(o: &Outcome) -> String {
    report::limit_note(o).unwrap_or_default()
}

/// Seconds in full mode, or in quick mode.
fn secs(options: &Options, full: f64, quick: f64) -> Duration {
    Duration::from_secs_f64(if options.quick { quick } else { full })
}

/// How a fanout trial went, judged against the sustained bar.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Loss ≤ 0.1%, p99 within the bar, nobody disconnected, no faults.
    Sustained,
    /// Everything arrived, but p99 was over the bar. Not a throughput limit: latency need not
    /// grow with the rate (ncat's Nagle delays are worst at low rates), so the search goes on.
    LatencyOnly,
    /// The server lost lines, disconnected clients, stopped reading the sender or corrupted
    /// the stream.
    ServerLimit(String),
    /// The generator did not offer the rate (behind schedule), or the run failed while the
    /// generator was saturated or the machine busy: it says nothing about how far the
    /// server would go.
    GeneratorLimit(String),
}

/// Judges a run. A run that passes is sustained even if the generator was busy (a busy
/// generator batches more per read, so its CPU % is high at any rate); the generator is
/// blamed for a failure only when it was saturated, and always when it did not offer the
/// rate. Duplicates, reordering and cut lines are the server's whatever the generator did,
/// and so is a sender backlog: the kernel refuses the generator's writes only when the
/// server stops reading.
fn judge(o: &Outcome, p99_bar_ms: f64) -> Verdict {
    let generator = || report::limit_note(o).unwrap_or_default();
    if o.integrity_faults() > 0 {
        return Verdict::ServerLimit(format!(
            "{} duplicated/reordered/malformed lines",
            o.integrity_faults()
        ));
    }
    if o.behind {
        return Verdict::GeneratorLimit(generator());
    }
    if o.backlogged {
        return Verdict::ServerLimit(format!(
            "it stopped reading the sender (backlog over {} MiB)",
            crate::load::MAX_BACKLOG >> 20
        ));
    }
    let lossy = o.loss() > 0.001 || o.disconnected > 0;
    let slow = o.latency_ms(0.99) > p99_bar_ms;
    if !lossy && !slow {
        return Verdict::Sustained;
    }
    if o.generator_limited() {
        return Verdict::GeneratorLimit(generator());
    }
    if lossy {
        return Verdict::ServerLimit(format!(
            "loss {:.2}%, {} disconnected",
            o.loss() * 100.0,
            o.disconnected
        ));
    }
    Verdict::LatencyOnly
}

/// A run during which other processes took the CPUs says little about the server: it is
/// run again, at most this many times, after a pause and a fresh warm-up; the last is kept.
const CONTENDED_RERUNS: usize = 2;

/// Offers `load` and prints the outcome, running it again if the machine was busy.
pub fn measure(swarm: &mut Swarm, target: &impl Watched, load: Load) -> Result<Outcome, String> {
    let mut outcome = swarm.run(target, load);
    print_trial(&outcome);
    for _ in 0..CONTENDED_RERUNS {
        if !outcome.contended() {
            break;
        }
        println!("   (the machine was busy: running it again in 2 s)");
        std::thread::sleep(Duration::from_secs(2));
        swarm.warm_up()?;
        outcome = swarm.run(target, load);
        print_trial(&outcome);
    }
    Ok(outcome)
}

/// How long each fanout rate is offered: `--trial-secs`, else 2 s (0.5 s with `--quick`).
pub fn trial_duration(options: &Options) -> Duration {
    options
        .trial_secs
        .map_or_else(|| secs(options, 2.0, 0.5), Duration::from_secs_f64)
}

/// One fanout run at `rate` lines/s on a fresh server.
pub fn fanout_trial(kind: Kind, rate: f64, options: &Options) -> Result<Outcome, String> {
    let clients = [(Role::Sender, 1), (Role::Reader, 100)];
    let (target, mut swarm) = setup(kind, options, &[], 64, &clients)?;
    let load = Load {
        rate,
        duration: trial_duration(options),
        drain: Duration::from_secs(1),
    };
    let outcome = measure(&mut swarm, &target, load)?;
    Ok(outcome)
}

/// Warms `swarm` up, then measures one run at `rate` against `server`; the trial's detail
/// is what the server logged during the measured run only (start-up has its own lines,
/// such as the listening probe's close).
pub fn measure_logged(
    swarm: &mut Swarm,
    server: &LoggedTarget,
    rate: f64,
    duration: Duration,
) -> Result<Trial, String> {
    swarm.warm_up()?;
    let log_before = server.log_text().len();
    let load = Load {
        rate,
        duration,
        drain: Duration::from_secs(1),
    };
    let outcome = measure(swarm, &server.target, load)?;
    Ok(Trial {
        detail: server.findings_since(log_before),
        outcome,
    })
}

/// The figures of `run` at `rate` (`receivers` of them), beside a run with TCP receivers
/// only at the same rate: its server CPU per delivery as a multiple of TCP's (metric
/// `ratio_metric`), judged against `target` (not when either run had the machine busy or
/// the generator behind schedule), and what limited either run besides the server.
pub fn versus_tcp(
    rate: f64,
    receivers: usize,
    run: &Trial,
    tcp: Option<&Trial>,
    (what, ratio_metric): (&str, &'static str),
    target: f64,
) -> (Metrics, String) {
    let o = &run.outcome;
    let mut metrics = report::rate_metrics(rate, Some(receivers), o);
    let Some(tcp) = tcp.map(|t| &t.outcome) else {
        let note = [
            "no TCP run to compare with".to_string(),
            limit_note(o),
            run.detail.clone(),
        ];
        return (metrics, report::join(&note));
    };
    let ratio = o.server_ns_per_delivery() / tcp.server_ns_per_delivery();
    let disturbed = [tcp, o].iter().any(|r| r.contended() || r.behind);
    let (met, verdict) = if disturbed {
        (f64::NAN, "not judged (a run was disturbed)")
    } else if ratio <= target {
        (1.0, "met")
    } else {
        (0.0, "NOT met")
    };
    metrics.extend([
        ("tcp_ns_per_delivery", tcp.server_ns_per_delivery()),
        (
            "tcp_generator_limited",
            f64::from(u8::from(tcp.generator_limited())),
        ),
        (ratio_metric, ratio),
        ("target_met", met),
    ]);
    let mut note = vec![format!(
        "target ≤ {target}× TCP's ns/delivery {verdict}: {what} {:.0} vs TCP {:.0} \
         ns/delivery ({ratio:.2}×)",
        o.server_ns_per_delivery(),
        tcp.server_ns_per_delivery()
    )];
    for (which, outcome) in [(format!("{what} run"), o), ("TCP run".to_string(), tcp)] {
        if let Some(limit) = report::limit_note(outcome) {
            note.push(format!("{which}: {limit}"));
        }
    }
    note.push(run.detail.clone());
    (metrics, report::join(&note))
}

/// One run of a rate search: its outcome, and what else it found, for the search's note
/// when this run ends the search (e.g. where the lines were lost).
pub struct Trial {
    pub outcome: Outcome,
    pub detail: String,
}

/// The highest sustained rate of `trial` (a fresh setup per run), as the `scenario` row:
/// doubling from 5,000 lines/s until the server fails on throughput (then 3 bisection
/// steps) or the generator is the limit (then no bisection: the server was not, and the
/// same-rate figures are the comparison to read).
pub fn rate_search(
    scenario: &str,
    kind: Kind,
    options: &Options,
    trial: impl FnMut(f64) -> Result<Trial, String>,
) -> Row {
    rate_search_from(5_000.0, scenario, kind, options, trial)
}

/// [`rate_search`], doubling from `start` lines/s instead (for servers that may not
/// sustain 5,000).
pub fn rate_search_from(
    start: f64,
    scenario: &str,
    kind: Kind,
    options: &Options,
    mut trial: impl FnMut(f64) -> Result<Trial, String>,
) -> Row {
    let row = |result, note| Row {
        scenario: scenario.into(),
        server: kind.name(),
        result,
        note,
    };
    let mut best: Option<Outcome> = None;
    let mut latency_only = Vec::new();
    let mut stop = None;
    let mut rate = start;
    while rate <= 2_560_000.0 {
        let Trial { outcome, detail } = match trial(rate) {
            Ok(trial) => trial,
            Err(why) => return row(Err(why), String::new()),
        };
        match judge(&outcome, options.p99_bar_ms) {
            Verdict::Sustained => best = Some(outcome),
            Verdict::LatencyOnly => latency_only.push(rate),
            verdict => {
                stop = Some((rate, with_detail(verdict, &detail)));
                break;
            }
        }
        rate *= 2.0;
    }
    if let (Some(low), Some((high, Verdict::ServerLimit(_)))) = (&best, &stop) {
        let (mut low, mut high) = (low.load.rate, *high);
        for _ in 0..3 {
            let mid = (low + high) / 2.0;
            match trial(mid) {
                Ok(t) if judge(&t.outcome, options.p99_bar_ms) == Verdict::Sustained => {
                    low = mid;
                    best = Some(t.outcome);
                }
                Ok(_) => high = mid,
                Err(why) => return row(Err(why), String::new()),
            }
        }
    }
    let note = search_note(&stop, &latency_only, options.p99_bar_ms);
    let Some(best) = best else {
        return row(Err(format!("no rate was sustained; {note}")), String::new());
    };
    let mut metrics = vec![
        ("max_lines_per_s", best.load.rate),
        (
            "generator_was_limit",
            f64::from(u8::from(matches!(
                stop,
                Some((_, Verdict::GeneratorLimit(_)))
            ))),
        ),
        ("latency_only_failures", latency_only.len() as f64),
    ];
    metrics.extend(delivery_metrics(&best));
    row(Ok(metrics), note)
}

/// A failing verdict with the trial's `detail` added to its reason.
fn with_detail(verdict: Verdict, detail: &str) -> Verdict {
    if detail.is_empty() {
        return verdict;
    }
    match verdict {
        Verdict::ServerLimit(why) => Verdict::ServerLimit(format!("{why}; {detail}")),
        Verdict::GeneratorLimit(why) => Verdict::GeneratorLimit(format!("{why}; {detail}")),
        other => other,
    }
}

/// Says what ended the search, so a max rate is never read as the server's when it was
/// the generator's.
fn search_note(stop: &Option<(f64, Verdict)>, latency_only: &[f64], bar: f64) -> String {
    let mut note = match stop {
        Some((rate, Verdict::GeneratorLimit(why))) => format!(
            "stopped by the generator or machine at {rate:.0} lines/s ({why}), not by the \
             server: its own limit is higher; compare server ns/delivery at equal rates"
        ),
        Some((rate, Verdict::ServerLimit(why))) => {
            format!("server limit: failed at {rate:.0} lines/s ({why})")
        }
        _ => "top of the search ladder reached".to_string(),
    };
    if !latency_only.is_empty() {
        let rates: Vec<String> = latency_only.iter().map(|r| format!("{r:.0}")).collect();
        note.push_str(&format!(
            "; p99 over {bar} ms with no loss at {} lines/s",
            rates.join(", ")
        ));
    }
    note
}
