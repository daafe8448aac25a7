//! 1 sender → 100 receivers, 64-byte lines: the highest sustained rate, and the same-rate table.

use super::*;

/// 1 sender → 100 receivers, 64-byte lines. `--rates`: those rates only. `--quick`: one short
/// run at 5,000 lines/s. Otherwise the rate search, then the default same-rate rates.
pub(super) fn fanout(kind: Kind, options: &Options) -> Vec<Row> {
    let mut rows = Vec::new();
    if options.rates.is_empty() && options.quick {
        let (result, note) = match fanout_trial(kind, 5_000.0, options) {
            Ok(o) => (Ok(delivery_metrics(&o)), limit_note(&o)),
            Err(why) => (Err(why), String::new()),
        };
        rows.push(Row {
            scenario: "fanout".into(),
            server: kind.name(),
            note,
            result,
        });
        return rows;
    }
    if options.rates.is_empty() {
        rows.push(rate_search("fanout", kind, options, |rate| {
            let outcome = fanout_trial(kind, rate, options)?;
            Ok(Trial {
                outcome,
                detail: String::new(),
            })
        }));
    }
    let rates = if options.rates.is_empty() {
        DEFAULT_RATES.to_vec()
    } else {
        options.rates.clone()
    };
    for rate in rates {
        rows.push(same_rate_row(kind, f64::from(rate), options));
    }
    rows
}

pub(super) fn same_rate_row(kind: Kind, rate: f64, options: &Options) -> Row {
    let mut note = String::new();
    let result = fanout_trial(kind, rate, options).map(|o| {
        // The verdict, then anything that limited the run besides the server (flagged even
        // when the run passed: a saturated generator may have capped what it shows).
        let verdict = match judge(&o, options.p99_bar_ms) {
            Verdict::Sustained | Verdict::GeneratorLimit(_) => String::new(),
            Verdict::LatencyOnly => format!("p99 over {} ms", options.p99_bar_ms),
            Verdict::ServerLimit(why) => format!("server: {why}"),
        };
        let parts = [verdict, limit_note(&o)];
        note = parts
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let mut metrics = vec![("lines_per_s", rate)];
        metrics.extend(delivery_metrics(&o));
        metrics
    });
    Row {
        scenario: SAME_RATE.into(),
        server: kind.name(),
        result,
        note,
    }
}
