//! The http-stream scenario: what a reader of `GET /lines` (chunks) or of `GET /events`
//! (Server-Sent Events) costs next to a TCP receiver. 1 TCP sender, 64-byte lines, 100 TCP
//! receivers, and beside them N = 1, 10 or 100 readers of `/lines`, or of `/events`, or,
//! for comparison, N more TCP receivers: every run on a fresh server with `--http`, same
//! pinning, same generator, same line checks (chunks and events are decoded back into
//! lines first, and event ids must number the lines one after another).
//!
//! Full mode: each N at each of the fixed rates, for the target "a run with HTTP readers
//! costs at most 1.3× server CPU per delivery of the same run with TCP receivers only".
//! Quick mode: 10 TCP receivers, 10 readers of `/lines` and 10 of `/events` at 1,000
//! lines/s for 0.5 s, which fails the run on any loss, duplicate, reordering or malformed
//! chunk or event.

use std::time::Duration;

use crate::Options;
use crate::http_stream::Stream;
use crate::load::{Role, Swarm};
use crate::report::{Row, join, rate_metrics};
use crate::scenarios::websocket::start_web_server;
use crate::scenarios::{Trial, limit_note, measure_logged, trial_duration, versus_tcp};
use crate::target::Kind;

/// Line length, as in fanout.
const LINE_LEN: usize = 64;
/// TCP receivers in every run.
const TCP_RECEIVERS: usize = 100;
/// How many readers of each kind are added beside them.
const READERS: [usize; 3] = [1, 10, 100];
/// The fixed rates (lines/s).
const RATES: [f64; 2] = [5_000.0, 20_000.0];
/// What a delivery in a run with HTTP readers may cost, as a multiple of the TCP-only run's.
const TARGET_RATIO: f64 = 1.3;
const QUICK_RECEIVERS: usize = 10;
const QUICK_RATE: f64 = 1_000.0;
const QUICK_DURATION: Duration = Duration::from_millis(500);

/// Who the added receivers of a run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Added {
    Tcp,
    Http(Stream),
}

impl Added {
    fn name(self) -> &'static str {
        match self {
            Added::Tcp => "tcp",
            Added::Http(Stream::Chunks) => "lines",
            Added::Http(Stream::Events) => "events",
        }
    }
}

/// The http-stream scenario's rows (see the module documentation).
pub fn http_stream(kind: Kind, options: &Options) -> Vec<Row> {
    println!(
        "   1 TCP sender → {TCP_RECEIVERS} TCP receivers + N readers of /lines, /events or TCP"
    );
    if options.quick {
        return vec![quick_row(kind, options)];
    }
    let mut rows = Vec::new();
    for rate in RATES {
        for readers in READERS {
            rows.extend(compare_rows(kind, rate, readers, options));
        }
    }
    rows
}

/// One run at `rate` on a fresh server: 1 TCP sender, `tcp` TCP receivers and each of
/// `added` as `(who, how many)`.
fn trial(
    kind: Kind,
    tcp: usize,
    added: &[(Added, usize)],
    rate: f64,
    duration: Duration,
    options: &Options,
) -> Result<Trial, String> {
    let (server, http) = start_web_server(kind, options)?;
    let addr = server.target.addr;
    let mut swarm = Swarm::new(LINE_LEN, options.quickack)?;
    swarm.connect(addr, Role::Sender, 1)?;
    swarm.connect(addr, Role::Reader, tcp)?;
    for &(who, count) in added {
        match who {
            Added::Tcp => swarm.connect(addr, Role::Reader, count)?,
            Added::Http(stream) => swarm.connect_http_readers(addr, http, stream, count)?,
        }
    }
    measure_logged(&mut swarm, &server, rate, duration)
}

/// The quick run: a few readers of each kind at once, briefly.
fn quick_row(kind: Kind, options: &Options) -> Row {
    let added = [
        (Added::Http(Stream::Chunks), QUICK_RECEIVERS),
        (Added::Http(Stream::Events), QUICK_RECEIVERS),
    ];
    let run = trial(
        kind,
        QUICK_RECEIVERS,
        &added,
        QUICK_RATE,
        QUICK_DURATION,
        options,
    );
    let (result, note) = match run {
        Ok(Trial { outcome, detail }) => (
            Ok(rate_metrics(
                QUICK_RATE,
                Some(3 * QUICK_RECEIVERS),
                &outcome,
            )),
            join(&[limit_note(&outcome), detail]),
        ),
        Err(why) => (Err(why), String::new()),
    };
    Row {
        scenario: "http-stream".into(),
        server: kind.name(),
        result,
        note,
    }
}

/// At `rate`, `readers` more TCP receivers, then as many readers of `/lines`, then of
/// `/events`: a row each, the HTTP ones with their cost per delivery as a multiple of the
/// TCP run's and the target's verdict.
fn compare_rows(kind: Kind, rate: f64, readers: usize, options: &Options) -> Vec<Row> {
    let receivers = TCP_RECEIVERS + readers;
    let run = |who: Added| {
        println!(
            "   {rate:.0} lines/s, {TCP_RECEIVERS} TCP + {readers} {}:",
            who.name()
        );
        let duration = trial_duration(options);
        trial(
            kind,
            TCP_RECEIVERS,
            &[(who, readers)],
            rate,
            duration,
            options,
        )
    };
    let tcp = run(Added::Tcp);
    let mut rows = Vec::new();
    let scenario = |who: Added| format!("http-stream-{readers}-{}", who.name());
    rows.push(Row {
        scenario: scenario(Added::Tcp),
        server: kind.name(),
        result: tcp
            .as_ref()
            .map(|t| rate_metrics(rate, Some(receivers), &t.outcome))
            .map_err(Clone::clone),
        note: tcp
            .as_ref()
            .map(|t| join(&[limit_note(&t.outcome), t.detail.clone()]))
            .unwrap_or_default(),
    });
    for stream in [Stream::Chunks, Stream::Events] {
        let who = Added::Http(stream);
        let (result, note) = match run(who) {
            Ok(t) => {
                let what = (who.name(), "to_tcp_ratio");
                let (metrics, note) =
                    versus_tcp(rate, receivers, &t, tcp.as_ref().ok(), what, TARGET_RATIO);
                (Ok(metrics), note)
            }
            Err(why) => (Err(why), String::new()),
        };
        rows.push(Row {
            scenario: scenario(who),
            server: kind.name(),
            result,
            note,
        });
    }
    rows
}
