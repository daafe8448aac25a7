//! The rooms scenario (`--rooms`): the deliveries per second of one room of 1,000
//! receivers, spread over 100 rooms × 10 receivers and over 1,000 rooms × 1 receiver, each
//! room with a sender of its own. Every shape offers the same deliveries per second, so
//! server CPU per delivery compares them directly. broadcast-server only (ncat --broker
//! has no rooms).
//!
//! What one room gains is physics: a line read once goes to 1,000 sockets, and each
//! hand-out gives every reader the lines of a whole turn in one `writev`. A room of one
//! reader pays a read per line and a write per line; anything above that is the server's.

use super::*;

/// The shapes of the full run: (rooms, receivers per room).
const SHAPES: [(usize, usize); 3] = [(1, 1000), (100, 10), (1000, 1)];
/// The shapes of the quick run: the same spreads, a tenth of the clients.
const QUICK_SHAPES: [(usize, usize); 3] = [(1, 100), (10, 10), (100, 1)];
/// Deliveries per second offered in every shape: 50 and 100 lines/s to each of 1,000
/// readers (at the second, 1,000 rooms × 1 saturates server and generator alike).
const DELIVERIES_PER_S: [f64; 2] = [50_000.0, 100_000.0];
const QUICK_DELIVERIES_PER_S: [f64; 1] = [10_000.0];

/// One row per shape and rate.
pub(super) fn rooms(kind: Kind, options: &Options) -> Vec<Row> {
    let (shapes, rates) = match options.quick {
        true => (QUICK_SHAPES, &QUICK_DELIVERIES_PER_S[..]),
        false => (SHAPES, &DELIVERIES_PER_S[..]),
    };
    let mut rows = Vec::new();
    for &deliveries in rates {
        for (rooms, receivers) in shapes {
            println!(
                "   {rooms} room(s) × (1 sender + {receivers} receivers), {deliveries} \
                 deliveries/s"
            );
            let (result, note) = match shape(kind, options, rooms, receivers, deliveries) {
                Ok((metrics, note)) => (Ok(metrics), note),
                Err(why) => (Err(why), String::new()),
            };
            rows.push(Row {
                scenario: format!("rooms {rooms}×{receivers}"),
                server: kind.name(),
                result,
                note,
            });
        }
    }
    rows
}

/// One run on a fresh server with `--rooms`: `rooms` rooms, each 1 sender and `receivers`
/// readers (every client joined with `/join`), offering `deliveries` per second in all.
fn shape(
    kind: Kind,
    options: &Options,
    rooms: usize,
    receivers: usize,
    deliveries: f64,
) -> Result<(Metrics, String), String> {
    let clients = rooms * (receivers + 1);
    let max_clients = (clients + 100).to_string();
    // Each client starts in main before its /join: room for main beside them all.
    let max_rooms = (rooms + 1).to_string();
    let mut flags = vec![
        "--rooms",
        "--max-rooms",
        &max_rooms,
        "--max-clients",
        &max_clients,
    ];
    flags.extend(options.server_args.split_whitespace());
    let target = Target::start(kind, &flags)?;
    let mut swarm = Swarm::new(64, options.quickack)?;
    for room in 0..rooms {
        let name = format!("r{room}");
        swarm.connect_to_room(target.addr, Role::Sender, 1, &name)?;
        swarm.connect_to_room(target.addr, Role::Reader, receivers, &name)?;
    }
    swarm.warm_up()?;
    let rss_connected = target.rss_bytes();
    // Every sender at the same rate: deliveries / receivers lines/s in all.
    let rate = deliveries / receivers as f64;
    let load = Load {
        rate,
        duration: secs(options, 5.0, 1.0),
        drain: Duration::from_secs(2),
    };
    let outcome = measure(&mut swarm, &target, load)?;
    let mut metrics = vec![
        ("rooms", rooms as f64),
        ("receivers_per_room", receivers as f64),
        ("lines_per_s", rate),
        ("rss_connected_kib", rss_connected as f64 / 1024.0),
        ("rss_max_kib", outcome.rss_max as f64 / 1024.0),
    ];
    metrics.extend(delivery_metrics(&outcome));
    Ok((metrics, limit_note(&outcome)))
}
