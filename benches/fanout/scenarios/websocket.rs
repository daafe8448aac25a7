//! The websocket scenario: what a WebSocket delivery costs next to a TCP one. 1 TCP sender
//! → 100 receivers, 64-byte lines, as in fanout; the receivers are WebSocket clients of the
//! web listener (`--http`), or, for comparison, plain TCP clients. Every run starts a fresh
//! server with `--http` on a port of its choosing (read from its `http listening on` log
//! line), whichever receivers it gets, so the two differ only in the receivers: same
//! pinning, same generator, same line checks (frames are decoded back into lines first).
//!
//! Full mode: the highest sustained rate of each (fanout's search rule), then both at fixed
//! rates, for the target "a WebSocket delivery costs at most 1.3× a TCP delivery at the
//! same rate" (server CPU per delivery). Quick mode: 10 WebSocket receivers at 1,000
//! lines/s for 0.5 s, which fails the run on any loss, duplicate, reordering or malformed
//! line or frame.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::Options;
use crate::load::{Role, Swarm};
use crate::report::{Row, join, rate_metrics};
use crate::scenarios::{
    Trial, limit_note, measure_logged, rate_search, trial_duration, versus_tcp,
};
use crate::target::{Kind, LoggedTarget, Target};

/// Line length, as in fanout.
const LINE_LEN: usize = 64;
/// Receivers of the full mode's runs.
const RECEIVERS: usize = 100;
/// The fixed rates of the cost comparison (lines/s): low, middling, and high, where fanout's
/// cost is most of the server's work.
const COMPARE_RATES: [f64; 3] = [20_000.0, 50_000.0, 100_000.0];
/// What a WebSocket delivery may cost, as a multiple of a TCP delivery at the same rate.
const TARGET_RATIO: f64 = 1.3;
/// The receivers, rate and length of the quick run.
const QUICK_RECEIVERS: usize = 10;
const QUICK_RATE: f64 = 1_000.0;
const QUICK_DURATION: Duration = Duration::from_millis(500);
/// What the server logs once its web listener is bound, before the address.
const HTTP_LISTENING: &str = "http listening on ";

/// What the receivers of a run speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receivers {
    WebSocket,
    Tcp,
}

impl Receivers {
    fn name(self) -> &'static str {
        match self {
            Receivers::WebSocket => "WebSocket",
            Receivers::Tcp => "TCP",
        }
    }
}

/// The websocket scenario's rows (see the module documentation).
pub fn websocket(kind: Kind, options: &Options) -> Vec<Row> {
    println!(
        "   1 TCP sender → WebSocket or TCP receivers; every run on a fresh server with --http"
    );
    if options.quick {
        return vec![quick_row(kind, options)];
    }
    let mut rows = Vec::new();
    for (scenario, receivers) in [
        ("websocket", Receivers::WebSocket),
        ("websocket-tcp", Receivers::Tcp),
    ] {
        println!("   highest sustained rate, {} receivers:", receivers.name());
        rows.push(rate_search(scenario, kind, options, |rate| {
            let duration = trial_duration(options);
            trial(kind, receivers, RECEIVERS, rate, duration, options)
        }));
    }
    for rate in COMPARE_RATES {
        rows.extend(compare_rows(kind, rate, options));
    }
    print_summary(&rows);
    rows
}

/// Starts `kind` with `--http` on a free port (plus `--server-args`) and waits until it
/// logs where its web listener is; returns the server and that address.
pub fn start_web_server(
    kind: Kind,
    options: &Options,
) -> Result<(LoggedTarget, SocketAddr), String> {
    let mut flags = vec!["--http", "127.0.0.1:0"];
    flags.extend(options.server_args.split_whitespace());
    let server = LoggedTarget::start("websocket", |log| {
        Target::start_logging(kind, &flags, Some(log))
    })?;
    let http = wait_for_http(server.log_path())?;
    Ok((server, http))
}

/// Waits (at most 10 s) for the `http listening on ADDR` line in `log`; returns ADDR.
pub fn wait_for_http(log: &std::path::Path) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let listening = text
            .lines()
            .find_map(|l| l.split_once(HTTP_LISTENING))
            .map(|(_, addr)| addr.split_whitespace().next().unwrap_or_default());
        if let Some(addr) = listening {
            return addr
                .parse()
                .map_err(|_| format!("the server logged an odd web address: {addr}"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the server did not log '{HTTP_LISTENING}ADDR' in 10 s"
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// One run at `rate` on a fresh server: 1 TCP sender and `count` receivers speaking
/// `receivers`. Its detail is what the server logged of clients leaving and warnings
/// during the measured run.
fn trial(
    kind: Kind,
    receivers: Receivers,
    count: usize,
    rate: f64,
    duration: Duration,
    options: &Options,
) -> Result<Trial, String> {
    let (server, http) = start_web_server(kind, options)?;
    let addr = server.target.addr;
    let mut swarm = Swarm::new(LINE_LEN, options.quickack)?;
    swarm.connect(addr, Role::Sender, 1)?;
    match receivers {
        Receivers::WebSocket => swarm.connect_websocket(addr, http, count)?,
        Receivers::Tcp => swarm.connect(addr, Role::Reader, count)?,
    }
    measure_logged(&mut swarm, &server, rate, duration)
}

/// The quick run: a few WebSocket receivers, briefly (see the module documentation).
fn quick_row(kind: Kind, options: &Options) -> Row {
    let run = trial(
        kind,
        Receivers::WebSocket,
        QUICK_RECEIVERS,
        QUICK_RATE,
        QUICK_DURATION,
        options,
    );
    let (result, note) = match run {
        Ok(Trial { outcome, detail }) => (
            Ok(rate_metrics(QUICK_RATE, Some(QUICK_RECEIVERS), &outcome)),
            join(&[limit_note(&outcome), detail]),
        ),
        Err(why) => (Err(why), String::new()),
    };
    Row {
        scenario: "websocket".into(),
        server: kind.name(),
        result,
        note,
    }
}

/// TCP, then WebSocket receivers at the fixed `rate`: a row each, the WebSocket one with
/// its cost per delivery as a multiple of TCP's and the target's verdict.
fn compare_rows(kind: Kind, rate: f64, options: &Options) -> Vec<Row> {
    let row = |scenario: &str, result, note| Row {
        scenario: scenario.into(),
        server: kind.name(),
        result,
        note,
    };
    let run = |receivers: Receivers| {
        println!("   {rate:.0} lines/s, {} receivers:", receivers.name());
        trial(
            kind,
            receivers,
            RECEIVERS,
            rate,
            trial_duration(options),
            options,
        )
    };
    let tcp = run(Receivers::Tcp);
    let websocket = run(Receivers::WebSocket);
    let tcp_row = match &tcp {
        Ok(t) => row(
            "websocket-rate-tcp",
            Ok(rate_metrics(rate, Some(RECEIVERS), &t.outcome)),
            join(&[limit_note(&t.outcome), t.detail.clone()]),
        ),
        Err(why) => row("websocket-rate-tcp", Err(why.clone()), String::new()),
    };
    let websocket_row = match websocket {
        Ok(t) => {
            let what = ("WebSocket", "ws_to_tcp_ratio");
            let (metrics, note) =
                versus_tcp(rate, RECEIVERS, &t, tcp.as_ref().ok(), what, TARGET_RATIO);
            row("websocket-rate", Ok(metrics), note)
        }
        Err(why) => row("websocket-rate", Err(why), String::new()),
    };
    vec![tcp_row, websocket_row]
}

/// The figures a reader of the scenario wants side by side.
fn print_summary(rows: &[Row]) {
    let find = |scenario: &str| rows.iter().find(|r| r.scenario == scenario);
    println!("   summary (1 TCP sender → {RECEIVERS} receivers, 64-byte lines):");
    for (scenario, receivers) in [
        ("websocket", Receivers::WebSocket),
        ("websocket-tcp", Receivers::Tcp),
    ] {
        let Some(search) = find(scenario) else {
            continue;
        };
        let get = |name| search.metric(name).unwrap_or(f64::NAN);
        println!(
            "     highest sustained, {}: {:.0} lines/s ({:.2} M deliveries/s, {:.0} ns/delivery, \
             p50/p99 {:.2}/{:.2} ms) ({})",
            receivers.name(),
            get("max_lines_per_s"),
            get("achieved_deliveries_per_s") / 1e6,
            get("server_ns_per_delivery"),
            get("p50_ms"),
            get("p99_ms"),
            match &search.result {
                Ok(_) => search.note.as_str(),
                Err(why) => why.as_str(),
            }
        );
    }
    let rate_rows = |scenario: &'static str| rows.iter().filter(move |r| r.scenario == scenario);
    let pairs = rate_rows("websocket-rate-tcp").zip(rate_rows("websocket-rate"));
    for (rate, (tcp, websocket)) in COMPARE_RATES.iter().zip(pairs) {
        let latency = |row: &Row| {
            let get = |name| row.metric(name).unwrap_or(f64::NAN);
            format!("{:.2}/{:.2}", get("p50_ms"), get("p99_ms"))
        };
        println!(
            "     {rate:.0} lines/s: p50/p99 ms WebSocket {}, TCP {}; {}",
            latency(websocket),
            latency(tcp),
            match &websocket.result {
                Ok(_) => websocket.note.as_str(),
                Err(why) => why.as_str(),
            }
        );
    }
}
