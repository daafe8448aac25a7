//! The chaos and soak scenarios (broadcast-server only): two servers side by side, one in
//! plaintext with `--http` (its line port, WebSocket, `/lines` and `/events`) and one with
//! TLS, both with `--rooms`, `--max-line 4096` and `--tcp-keepalive 2`. Good clients of every transport (a TCP
//! sender with TCP, WebSocket, `/lines` and `/events` readers; a TLS sender with TLS
//! readers) check that every line arrives once, whole and in order.
//!
//! **chaos**: for 60 s (3 s with `--quick`), hostile clients (see `hostile`) hammer both
//! servers on every transport beside the good ones. Reports the lines checked, lost (must be
//! 0), the hostile connections made, and the servers' descriptors and RSS before and after
//! (once the hostile ones are gone, the descriptors must be back where they were).
//!
//! **soak**: 10 minutes (3 s with `--quick`) of the good clients alone at a steady rate;
//! both servers' RSS and descriptors sampled every 10 s (1 s with `--quick`) must be flat
//! after the first minute (the warm-up). Reports the series.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::Options;
use crate::hostile::{Hostile, Targets};
use crate::http_stream::Stream;
use crate::load::{Load, Outcome, Role, Swarm};
use crate::report::{Metrics, Row, join, rate_metrics};
use crate::scenarios::limit_note;
use crate::scenarios::websocket::wait_for_http;
use crate::target::{Kind, LoggedTarget, SERVER_CPU, Target, Watched, cpu_busy};
use crate::tls_client::Pki;

/// Line length, as in fanout.
const LINE_LEN: usize = 64;
/// The servers' `--max-line`: small, so that over-long lines are cheap to send.
const MAX_LINE: usize = 4096;
/// Good readers of each kind.
const READERS: usize = 10;
/// Lines a second over both senders.
const RATE: f64 = 1_000.0;
/// Hostile threads.
const HOSTILE_THREADS: usize = 4;
/// Descriptors and RSS may take this long to come back once the hostile clients are gone
/// (the server notices a vanished peer at its next read or write).
const SETTLE: Duration = Duration::from_secs(15);
/// What the soak's RSS may grow after its warm-up, in bytes (allocator noise).
const SOAK_RSS_SLACK: u64 = 2 * 1024 * 1024;

/// The two servers, watched together.
struct Pair {
    plain: LoggedTarget,
    tls: LoggedTarget,
    web: SocketAddr,
}

impl Pair {
    fn start(kind: Kind, pki: &Pki) -> Result<Pair, String> {
        let max_line = MAX_LINE.to_string();
        // A reader that half-closed and then went, in a room where nothing is said, is
        // found by TCP keepalive (no write fails): 2 s instead of 60, so that the run sees
        // every descriptor come back within `SETTLE`.
        let common = [
            "--rooms",
            "--max-line",
            max_line.as_str(),
            "--tcp-keepalive",
            "2",
        ];
        let mut plain_flags = vec!["--http", "127.0.0.1:0"];
        plain_flags.extend(common);
        let plain = LoggedTarget::start("chaos", |log| {
            Target::start_logging(kind, &plain_flags, Some(log))
        })?;
        let web = wait_for_http(plain.log_path())?;
        let tls = LoggedTarget::start("chaos-tls", |log| {
            Target::start_tls(kind, &common, &pki.files, Some(log))
        })?;
        Ok(Pair { plain, tls, web })
    }

    fn members(&self) -> [&Target; 2] {
        [&self.plain.target, &self.tls.target]
    }

    /// Open descriptors of both servers.
    fn fds(&self) -> usize {
        self.members()
            .iter()
            .map(|t| std::fs::read_dir(format!("/proc/{}/fd", t.pid())).map_or(0, |d| d.count()))
            .sum()
    }

    /// The good clients of every transport, warmed up.
    fn good_clients(&self, pki: &Pki, quickack: bool) -> Result<Swarm, String> {
        let (plain, tls) = (self.plain.target.addr, self.tls.target.addr);
        let mut swarm = Swarm::new(LINE_LEN, quickack)?;
        swarm.connect(plain, Role::Sender, 1)?;
        swarm.connect(plain, Role::Reader, READERS)?;
        swarm.connect_websocket(plain, self.web, READERS)?;
        swarm.connect_http_readers(plain, self.web, Stream::Chunks, READERS)?;
        swarm.connect_http_readers(plain, self.web, Stream::Events, READERS)?;
        swarm.connect_tls(tls, &pki.client, Role::Sender, 1)?;
        swarm.connect_tls(tls, &pki.client, Role::Reader, READERS)?;
        swarm.separate(tls);
        swarm.warm_up()?;
        Ok(swarm)
    }
}

impl Watched for Pair {
    fn cpu_times(&self) -> Vec<Duration> {
        self.members().iter().map(|t| t.cpu_time()).collect()
    }

    fn cpu_denied(&self) -> Duration {
        cpu_busy(SERVER_CPU).saturating_sub(self.cpu_times().iter().sum())
    }

    fn rss_bytes(&self) -> u64 {
        self.members().iter().map(|t| t.rss_bytes()).sum()
    }
}

/// A row of one of these scenarios.
fn row(scenario: &str, result: Result<Metrics, String>, note: String) -> Row {
    Row {
        scenario: scenario.into(),
        server: Kind::BroadcastServer.name(),
        result,
        note,
    }
}

/// The checks every good line passed, as metrics: what the run owed and got.
fn good_metrics(o: &Outcome) -> Metrics {
    let mut metrics = rate_metrics(RATE, None, o);
    metrics.extend([
        ("lines_checked", o.tally.delivered as f64),
        ("good_disconnected", o.disconnected as f64),
    ]);
    metrics
}

/// The chaos scenario's row (see the module documentation).
pub fn chaos(kind: Kind, options: &Options) -> Vec<Row> {
    let run = || -> Result<(Metrics, String), String> {
        let pki = Pki::new("chaos")?;
        let pair = Pair::start(kind, &pki)?;
        let mut swarm = pair.good_clients(&pki, options.quickack)?;
        let (fds_before, rss_before) = (pair.fds(), pair.rss_bytes());
        let targets = Targets {
            lines: pair.plain.target.addr,
            web: pair.web,
            tls: pair.tls.target.addr,
            tls_config: Arc::clone(&pki.client),
            max_line: MAX_LINE,
        };
        let duration = Duration::from_secs(if options.quick { 3 } else { 60 });
        println!(
            "   {} s: {HOSTILE_THREADS} threads of hostile clients on every transport, beside \
             good clients of each",
            duration.as_secs()
        );
        let hostile = Hostile::start(&targets, HOSTILE_THREADS);
        // The hostile clients stop 2 s before the good ones: a reader that half-closed and
        // then went is found at the server's next write to it, so lines must still flow.
        let stopper = thread::spawn(move || {
            thread::sleep(duration.saturating_sub(Duration::from_secs(2))); // the attack's length
            hostile.stop()
        });
        let load = Load {
            rate: RATE,
            duration,
            drain: Duration::from_secs(2),
        };
        let outcome = swarm.run(&pair, load);
        let hostile_connections = stopper.join().unwrap_or(0);
        // The hostile connections are closed: the descriptors come back.
        let deadline = Instant::now() + SETTLE;
        while pair.fds() > fds_before && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100)); // polling /proc, with a deadline
        }
        let (fds_after, rss_after) = (pair.fds(), pair.rss_bytes());
        let mut metrics = good_metrics(&outcome);
        metrics.extend([
            ("hostile_connections", hostile_connections as f64),
            ("fds_before", fds_before as f64),
            ("fds_after", fds_after as f64),
            ("rss_before_mb", rss_before as f64 / 1e6),
            ("rss_after_mb", rss_after as f64 / 1e6),
        ]);
        println!(
            "   lines checked {}, lost {}, dup/reord/malformed {}/{}/{}, good clients cut {}; \
             {hostile_connections} hostile connections; descriptors {fds_before} → {fds_after}, \
             RSS {:.1} → {:.1} MB",
            outcome.tally.delivered,
            outcome.lost(),
            outcome.tally.duplicates,
            outcome.tally.reordered,
            outcome.tally.malformed,
            outcome.disconnected,
            rss_before as f64 / 1e6,
            rss_after as f64 / 1e6
        );
        if outcome.lost() > 0 || outcome.disconnected > 0 {
            return Err(format!(
                "good clients lost {} lines, {} were cut",
                outcome.lost(),
                outcome.disconnected
            ));
        }
        if fds_after > fds_before {
            return Err(format!(
                "descriptors leaked: {fds_before} before, {fds_after} after"
            ));
        }
        Ok((metrics, limit_note(&outcome)))
    };
    let (result, note) = match run() {
        Ok((metrics, note)) => (Ok(metrics), note),
        Err(why) => (Err(why), String::new()),
    };
    vec![row("chaos", result, note)]
}

/// The soak scenario's row (see the module documentation).
pub fn soak(kind: Kind, options: &Options) -> Vec<Row> {
    let run = || -> Result<(Metrics, String), String> {
        let pki = Pki::new("soak")?;
        let pair = Arc::new(Pair::start(kind, &pki)?);
        let mut swarm = pair.good_clients(&pki, options.quickack)?;
        let (duration, every, warm_up) = match options.quick {
            true => (
                Duration::from_secs(3),
                Duration::from_secs(1),
                Duration::from_secs(1),
            ),
            false => (
                Duration::from_secs(600),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ),
        };
        println!(
            "   {} s at {RATE:.0} lines/s to every good client; RSS and descriptors every {} s",
            duration.as_secs(),
            every.as_secs()
        );
        // Sampled on a thread of its own while the generator runs.
        let samples = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (pair, samples, done) =
                (Arc::clone(&pair), Arc::clone(&samples), Arc::clone(&done));
            thread::spawn(move || {
                let start = Instant::now();
                let mut next = start;
                while !done.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        let sample = (start.elapsed(), pair.rss_bytes(), pair.fds());
                        samples.lock().map(|mut s| s.push(sample)).unwrap_or(());
                        next += every;
                    }
                    thread::sleep(Duration::from_millis(50)); // the sampling period's tick
                }
            })
        };
        let load = Load {
            rate: RATE,
            duration,
            drain: Duration::from_secs(2),
        };
        let outcome = swarm.run(&*pair, load);
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
        let series: Vec<String> = samples
            .iter()
            .map(|(at, rss, fds)| format!("{}s:{:.2}MB/{fds}fd", at.as_secs(), *rss as f64 / 1e6))
            .collect();
        println!("   series: {}", series.join(" "));
        let settled: Vec<&(Duration, u64, usize)> =
            samples.iter().filter(|(at, _, _)| *at >= warm_up).collect();
        let (first, last) = match (settled.first(), settled.last()) {
            (Some(first), Some(last)) => (**first, **last),
            _ => return Err("no sample after the warm-up".into()),
        };
        let rss_growth = last.1.saturating_sub(first.1);
        let fds_growth = last.2.saturating_sub(first.2);
        let mut metrics = good_metrics(&outcome);
        metrics.extend([
            ("samples", samples.len() as f64),
            ("rss_after_warm_up_mb", first.1 as f64 / 1e6),
            ("rss_end_mb", last.1 as f64 / 1e6),
            ("rss_growth_kb", rss_growth as f64 / 1e3),
            ("fds_growth", fds_growth as f64),
        ]);
        if outcome.lost() > 0 || outcome.disconnected > 0 {
            return Err(format!(
                "lost {} lines, {} clients cut",
                outcome.lost(),
                outcome.disconnected
            ));
        }
        if rss_growth > SOAK_RSS_SLACK || fds_growth > 0 {
            return Err(format!(
                "not flat after the warm-up: RSS +{:.1} MB, descriptors +{fds_growth} ({})",
                rss_growth as f64 / 1e6,
                series.join(" ")
            ));
        }
        Ok((
            metrics,
            join(&[limit_note(&outcome), format!("series {}", series.join(" "))]),
        ))
    };
    let (result, note) = match run() {
        Ok((metrics, note)) => (Ok(metrics), note),
        Err(why) => (Err(why), String::new()),
    };
    vec![row("soak", result, note)]
}
