//! 10,000 idle receivers beside 1 sender and 10 receivers at 1,000 lines/s: memory per idle connection, and whether idle clients cost the busy ones.

use super::*;

/// 10,000 idle receivers beside 1 sender and 10 receivers at 1,000 lines/s: memory per
/// connection, and latency when every line goes to 10,010 clients.
pub(super) fn idle(kind: Kind, options: &Options) -> Result<(Metrics, String), String> {
    let idle_clients = if options.quick { 1_000 } else { 10_000 };
    let clients = [(Role::Sender, 1), (Role::Reader, 10)];
    let (target, mut swarm) = setup(kind, options, &["--max-clients", "20000"], 64, &clients)?;
    let rss_before = target.rss_bytes();
    swarm.connect(target.addr, Role::Reader, idle_clients)?;
    swarm.warm_up()?;
    let rss_after = target.rss_bytes();
    let load = Load {
        rate: 1_000.0,
        duration: secs(options, 5.0, 1.0),
        drain: Duration::from_secs(2),
    };
    let outcome = measure(&mut swarm, &target, load)?;
    let mut metrics = vec![
        ("clients", swarm.len() as f64),
        ("rss_before_kib", rss_before as f64 / 1024.0),
        ("rss_after_connect_kib", rss_after as f64 / 1024.0),
        (
            "bytes_per_idle_connection",
            rss_after.saturating_sub(rss_before) as f64 / idle_clients as f64,
        ),
        ("rss_after_traffic_kib", outcome.rss_end as f64 / 1024.0),
    ];
    metrics.extend(delivery_metrics(&outcome));
    Ok((metrics, limit_note(&outcome)))
}
