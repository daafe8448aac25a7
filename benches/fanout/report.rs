//! Turning outcomes into figures: one line per trial as it runs, the results table, the
//! same-rate table, and `fanout-bench.json` under the cargo target directory.

use std::fmt::Write as _;

use crate::load::{Outcome, Side, quantile_ms};
use crate::receive::Tally;

/// Named figures of one scenario for one server, in print order.
pub type Metrics = Vec<(&'static str, f64)>;

/// The scenario name of same-rate fanout rows, which get a table of their own.
pub const SAME_RATE: &str = "fanout-rate";

/// One row of results: a scenario's figures for one server.
pub struct Row {
    pub scenario: String,
    pub server: &'static str,
    /// `Err` when the server could not run the scenario at all.
    pub result: Result<Metrics, String>,
    /// A sentence for the reader, e.g. what limited a rate search.
    pub note: String,
}

impl Row {
    pub fn metric(&self, name: &str) -> Option<f64> {
        let metrics = self.result.as_ref().ok()?;
        metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// What every delivery scenario reports. Rates: offered = rate × recipients; achieved =
/// distinct deliveries / (send start → last counted arrival). CPU %: during the send phase.
/// ns/delivery: server CPU over the whole run (drain included) / deliveries.
pub fn delivery_metrics(o: &Outcome) -> Metrics {
    vec![
        ("offered_deliveries_per_s", o.offered_deliveries_per_sec()),
        ("achieved_deliveries_per_s", o.achieved_deliveries_per_sec()),
    ]
    .into_iter()
    .chain(faults(o.loss(), o.lost(), &o.tally, o.disconnected))
    .chain([
        ("p50_ms", o.latency_ms(0.5)),
        ("p99_ms", o.latency_ms(0.99)),
        ("max_ms", o.latency_ms(1.0)),
        ("server_cpu_pct", o.server_cpu_pct()),
        ("server_ns_per_delivery", o.server_ns_per_delivery()),
        ("loadgen_cpu_pct", o.loadgen_cpu_pct()),
        (
            "loadgen_read_lag_p99_ms",
            quantile_ms(&o.tally.read_lag, 0.99),
        ),
        ("loadgen_cpu_wait_ms", o.loadgen_wait.as_secs_f64() * 1000.0),
        ("server_cpu_wait_ms", o.server_wait.as_secs_f64() * 1000.0),
        (
            "generator_limited",
            f64::from(u8::from(o.generator_limited())),
        ),
    ])
    .collect()
}

/// What the readers connected to one server of several received, on their own (the
/// delivery figures of the whole run are in [`delivery_metrics`]).
/// A fixed-rate row's figures: the rate (and the receivers, if given), then the usual
/// delivery figures.
pub fn rate_metrics(rate: f64, receivers: Option<usize>, o: &Outcome) -> Metrics {
    let mut metrics = vec![("lines_per_s", rate)];
    metrics.extend(receivers.map(|n| ("receivers", n as f64)));
    metrics.extend(delivery_metrics(o));
    metrics
}

/// The non-empty parts, joined with "; ".
pub fn join(parts: &[String]) -> String {
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    parts.join("; ")
}

pub fn side_metrics(side: &Side) -> Metrics {
    vec![
        ("expected_deliveries", side.expected as f64),
        ("delivered", side.tally.delivered as f64),
    ]
    .into_iter()
    .chain(faults(
        side.loss(),
        side.lost(),
        &side.tally,
        side.disconnected,
    ))
    .chain([
        ("p50_ms", side.latency_ms(0.5)),
        ("p99_ms", side.latency_ms(0.99)),
        ("max_ms", side.latency_ms(1.0)),
    ])
    .collect()
}

/// The fault figures every report shares: loss, and what a correct server never does.
fn faults(loss: f64, lost: u64, tally: &Tally, disconnected: usize) -> [(&'static str, f64); 6] {
    [
        ("loss_pct", loss * 100.0),
        ("lost", lost as f64),
        ("duplicates", tally.duplicates as f64),
        ("reordered", tally.reordered as f64),
        ("malformed", tally.malformed as f64),
        ("disconnects", disconnected as f64),
    ]
}

/// One line per measured run, printed as it finishes.
pub fn print_trial(o: &Outcome) {
    println!(
        "   {:>9.0} lines/s: {:>11.0} → {:>11.0} deliveries/s, loss {:.4}%, dup/reord/malformed {}/{}/{}, \
         p50/p99/max {:.2}/{:.2}/{:.1} ms, server CPU {:.0}% ({:.0} ns/delivery), generator CPU {:.0}%{}{}",
        o.load.rate,
        o.offered_deliveries_per_sec(),
        o.achieved_deliveries_per_sec(),
        o.loss() * 100.0,
        o.tally.duplicates,
        o.tally.reordered,
        o.tally.malformed,
        o.latency_ms(0.5),
        o.latency_ms(0.99),
        o.latency_ms(1.0),
        o.server_cpu_pct(),
        o.server_ns_per_delivery(),
        o.loadgen_cpu_pct(),
        warnings(o),
        generator_flags(o),
    );
}

/// Things a reader of the trial line should know ("" when none).
fn warnings(o: &Outcome) -> String {
    let mut text = String::new();
    if o.disconnected > 0 {
        let _ = write!(text, ", {} clients disconnected", o.disconnected);
    }
    if o.backlogged {
        let _ = write!(
            text,
            ", the server stopped reading a sender (backlog over {} MiB)",
            crate::load::MAX_BACKLOG >> 20
        );
    }
    if o.tally.reads_without_kernel_time > 0 {
        let _ = write!(
            text,
            ", {} reads had no kernel timestamp (timed at read instead)",
            o.tally.reads_without_kernel_time
        );
    }
    text
}

/// Why the generator (or the machine) may be the limit of a run ("" when it is not).
fn generator_flags(o: &Outcome) -> String {
    match limit_note(o) {
        Some(note) => format!(" [{note}]"),
        None => String::new(),
    }
}

/// What besides the server limited a run, if anything: the generator (saturated or behind
/// its schedule) or other processes on the machine taking the CPUs.
pub fn limit_note(o: &Outcome) -> Option<String> {
    let mut generator = Vec::new();
    if o.loadgen_cpu_pct() >= crate::load::GENERATOR_SATURATED_PCT {
        generator.push("CPU saturated");
    }
    if o.behind {
        generator.push("behind schedule");
    }
    let busy = o.contended().then(|| {
        format!(
            "MACHINE BUSY: generator waited {:.0} ms, server {:.0} ms for a CPU",
            o.loadgen_wait.as_secs_f64() * 1000.0,
            o.server_wait.as_secs_f64() * 1000.0
        )
    });
    let generator =
        (!generator.is_empty()).then(|| format!("GENERATOR-LIMITED: {}", generator.join(", ")));
    match (generator, busy) {
        (Some(g), Some(b)) => Some(format!("{g}; {b}")),
        (g, b) => g.or(b),
    }
}

pub fn format_metrics(metrics: &[(&str, f64)]) -> String {
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

/// The results table: every row but the same-rate ones, which [`print_same_rate`] shows.
pub fn print_table(rows: &[Row]) {
    println!("\n| scenario | server | figures |\n|---|---|---|");
    for row in rows.iter().filter(|r| r.scenario != SAME_RATE) {
        let mut figures = match &row.result {
            Ok(metrics) => format_metrics(metrics),
            Err(why) => format!("failed: {why}"),
        };
        if !row.note.is_empty() {
            let _ = write!(figures, " ({})", row.note);
        }
        println!("| {} | {} | {figures} |", row.scenario, row.server);
    }
}

/// Fanout at the same offered rates on every server: the fair comparison once a server, or
/// the generator, is at its ceiling.
pub fn print_same_rate(rows: &[Row]) {
    let mut same: Vec<&Row> = rows.iter().filter(|r| r.scenario == SAME_RATE).collect();
    if same.is_empty() {
        return;
    }
    same.sort_by(|a, b| {
        let rate = |r: &Row| r.metric("lines_per_s").unwrap_or(0.0);
        rate(a).total_cmp(&rate(b))
    });
    println!(
        "\nfanout 1 → 100, same offered rate (achieved = deliveries / (send start → last arrival); \
         CPU % over the send phase; ns/delivery = server CPU incl. drain / deliveries)\n"
    );
    println!(
        "| lines/s | server | offered deliv/s | achieved deliv/s | loss % | p50 ms | p99 ms | max ms \
         | server CPU % | server ns/delivery | generator CPU % | limit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in same {
        let m = |name| row.metric(name).map_or("-".into(), format_value);
        match &row.result {
            Ok(_) => println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m("lines_per_s"),
                row.server,
                m("offered_deliveries_per_s"),
                m("achieved_deliveries_per_s"),
                m("loss_pct"),
                m("p50_ms"),
                m("p99_ms"),
                m("max_ms"),
                m("server_cpu_pct"),
                m("server_ns_per_delivery"),
                m("loadgen_cpu_pct"),
                if row.note.is_empty() { "-" } else { &row.note },
            ),
            Err(why) => println!(
                "| {} | {} | failed: {why} |||||||||| |",
                m("lines_per_s"),
                row.server
            ),
        }
    }
}

/// Writes the rows as JSON under the cargo target directory.
pub fn write_json(rows: &[Row], mode: &str) {
    let mut json = format!("{{\"mode\":\"{mode}\",\"rows\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            "{{\"scenario\":\"{}\",\"server\":\"{}\",\"note\":\"{}\",",
            row.scenario,
            row.server,
            escape(&row.note)
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
                let _ = write!(json, "\"error\":\"{}\"}}", escape(why));
            }
        }
    }
    json.push_str("]}\n");
    // The server binary sits in <target>/release/: write beside that, wherever target is.
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_broadcast-server"));
    let dir = binary
        .parent()
        .and_then(|release| release.parent())
        .unwrap_or(std::path::Path::new("target"));
    let path = dir.join("fanout-bench.json");
    match std::fs::write(&path, json) {
        Ok(()) => println!("\nwrote {}", path.display()),
        Err(e) => println!("\ncould not write {}: {e}", path.display()),
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "'")
}
