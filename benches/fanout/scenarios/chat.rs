//! 1,000 clients, 10 of them sending 100 lines/s in all, 128-byte lines.

use super::*;

/// 1,000 clients, 10 of them sending 100 lines/s in total, 128-byte lines.
pub(super) fn chat(kind: Kind, options: &Options) -> Result<(Metrics, String), String> {
    let clients = [(Role::Sender, 10), (Role::Reader, 990)];
    let (target, mut swarm) = setup(kind, options, &[], 128, &clients)?;
    let load = Load {
        rate: 100.0,
        duration: secs(options, 10.0, 1.0),
        drain: Duration::from_secs(2),
    };
    let outcome = measure(&mut swarm, &target, load)?;
    Ok((delivery_metrics(&outcome), limit_note(&outcome)))
}
