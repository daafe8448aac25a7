//! 1,000 clients, every one sending 1 line/s and receiving everyone else's.

use super::*;

/// 1,000 clients, each sending 1 line/s (1,000 lines/s in all, one every millisecond from
/// the next client in turn) and receiving every other client's: ~1 M deliveries/s, with many
/// senders in every server turn. It measures the per-recipient write path.
pub(super) fn all_talk(kind: Kind, options: &Options) -> Result<(Metrics, String), String> {
    let clients = [(Role::Sender, 1_000)];
    let (target, mut swarm) = setup(kind, options, &[], 64, &clients)?;
    let load = Load {
        rate: 1_000.0,
        duration: secs(options, 10.0, 2.0),
        drain: Duration::from_secs(3),
    };
    let outcome = measure(&mut swarm, &target, load)?;
    Ok((delivery_metrics(&outcome), limit_note(&outcome)))
}
