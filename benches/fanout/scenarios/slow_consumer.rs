//! 1 sender at 2,000 lines/s of 1 KiB, 10 receivers, 1 client that never reads: it is cut, nobody else notices, memory stays bounded.

use super::*;

/// 1 sender at 2,000 lines/s of 1 KiB, 10 receivers, 1 client that never reads.
pub(super) fn slow_consumer(kind: Kind, options: &Options) -> Result<(Metrics, String), String> {
    let clients = [(Role::Sender, 1), (Role::Reader, 10), (Role::Stuck, 1)];
    let (target, mut swarm) = setup(kind, options, &[], 1024, &clients)?;
    let load = Load {
        rate: 2_000.0,
        duration: secs(options, 20.0, 2.0),
        drain: Duration::from_secs(1),
    };
    // Not rerun when the machine was busy: the stuck client may be gone by then.
    let outcome = swarm.run(&target, load);
    print_trial(&outcome);
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
    Ok((metrics, limit_note(&outcome)))
}
