//! The tls scenario: what a TLS delivery costs next to a plaintext one. 1 sender → 100
//! receivers, 64-byte lines, as in fanout; every client speaks TLS to a server started with
//! a throw-away certificate (rcgen, generated when the scenario starts): broadcast-server
//! with `--tls-cert`/`--tls-key`, ncat with `--ssl --ssl-cert --ssl-key` — or, for
//! comparison, plain TCP to the same server started without them. Every run starts a fresh
//! server, so the two differ only in TLS: same pinning, same generator, same line checks
//! (records are decrypted back into lines first). Every client completes its handshake
//! before the next connects, and all before the warm-up: no handshake falls in a measured
//! run.
//!
//! The generator decrypts all 100 receivers' records on its one core, so with TLS it, not
//! the server, is the limit, and long before plaintext's: the highest sustained rate says
//! where, and the fixed rates of the cost comparison are below it. Full mode: the highest
//! sustained TLS rate (fanout's search rule, doubling from 1,250 lines/s, since ncat --ssl
//! does not sustain fanout's first 5,000), then plaintext and TLS at each fixed rate,
//! with TLS's server CPU per delivery as a multiple of plaintext's; after every server ran,
//! [`print_comparison`] sets broadcast-server's TLS beside `ncat --ssl --broker`'s. `--rates`
//! replaces the search and the fixed rates. Quick mode: 1 TLS sender → 10 TLS receivers at
//! 1,000 lines/s for 0.5 s, which fails the run on any loss, duplicate, reordering or
//! malformed line or record.

use std::time::Duration;

use crate::Options;
use crate::load::{Outcome, Role, Swarm};
use crate::report::{Metrics, Row, join, rate_metrics};
use crate::scenarios::{Trial, limit_note, measure_logged, rate_search_from, trial_duration};
use crate::target::{Kind, LoggedTarget, Target};
use crate::tls_client::Pki;

/// Line length, as in fanout.
const LINE_LEN: usize = 64;
/// Receivers of the full mode's runs.
const RECEIVERS: usize = 100;
/// The fixed rates of the cost comparison (lines/s): two that ncat --ssl keeps up with (it
/// saturates its core near 1,000), fanout's low and middling rates, and the highest below
/// where the generator saturates decrypting (near 100,000 lines/s, 10 M deliveries/s, on
/// the project's machine).
const COMPARE_RATES: [f64; 5] = [500.0, 1_000.0, 5_000.0, 20_000.0, 50_000.0];
/// Where the TLS rate search starts (lines/s): below fanout's 5,000, which ncat --ssl does
/// not sustain, and on fanout's ladder from 5,000 up.
const SEARCH_START: f64 = 1_250.0;
/// Server CPU during the send phase at or above this: the server's core was saturated.
const SERVER_SATURATED_PCT: f64 = 95.0;
/// The receivers, rate and length of the quick run.
const QUICK_RECEIVERS: usize = 10;
const QUICK_RATE: f64 = 1_000.0;
const QUICK_DURATION: Duration = Duration::from_millis(500);

/// The rows of the fixed-rate comparison: plaintext, then TLS.
const PLAIN_ROW: &str = "tls-rate-plain";
const TLS_ROW: &str = "tls-rate";

/// What every client of a run speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Security {
    Tls,
    Plain,
}

impl Security {
    fn name(self) -> &'static str {
        match self {
            Security::Tls => "TLS",
            Security::Plain => "plaintext",
        }
    }
}

/// The tls scenario's rows (see the module documentation).
pub fn tls(kind: Kind, options: &Options) -> Vec<Row> {
    let pki = match Pki::new("tls") {
        Ok(pki) => pki,
        Err(why) => return vec![row(kind, "tls", Err(why), String::new())],
    };
    println!(
        "   1 sender → receivers, all TLS or all plaintext; every run on a fresh server, \
         handshakes done before the warm-up"
    );
    if options.quick {
        return vec![quick_row(kind, &pki, options)];
    }
    let mut rows = Vec::new();
    let rates = if options.rates.is_empty() {
        rows.push(search_row(kind, &pki, options));
        COMPARE_RATES.to_vec()
    } else {
        options.rates.iter().map(|&r| f64::from(r)).collect()
    };
    for rate in rates {
        rows.extend(compare_rows(kind, &pki, rate, options));
    }
    print_summary(kind, &rows);
    rows
}

/// The highest sustained rate with TLS, as the "tls" row. A search the generator stopped
/// says so; if the server's core was saturated in that last run too, the note adds it, so
/// that a server at its own limit is not read as having room to spare.
fn search_row(kind: Kind, pki: &Pki, options: &Options) -> Row {
    println!("   highest sustained rate, TLS:");
    let mut last_server_cpu = f64::NAN;
    let tls_trial = |rate| {
        let duration = trial_duration(options);
        let run = trial(kind, Security::Tls, pki, RECEIVERS, rate, duration, options)?;
        last_server_cpu = run.trial.outcome.server_cpu_pct();
        Ok(run.trial)
    };
    let mut row = rate_search_from(SEARCH_START, "tls", kind, options, tls_trial);
    let why_stopped = match &row.result {
        Ok(_) => &row.note,
        Err(why) => why,
    };
    if why_stopped.contains("stopped by the generator") && last_server_cpu >= SERVER_SATURATED_PCT {
        let also = format!(
            "but the server's CPU was {last_server_cpu:.0}% in that run: it was at its own \
             limit too"
        );
        match &mut row.result {
            Ok(_) => row.note = join(&[row.note.clone(), also]),
            Err(why) => *why = join(&[why.clone(), also]),
        }
    }
    row
}

fn row(kind: Kind, scenario: &str, result: Result<Metrics, String>, note: String) -> Row {
    Row {
        scenario: scenario.into(),
        server: kind.name(),
        result,
        note,
    }
}

/// Starts `kind` speaking `security` (plus `--server-args`; broadcast-server logs at info
/// level, ncat its complaints) and waits until it accepts.
fn start_server(
    kind: Kind,
    security: Security,
    pki: &Pki,
    options: &Options,
) -> Result<LoggedTarget, String> {
    let flags: Vec<&str> = options.server_args.split_whitespace().collect();
    LoggedTarget::start("tls", |log| match security {
        Security::Tls => Target::start_tls(kind, &flags, &pki.files, Some(log)),
        Security::Plain => Target::start_logging(kind, &flags, Some(log)),
    })
}

/// One run: its outcome and what the server logged ([`Trial`]), and the protocol and
/// cipher suite the TLS clients negotiated ("" in plaintext).
struct Run {
    trial: Trial,
    session: String,
}

/// One run at `rate` on a fresh server: 1 sender and `count` receivers, all speaking
/// `security`. Its detail is what the server logged during the measured run (clients
/// leaving, warnings, failed handshakes).
fn trial(
    kind: Kind,
    security: Security,
    pki: &Pki,
    count: usize,
    rate: f64,
    duration: Duration,
    options: &Options,
) -> Result<Run, String> {
    let server = start_server(kind, security, pki, options)?;
    let addr = server.target.addr;
    let mut swarm = Swarm::new(LINE_LEN, options.quickack)?;
    let session = match security {
        Security::Tls => {
            swarm.connect_tls(addr, &pki.client, Role::Sender, 1)?;
            swarm.connect_tls(addr, &pki.client, Role::Reader, count)?
        }
        Security::Plain => {
            swarm.connect(addr, Role::Sender, 1)?;
            swarm.connect(addr, Role::Reader, count)?;
            String::new()
        }
    };
    let trial = measure_logged(&mut swarm, &server, rate, duration)?;
    Ok(Run { trial, session })
}

/// The quick run: a few TLS receivers, briefly (see the module documentation).
fn quick_row(kind: Kind, pki: &Pki, options: &Options) -> Row {
    let run = trial(
        kind,
        Security::Tls,
        pki,
        QUICK_RECEIVERS,
        QUICK_RATE,
        QUICK_DURATION,
        options,
    );
    match run {
        Ok(Run { trial, session }) => row(
            kind,
            "tls",
            Ok(rate_metrics(
                QUICK_RATE,
                Some(QUICK_RECEIVERS),
                &trial.outcome,
            )),
            join(&[session, limit_note(&trial.outcome), trial.detail]),
        ),
        Err(why) => row(kind, "tls", Err(why), String::new()),
    }
}

/// Plaintext, then TLS at the fixed `rate`: a row each, the TLS one with its cost per
/// delivery as a multiple of plaintext's and the verdict on the comparison.
fn compare_rows(kind: Kind, pki: &Pki, rate: f64, options: &Options) -> Vec<Row> {
    let run = |security: Security| {
        println!("   {rate:.0} lines/s, {}:", security.name());
        let duration = trial_duration(options);
        trial(kind, security, pki, RECEIVERS, rate, duration, options)
    };
    let plain = run(Security::Plain);
    let tls = run(Security::Tls);
    let plain_row = match &plain {
        Ok(run) => row(
            kind,
            PLAIN_ROW,
            Ok(rate_metrics(rate, Some(RECEIVERS), &run.trial.outcome)),
            join(&[limit_note(&run.trial.outcome), run.trial.detail.clone()]),
        ),
        Err(why) => row(kind, PLAIN_ROW, Err(why.clone()), String::new()),
    };
    let tls_row = match tls {
        Ok(run) => {
            let (metrics, note) = compare_metrics(rate, &run, plain.as_ref().ok());
            row(kind, TLS_ROW, Ok(metrics), note)
        }
        Err(why) => row(kind, TLS_ROW, Err(why), String::new()),
    };
    vec![plain_row, tls_row]
}

/// The figures of the TLS run at `rate`, and its server CPU per delivery as a multiple of
/// the plaintext run's. The verdict: compared, or not, when either run had the machine
/// busy or the generator behind schedule, or did not keep the offered rate (then the two
/// costs are not at the same rate). What limited either run besides the server (a
/// saturated generator, a busy machine) is named in the note.
fn compare_metrics(rate: f64, tls: &Run, plain: Option<&Run>) -> (Metrics, String) {
    let o = &tls.trial.outcome;
    let mut metrics = rate_metrics(rate, Some(RECEIVERS), o);
    let Some(plain) = plain.map(|r| &r.trial.outcome) else {
        let note = [
            "no plaintext run to compare with".to_string(),
            tls.session.clone(),
            limit_note(o),
            tls.trial.detail.clone(),
        ];
        return (metrics, join(&note));
    };
    let ratio = o.server_ns_per_delivery() / plain.server_ns_per_delivery();
    let disturbed = [plain, o].iter().any(|r| r.contended() || r.behind);
    let behind = [("TLS", o), ("plaintext", plain)]
        .into_iter()
        .find(|(_, r)| fell_behind(r));
    let (comparable, verdict) = match behind {
        _ if disturbed => (0.0, "not compared (a run was disturbed)".to_string()),
        Some((run, r)) => (
            0.0,
            format!(
                "not at the same rate (the {run} run delivered {:.2} of {:.2} M deliveries/s)",
                r.achieved_deliveries_per_sec() / 1e6,
                r.offered_deliveries_per_sec() / 1e6
            ),
        ),
        None => (1.0, "compared".to_string()),
    };
    metrics.extend([
        ("plain_ns_per_delivery", plain.server_ns_per_delivery()),
        ("plain_p50_ms", plain.latency_ms(0.5)),
        ("plain_p99_ms", plain.latency_ms(0.99)),
        (
            "plain_generator_limited",
            f64::from(u8::from(plain.generator_limited())),
        ),
        ("tls_to_plain_ratio", ratio),
        ("comparable", comparable),
    ]);
    let mut note = vec![format!(
        "TLS vs plaintext {verdict}: TLS {:.0} vs plaintext {:.0} ns/delivery ({ratio:.2}×)",
        o.server_ns_per_delivery(),
        plain.server_ns_per_delivery()
    )];
    for (run, outcome) in [("TLS run", o), ("plaintext run", plain)] {
        let limits = [shortfall(outcome), limit_note(outcome)];
        if limits.iter().any(|l| !l.is_empty()) {
            note.push(format!("{run}: {}", join(&limits)));
        }
    }
    note.push(tls.session.clone());
    note.push(tls.trial.detail.clone());
    (metrics, join(&note))
}

/// Below this share of the offered deliveries per second, a run that lost nothing still
/// did not keep the offered rate: it caught up in the drain.
const KEPT_RATE: f64 = 0.95;

/// Whether a run did not keep the offered rate: it lost more than 0.1% of its deliveries
/// (still missing at the end of the drain), delivered the rest late enough to fall under
/// `KEPT_RATE`, had clients disconnected or stopped reading its sender.
fn fell_behind(o: &Outcome) -> bool {
    o.loss() > 0.001
        || o.achieved_deliveries_per_sec() < KEPT_RATE * o.offered_deliveries_per_sec()
        || o.disconnected > 0
        || o.backlogged
}

/// What a run failed to deliver, and whose doing that was ("" if it delivered everything):
/// lines still missing after the drain, with no generator or machine limit to blame, are
/// a server that fell behind the offered rate.
fn shortfall(o: &Outcome) -> String {
    if !fell_behind(o) {
        return String::new();
    }
    let whose = if o.generator_limited() {
        "generator or machine limited too"
    } else {
        "the server fell behind"
    };
    format!(
        "{:.2} of {:.2} M deliveries/s, {:.1}% not delivered by the end of the drain, {} \
         disconnected{} ({whose})",
        o.achieved_deliveries_per_sec() / 1e6,
        o.offered_deliveries_per_sec() / 1e6,
        o.loss() * 100.0,
        o.disconnected,
        if o.backlogged {
            ", it stopped reading the sender"
        } else {
            ""
        }
    )
}

/// The figures a reader of the scenario wants side by side, for one server.
fn print_summary(kind: Kind, rows: &[Row]) {
    println!(
        "   summary ({}, 1 sender → {RECEIVERS} receivers, 64-byte lines):",
        kind.name()
    );
    if let Some(search) = rows.iter().find(|r| r.scenario == "tls") {
        print_search(search);
    }
    for tls in rows.iter().filter(|r| r.scenario == TLS_ROW) {
        let get = |name| tls.metric(name).unwrap_or(f64::NAN);
        println!(
            "     {:.0} lines/s: p50/p99 ms TLS {:.2}/{:.2}, plaintext {:.2}/{:.2}; {}",
            get("lines_per_s"),
            get("p50_ms"),
            get("p99_ms"),
            get("plain_p50_ms"),
            get("plain_p99_ms"),
            match &tls.result {
                Ok(_) => tls.note.as_str(),
                Err(why) => why.as_str(),
            }
        );
    }
}

/// The highest sustained TLS rate, and, when the search stopped at the generator, a plain
/// statement that the generator's decryption, not the server, is the limit.
fn print_search(search: &Row) {
    if let Err(why) = &search.result {
        println!("     highest sustained, TLS: none ({why})");
        return;
    }
    let get = |name| search.metric(name).unwrap_or(f64::NAN);
    println!(
        "     highest sustained, TLS: {:.0} lines/s ({:.2} M deliveries/s, {:.0} ns/delivery, \
         p50/p99 {:.2}/{:.2} ms) ({})",
        get("max_lines_per_s"),
        get("achieved_deliveries_per_s") / 1e6,
        get("server_ns_per_delivery"),
        get("p50_ms"),
        get("p99_ms"),
        search.note
    );
    if get("generator_was_limit") == 1.0 {
        println!(
            "     the limit with TLS is the generator (one core decrypting every receiver's \
             records), not the server: at {:.0} lines/s the server used {:.0}% of its core, the \
             generator {:.0}% of its own",
            get("max_lines_per_s"),
            get("server_cpu_pct"),
            get("loadgen_cpu_pct")
        );
    }
}

/// After every server ran: server CPU per delivery with plaintext and with TLS at each
/// fixed rate, for every server, and broadcast-server's TLS as a multiple of ncat's (both
/// servers' own TLS; the same generator and clients, certificates of the same kind).
pub fn print_comparison(rows: &[Row]) {
    let tls_rows: Vec<&Row> = rows.iter().filter(|r| r.scenario == TLS_ROW).collect();
    if tls_rows.is_empty() {
        return;
    }
    println!(
        "\ntls 1 → {RECEIVERS}, same offered rate, plaintext vs TLS (server CPU ns per delivery, \
         drain included; p50/p99 ms; generator CPU % of the TLS run)\n"
    );
    println!(
        "| lines/s | server | plaintext ns | TLS ns | TLS ÷ plaintext | plaintext p50/p99 \
         | TLS p50/p99 | TLS achieved deliv/s | TLS loss % | TLS generator CPU % | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for tls in &tls_rows {
        let m = |name| tls.metric(name).unwrap_or(f64::NAN);
        if let Err(why) = &tls.result {
            println!("| - | {} | failed: {why} |||||||||", tls.server);
            continue;
        }
        println!(
            "| {:.0} | {} | {:.0} | {:.0} | {:.2}× | {:.2}/{:.2} | {:.2}/{:.2} | {:.0} | {:.2} | {:.0} | {} |",
            m("lines_per_s"),
            tls.server,
            m("plain_ns_per_delivery"),
            m("server_ns_per_delivery"),
            m("tls_to_plain_ratio"),
            m("plain_p50_ms"),
            m("plain_p99_ms"),
            m("p50_ms"),
            m("p99_ms"),
            m("achieved_deliveries_per_s"),
            m("loss_pct"),
            m("loadgen_cpu_pct"),
            if tls.note.is_empty() { "-" } else { &tls.note },
        );
    }
    print_against_ncat(&tls_rows);
}

/// broadcast-server's TLS cost per delivery as a multiple of ncat --ssl's, rate by rate.
fn print_against_ncat(tls_rows: &[&Row]) {
    let of = |kind: Kind, rate: f64| {
        tls_rows.iter().find(|r| {
            r.server == kind.name() && r.result.is_ok() && r.metric("lines_per_s") == Some(rate)
        })
    };
    let mut printed = false;
    for ours in tls_rows
        .iter()
        .filter(|r| r.server == Kind::BroadcastServer.name() && r.result.is_ok())
    {
        let rate = ours.metric("lines_per_s").unwrap_or(f64::NAN);
        let Some(ncat) = of(Kind::Ncat, rate) else {
            continue;
        };
        if !printed {
            println!("\nbroadcast-server TLS vs ncat --ssl --broker, same rate:");
            printed = true;
        }
        let ns = |row: &Row| row.metric("server_ns_per_delivery").unwrap_or(f64::NAN);
        let mut caveats = Vec::new();
        for (name, row) in [("broadcast-server", ours), ("ncat --ssl", ncat)] {
            let m = |metric| row.metric(metric).unwrap_or(f64::NAN);
            let kept = m("achieved_deliveries_per_s") >= KEPT_RATE * m("offered_deliveries_per_s");
            if m("loss_pct") > 0.1 || m("disconnects") > 0.0 || !kept {
                caveats.push(format!(
                    "{name} fell behind: {:.2} of {:.2} M deliveries/s, p99 {:.0} ms",
                    m("achieved_deliveries_per_s") / 1e6,
                    m("offered_deliveries_per_s") / 1e6,
                    m("p99_ms")
                ));
            }
            if m("generator_limited") == 1.0 {
                caveats.push(format!(
                    "{name}'s run was GENERATOR-LIMITED or the machine busy"
                ));
            }
        }
        println!(
            "  {rate:.0} lines/s: broadcast-server {:.0} vs ncat --ssl {:.0} ns/delivery ({:.2}×), \
             p50/p99 {:.2}/{:.2} vs {:.2}/{:.2} ms{}",
            ns(ours),
            ns(ncat),
            ns(ours) / ns(ncat),
            ours.metric("p50_ms").unwrap_or(f64::NAN),
            ours.metric("p99_ms").unwrap_or(f64::NAN),
            ncat.metric("p50_ms").unwrap_or(f64::NAN),
            ncat.metric("p99_ms").unwrap_or(f64::NAN),
            if caveats.is_empty() {
                String::new()
            } else {
                format!(" ({})", caveats.join("; "))
            }
        );
    }
}
