//! The bridge scenario: broadcast-server instances joined to one NATS subject (`--nats`) are
//! one broadcast. One nats-server and two instances, A and B, all three pinned to the server
//! core (the generator keeps the other); 1 sender on A, 100 receivers, 50 on A and 50 on B,
//! 64-byte lines, as in fanout. Each run starts afresh and waits until both instances log
//! that they are bridging and every receiver, on both, has received a line.
//!
//! Full mode: the latency of the receivers on A (local) and on B (across NATS) at a fixed
//! 10,000 lines/s, so the cross-instance hop shows; the highest sustained rate of the
//! 50 + 50 setup (fanout's search rule), saying where its limit came from; and, for
//! comparison, the same 100 receivers on one instance without `--nats` at 10,000 lines/s,
//! and fanout at 160,000 lines/s on one instance with and without `--nats` (no other
//! instance), for the target "a server with --nats and no remote instances keeps ≥ 90% of
//! its fanout throughput". Quick mode: the 50 + 50 setup at 1,000 lines/s for 0.5 s, which
//! fails the run on any loss, duplicate or reordering.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::Options;
use crate::load::{Load, Outcome, Role, Side, Swarm};
use crate::report::{Metrics, Row, join, rate_metrics, side_metrics};
use crate::scenarios::{Trial, fanout_trial, limit_note, measure, rate_search, trial_duration};
use crate::target::{Kind, SERVER_CPU, Scratch, Target, Watched, cpu_busy};

/// Line length, as in fanout.
const LINE_LEN: usize = 64;
/// Receivers on each of A and B.
const RECEIVERS_EACH: usize = 50;
/// The fixed rate of the latency figures (lines/s).
const LATENCY_RATE: f64 = 10_000.0;
/// The fixed rate of the with/without `--nats` comparison: high, where fanout's cost is most
/// of the server's work (and near the generator's ceiling).
const SOLO_RATE: f64 = 160_000.0;
/// The rate and length of the quick run.
const QUICK_RATE: f64 = 1_000.0;
const QUICK_DURATION: Duration = Duration::from_millis(500);
/// What a server with `--nats` and no other instance should keep of its fanout throughput.
const SOLO_TARGET_PCT: f64 = 90.0;
/// What "server" means in the figures of a cluster run.
const SERVERS_ARE: &str = "server CPU = A + B + nats-server, all on one core";
/// What an instance logs once its bridge has connected to NATS.
const BRIDGING: &str = "nats: connected to ";

/// The bridge scenario's rows (see the module documentation).
pub fn bridge(kind: Kind, options: &Options) -> Vec<Row> {
    println!(
        "   A, B and nats-server are pinned together to CPU {SERVER_CPU} (three processes on \
         one core), the generator to the other; their CPU % is of that one core"
    );
    if options.quick {
        return latency_rows(kind, QUICK_RATE, QUICK_DURATION, options);
    }
    let mut rows = latency_rows(kind, LATENCY_RATE, trial_duration(options), options);
    let mut search = rate_search("bridge", kind, options, |rate| {
        let run = cluster_trial(&[RECEIVERS_EACH; 2], rate, trial_duration(options), options)?;
        Ok(Trial {
            detail: where_lost(&run),
            outcome: run.outcome,
        })
    });
    search.note = join(&[SERVERS_ARE.to_string(), search.note]);
    rows.push(search);
    rows.push(baseline_row(kind, options));
    rows.extend(solo_rows(kind, options));
    print_summary(&rows);
    rows
}

/// One broadcast-server instance with `--nats`, and the file it logs into.
struct Instance {
    target: Target,
    log: PathBuf,
}

impl Instance {
    /// Waits (at most 10 s) until the instance logs that its bridge is connected.
    fn wait_until_bridging(&self, name: char) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(BRIDGING) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("instance {name} did not log '{BRIDGING}' in 10 s"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// nats-server and the broadcast-server instances joined through it (A, then B when there
/// is one), all pinned to the server core and watched as one.
struct Cluster {
    instances: Vec<Instance>,
    nats: Target,
    /// Declared last: dropped once the processes writing into it are gone.
    _scratch: Scratch,
}

impl Cluster {
    /// Starts nats-server and `count` instances with `--nats` (plus `--server-args`), and
    /// waits until every instance is bridging.
    fn start(count: usize, options: &Options) -> Result<Cluster, String> {
        let scratch = Scratch::new("bridge")?;
        let (nats, url) = Target::nats_server(&scratch.0)?;
        let mut flags = vec!["--nats", url.as_str()];
        flags.extend(options.server_args.split_whitespace());
        let mut instances = Vec::new();
        for name in ['a', 'b'].into_iter().take(count) {
            let log = scratch.0.join(format!("{name}.log"));
            let target = Target::start_logging(Kind::BroadcastServer, &flags, Some(&log))?;
            instances.push(Instance { target, log });
        }
        for (instance, name) in instances.iter().zip(['A', 'B']) {
            instance.wait_until_bridging(name)?;
        }
        Ok(Cluster {
            instances,
            nats,
            _scratch: scratch,
        })
    }

    fn addr(&self, instance: usize) -> SocketAddr {
        self.instances[instance].target.addr
    }

    /// Every process: A, B (if any), then nats-server.
    fn members(&self) -> impl Iterator<Item = &Target> {
        let instances = self.instances.iter().map(|i| &i.target);
        instances.chain(std::iter::once(&self.nats))
    }

    /// Stops the instances (on SIGTERM each logs its final stats line) and reads their
    /// bridge counters, in instance order (`None` where the line is missing).
    fn stop_instances(&mut self) -> Vec<Option<Counters>> {
        self.instances
            .iter_mut()
            .map(|instance| {
                instance.target.stop(Duration::from_secs(5));
                let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
                Counters::parse(&log)
            })
            .collect()
    }
}

impl Watched for Cluster {
    fn cpu_times(&self) -> Vec<Duration> {
        self.members().map(Target::cpu_time).collect()
    }

    /// The time the server core was busy with anything but these processes (kernel
    /// threads serving their traffic included). Not their run-queue waits: sharing one
    /// core, they wait for each other, which is no busy machine.
    fn cpu_denied(&self) -> Duration {
        cpu_busy(SERVER_CPU).saturating_sub(self.cpu_times().iter().sum())
    }

    fn rss_bytes(&self) -> u64 {
        self.members().map(Target::rss_bytes).sum()
    }
}

/// An instance's NATS bridge counters, from its final stats line (`nats: published=N
/// received=N dropped: backlog=N offline=N too_large=N inbound=N`): over its whole life,
/// warm-up included.
#[derive(Debug, Default)]
struct Counters {
    published: u64,
    received: u64,
    backlog: u64,
    offline: u64,
    too_large: u64,
    inbound: u64,
}

impl Counters {
    /// The counters of the last stats line in `log`, if there is one.
    fn parse(log: &str) -> Option<Counters> {
        let line = log.lines().rev().find(|l| l.contains("nats: published="))?;
        let fields = &line[line.find("nats: published=")?..];
        let mut counters = Counters::default();
        for (key, value) in fields.split_whitespace().filter_map(|f| f.split_once('=')) {
            let value = value.parse().ok()?;
            match key {
                "published" => counters.published = value,
                "received" => counters.received = value,
                "backlog" => counters.backlog = value,
                "offline" => counters.offline = value,
                "too_large" => counters.too_large = value,
                "inbound" => counters.inbound = value,
                _ => {}
            }
        }
        Some(counters)
    }

    /// Local lines this instance did not publish.
    fn not_published(&self) -> u64 {
        self.backlog + self.offline + self.too_large
    }
}

/// One run of a cluster: what the readers received (a side per instance), and each
/// instance's bridge counters.
struct ClusterRun {
    outcome: Outcome,
    counters: Vec<Option<Counters>>,
}

/// One run at `rate` on a fresh cluster of `readers.len()` instances: 1 sender on A and
/// `readers[i]` receivers on instance i.
fn cluster_trial(
    readers: &[usize],
    rate: f64,
    duration: Duration,
    options: &Options,
) -> Result<ClusterRun, String> {
    let mut cluster = Cluster::start(readers.len(), options)?;
    let mut swarm = Swarm::new(LINE_LEN, options.quickack)?;
    swarm.connect(cluster.addr(0), Role::Sender, 1)?;
    for (instance, &count) in readers.iter().enumerate() {
        swarm.connect(cluster.addr(instance), Role::Reader, count)?;
    }
    swarm.warm_up()?;
    let load = Load {
        rate,
        duration,
        drain: Duration::from_secs(1),
    };
    let outcome = measure(&mut swarm, &cluster, load)?;
    let run = ClusterRun {
        outcome,
        counters: cluster.stop_instances(),
    };
    if let [a, b] = &run.outcome.sides[..] {
        println!("      {}", sides_line(a, b));
        println!("      {}", counters_line(&run.counters));
    }
    Ok(run)
}

/// The two sides of a 50 + 50 run, for the log.
fn sides_line(a: &Side, b: &Side) -> String {
    let side = |s: &Side| {
        format!(
            "loss {:.4}%, dup/reord/malformed {}/{}/{}, {} disconnected, p50/p99/max {:.2}/{:.2}/{:.1} ms",
            s.loss() * 100.0,
            s.tally.duplicates,
            s.tally.reordered,
            s.tally.malformed,
            s.disconnected,
            s.latency_ms(0.5),
            s.latency_ms(0.99),
            s.latency_ms(1.0),
        )
    };
    format!(
        "A (local): {}; B (across NATS): {}; hop (B p50 - A p50) {:.2} ms",
        side(a),
        side(b),
        b.latency_ms(0.5) - a.latency_ms(0.5)
    )
}

/// The bridge counters of A and B, and what NATS itself lost between them: what A
/// published that B neither took nor dropped (A and B only ever publish A's lines).
fn counters_line(counters: &[Option<Counters>]) -> String {
    let [Some(a), Some(b)] = counters else {
        return "bridge counters: an instance logged no stats line".to_string();
    };
    format!(
        "bridge counters (warm-up included): A published {}, did not publish {} (outbox full \
         {}, offline {}, too large {}); nats-server lost {}; B took {}, dropped {} (inbox full)",
        a.published,
        a.not_published(),
        a.backlog,
        a.offline,
        a.too_large,
        a.published.saturating_sub(b.received + b.inbound),
        b.received,
        b.inbound
    )
}

/// Where a 50 + 50 run lost lines ("" if nowhere): on which instance's receivers, and at
/// which hop of the bridge.
fn where_lost(run: &ClusterRun) -> String {
    let [a, b] = &run.outcome.sides[..] else {
        return String::new();
    };
    if a.lost() + b.lost() == 0 && a.disconnected + b.disconnected == 0 {
        return String::new();
    }
    let mut text = format!(
        "A (local) lost {:.2}%, {} disconnected; B (across NATS) lost {:.2}%, {} disconnected",
        a.loss() * 100.0,
        a.disconnected,
        b.loss() * 100.0,
        b.disconnected
    );
    let _ = write!(text, "; {}", counters_line(&run.counters));
    text
}

/// The 50 + 50 setup at a fixed `rate`: a row for the receivers on A (local, with the
/// cluster's CPU) and one for those on B (across NATS, with the hop).
fn latency_rows(kind: Kind, rate: f64, duration: Duration, options: &Options) -> Vec<Row> {
    let row = |scenario: &str, result, note| Row {
        scenario: scenario.into(),
        server: kind.name(),
        result,
        note,
    };
    let run = match cluster_trial(&[RECEIVERS_EACH; 2], rate, duration, options) {
        Ok(run) => run,
        Err(why) => return vec![row("bridge-local", Err(why), String::new())],
    };
    let o = &run.outcome;
    let [a, b] = &o.sides[..] else {
        let why = "the swarm did not split its readers over A and B".to_string();
        return vec![row("bridge-local", Err(why), String::new())];
    };
    let head = [("lines_per_s", rate), ("receivers", RECEIVERS_EACH as f64)];
    let mut local: Metrics = head.to_vec();
    local.extend(side_metrics(a));
    local.extend(cpu_split(o));
    let mut remote: Metrics = head.to_vec();
    remote.extend(side_metrics(b));
    remote.extend([
        ("hop_p50_ms", b.latency_ms(0.5) - a.latency_ms(0.5)),
        ("hop_p99_ms", b.latency_ms(0.99) - a.latency_ms(0.99)),
    ]);
    let local_note = [SERVERS_ARE.to_string(), limit_note(o), where_lost(&run)];
    vec![
        row("bridge-local", Ok(local), join(&local_note)),
        row("bridge-remote", Ok(remote), counters_line(&run.counters)),
    ]
}

/// The cluster's CPU during the send phase, each process's share of the one core (A, B if
/// there is one, nats-server: the order of [`Cluster::members`]), and the generator's.
fn cpu_split(o: &Outcome) -> Metrics {
    let each = &o.server_cpu_send_each;
    let pct = |cpu: Option<&Duration>| {
        cpu.map_or(f64::NAN, |c| {
            100.0 * c.as_secs_f64() / o.send_phase.as_secs_f64().max(1e-9)
        })
    };
    let b = if each.len() == 3 { each.get(1) } else { None };
    vec![
        ("servers_cpu_pct", o.server_cpu_pct()),
        ("a_cpu_pct", pct(each.first())),
        ("b_cpu_pct", pct(b)),
        ("nats_server_cpu_pct", pct(each.last())),
        ("servers_ns_per_delivery", o.server_ns_per_delivery()),
        ("loadgen_cpu_pct", o.loadgen_cpu_pct()),
        (
            "generator_limited",
            f64::from(u8::from(o.generator_limited())),
        ),
    ]
}

/// The same 100 receivers on one instance without `--nats`, at the latency rate.
fn baseline_row(kind: Kind, options: &Options) -> Row {
    println!("   one instance without --nats, 100 receivers:");
    let result = fanout_trial(kind, LATENCY_RATE, options);
    let note = result.as_ref().map(limit_note).unwrap_or_default();
    Row {
        scenario: "bridge-baseline".into(),
        server: kind.name(),
        result: result.map(|o| rate_metrics(LATENCY_RATE, None, &o)),
        note,
    }
}

/// Fanout 1 → 100 at `SOLO_RATE` on one instance without `--nats`, then on one with it
/// and no other instance (nats-server on the same core): a row each, the second with how
/// much of the first's throughput it keeps.
fn solo_rows(kind: Kind, options: &Options) -> Vec<Row> {
    let row = |scenario: &str, result, note| Row {
        scenario: scenario.into(),
        server: kind.name(),
        result,
        note,
    };
    println!("   one instance without --nats, fanout 1 → 100:");
    let plain = fanout_trial(kind, SOLO_RATE, options);
    println!("   one instance with --nats and no other instance, fanout 1 → 100:");
    let with = cluster_trial(&[100], SOLO_RATE, trial_duration(options), options);
    let plain_row = match &plain {
        Ok(o) => row(
            "bridge-solo",
            Ok(rate_metrics(SOLO_RATE, None, o)),
            limit_note(o),
        ),
        Err(why) => row("bridge-solo", Err(why.clone()), String::new()),
    };
    let with_row = match with {
        Ok(run) => {
            let (metrics, note) = solo_nats_metrics(&run, plain.as_ref().ok());
            row("bridge-solo-nats", Ok(metrics), note)
        }
        Err(why) => row("bridge-solo-nats", Err(why), String::new()),
    };
    vec![plain_row, with_row]
}

/// The figures of the run with `--nats` alone, and its share of `plain`'s throughput: of
/// the deliveries/s achieved, and of the capacity by server CPU per delivery (what the
/// server core could deliver if it were the limit), the instance alone and counting
/// nats-server on the same core too. The target is judged on the lower of the first two,
/// and not at all when either run had the machine busy or the generator behind schedule.
fn solo_nats_metrics(run: &ClusterRun, plain: Option<&Outcome>) -> (Metrics, String) {
    let o = &run.outcome;
    let per_delivery = |cpu: Duration| cpu.as_nanos() as f64 / o.tally.delivered.max(1) as f64;
    let instance_ns = per_delivery(o.server_cpu_total_each[0]);
    let nats_ns = per_delivery(o.server_cpu_total_each[1]);
    let mut metrics = rate_metrics(SOLO_RATE, None, o);
    metrics.extend(
        cpu_split(o)
            .into_iter()
            .filter(|(n, _)| *n == "nats_server_cpu_pct"),
    );
    metrics.extend([("instance_ns_per_delivery", instance_ns)]);
    if let Some(Some(c)) = run.counters.first() {
        metrics.extend([
            ("bridge_published", c.published as f64),
            ("bridge_not_published", c.not_published() as f64),
        ]);
    }
    let mut note = vec![
        "server_cpu/ns_per_delivery count the instance and nats-server".to_string(),
        limit_note(o),
    ];
    if let Some(plain) = plain {
        let plain_ns = plain.server_ns_per_delivery();
        let kept = [
            100.0 * o.achieved_deliveries_per_sec() / plain.achieved_deliveries_per_sec(),
            100.0 * plain_ns / instance_ns,
        ];
        metrics.extend([
            ("deliveries_kept_pct", kept[0]),
            ("capacity_kept_pct", kept[1]),
            (
                "capacity_kept_sharing_core_pct",
                100.0 * plain_ns / (instance_ns + nats_ns),
            ),
        ]);
        let disturbed = [plain, o].iter().any(|r| r.contended() || r.behind);
        let (met, verdict) = if disturbed {
            (f64::NAN, "not judged (a run was disturbed)")
        } else if kept[0].min(kept[1]) >= SOLO_TARGET_PCT {
            (1.0, "met")
        } else {
            (0.0, "NOT met")
        };
        metrics.push(("target_met", met));
        note.push(format!(
            "target ≥ {SOLO_TARGET_PCT}% of fanout throughput {verdict}: deliveries/s \
             {:.0}%, capacity by CPU per delivery {:.0}%",
            kept[0], kept[1]
        ));
    }
    (metrics, join(&note))
}

/// The figures a reader of the scenario wants side by side.
fn print_summary(rows: &[Row]) {
    let find = |scenario: &str| rows.iter().find(|r| r.scenario == scenario);
    let get = |scenario: &str, name: &str| {
        find(scenario)
            .and_then(|r| r.metric(name))
            .unwrap_or(f64::NAN)
    };
    let latency = |scenario: &str| {
        format!(
            "{:.2}/{:.2}/{:.1}",
            get(scenario, "p50_ms"),
            get(scenario, "p99_ms"),
            get(scenario, "max_ms")
        )
    };
    println!("   summary (A, B and nats-server on one core):");
    println!(
        "     {LATENCY_RATE:.0} lines/s, p50/p99/max ms: A (local) {}, B (across NATS) {}, \
         hop {:.2} ms at p50; one instance without --nats: {}",
        latency("bridge-local"),
        latency("bridge-remote"),
        get("bridge-remote", "hop_p50_ms"),
        latency("bridge-baseline")
    );
    if let Some(search) = find("bridge") {
        println!(
            "     highest sustained 50 + 50 rate: {:.0} lines/s ({})",
            get("bridge", "max_lines_per_s"),
            search.note
        );
    }
    if let Some(solo) = find("bridge-solo-nats") {
        println!(
            "     --nats alone at {SOLO_RATE:.0} lines/s: {:.0} vs {:.0} ns/delivery without \
             ({})",
            get("bridge-solo-nats", "instance_ns_per_delivery"),
            get("bridge-solo", "server_ns_per_delivery"),
            solo.note
        );
    }
}
