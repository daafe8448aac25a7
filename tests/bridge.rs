//! Instances joined through NATS, through the binary, against a real nats-server (Debian's
//! `nats-server`; each test skips with one SKIPPED line when it is missing).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use broadcast_server::bridge::envelope::{MessageKey, seal};
use common::{Client, DEADLINE, Server, numbered_lines, report_skip};

/// A nats-server on a loopback port of its choosing; killed when dropped.
struct Nats {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    /// Starts nats-server on a free port, or says why the test must skip.
    fn start(test: &str) -> Option<Nats> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            report_skip(test, "needs nats-server (apt-get install nats-server)");
            return None;
        }
        Some(Nats::start_with(None, &[]))
    }

    /// Starts nats-server on `port` (`None`: any free port, learned from its ports file).
    fn start_on(port: Option<u16>) -> Nats {
        Nats::start_with(port, &[])
    }

    /// Starts nats-server on `port` with these lines of configuration.
    fn start_with(port: Option<u16>, config: &[&str]) -> Nats {
        let dir = std::env::temp_dir().join(format!(
            "broadcast-server-nats-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).expect("create the ports file directory");
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let config_file = dir.join("nats.conf");
        std::fs::write(&config_file, config.join("\n")).expect("write the nats config");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
            .arg(&dir)
            .arg("-c")
            .arg(&config_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let ports_file = dir.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + DEADLINE;
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Some(port) = text
                    .split("nats://127.0.0.1:")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|p| p.parse().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            thread::sleep(Duration::from_millis(10)); // polling a file, with a deadline
        };
        Nats { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Sends it a signal (SIGSTOP/SIGCONT freeze and thaw it, as a stalled server).
    fn signal(&self, signal: libc::c_int) {
        common::send_signal(self.child.id(), signal);
    }

    /// Stops it (SIGKILL: as a crash would) and waits until it is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broadcast-server joined to `nats`, once it has said it is bridging.
fn instance(url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--nats", url];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    server.wait_for_log("nats: connected");
    server
}

/// Reads `client` until what it received ends with `marker`; returns all of it.
fn read_through(client: &mut Client, marker: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(marker) {
        got.extend_from_slice(&client.read_exact(1));
    }
    got
}

/// Instances subscribe as they start, in the background: a line published before another
/// instance's subscription is active does not reach it. Sends probes from `from` until
/// `to` gets one, then a `ready` marker, and reads every client of `everyone` (all but
/// `from`) through it, so that no probe is left in flight.
fn wait_until_bridged(from: &mut Client, to: &mut Client, everyone: &mut [&mut Client]) {
    probe_until_received(
        |line| from.send(line),
        to,
        everyone,
        "the instances never bridged",
    );
}

/// Sends `probe` lines with `send` until `to` gets one (a bounded wait each), then a `ready`
/// marker, and reads `to` and every client of `everyone` through it.
fn probe_until_received(
    mut send: impl FnMut(&[u8]),
    to: &mut Client,
    everyone: &mut [&mut Client],
    never: &str,
) {
    let deadline = Instant::now() + DEADLINE;
    to.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0; 64];
    loop {
        assert!(Instant::now() < deadline, "{never}");
        send(b"probe\n");
        // A bounded wait for the probe to cross; then another probe.
        if std::io::Read::read(&mut to.stream, &mut buf).is_ok_and(|n| n > 0) {
            break;
        }
    }
    to.stream.set_read_timeout(None).unwrap();
    send(b"ready\n");
    read_through(to, b"ready\n");
    for client in everyone.iter_mut() {
        read_through(client, b"ready\n");
    }
}

#[test]
fn two_instances_are_one_broadcast_exactly_once_and_never_back_to_the_sender() {
    let Some(nats) = Nats::start("two_instances_are_one_broadcast") else {
        return;
    };
    let a = instance(&nats.url(), &[]);
    let b = instance(&nats.url(), &[]);
    let mut a1 = a.connect();
    let mut a2 = a.connect();
    let mut b1 = b.connect();
    let mut b2 = b.connect();
    wait_until_bridged(&mut a1, &mut b1, &mut [&mut a2, &mut b2]);
    wait_until_bridged(&mut b1, &mut a1, &mut [&mut a2, &mut b2]);

    a1.send(b"from a\n");
    a2.expect(b"from a\n");
    b1.expect(b"from a\n");
    b2.expect(b"from a\n");
    b2.send(b"from b\n");
    b1.expect(b"from b\n");
    a1.expect(b"from b\n");
    a2.expect(b"from b\n");
    // Nothing more anywhere: not twice, not back to the sender. A last marker proves it.
    a2.send(b"end\n");
    a1.expect(b"end\n");
    b1.expect(b"end\n");
    b2.expect(b"end\n");
}

#[test]
fn rooms_span_instances_room_by_room_and_an_instance_without_rooms_shares_main() {
    let Some(nats) = Nats::start("rooms_span_instances") else {
        return;
    };
    let a = instance(&nats.url(), &["--rooms"]);
    let b = instance(&nats.url(), &["--rooms"]);
    let plain = instance(&nats.url(), &[]);
    let (mut a_x, mut a_main) = (a.connect(), a.connect());
    let (mut b_x, mut b_y, mut b_main) = (b.connect(), b.connect(), b.connect());
    let mut p = plain.connect();
    for (client, room) in [(&mut a_x, "x"), (&mut b_x, "x"), (&mut b_y, "y")] {
        client.send(format!("/join {room}\n").as_bytes());
        client.expect(format!("OK joined {room}\n").as_bytes());
    }
    wait_until_bridged(&mut a_x, &mut b_x, &mut []);
    wait_until_bridged(&mut b_x, &mut a_x, &mut []);
    wait_until_bridged(&mut a_main, &mut b_main, &mut []);
    wait_until_bridged(&mut a_main, &mut p, &mut [&mut b_main]);
    wait_until_bridged(&mut p, &mut a_main, &mut [&mut b_main]);
    // p may have had some of the first wait's probes, and its `ready`, as well as the
    // second's: a last line from a_main, after all of them, reads p and b_main clean.
    a_main.send(b"main sync\n");
    read_through(&mut p, b"main sync\n");
    read_through(&mut b_main, b"main sync\n");

    a_x.send(b"x from a\n");
    b_x.expect(b"x from a\n");
    b_y.send(b"y from b\n"); // no room y on a, none on plain: it reaches no one
    p.send(b"main from plain\n");
    a_main.expect(b"main from plain\n");
    b_main.expect(b"main from plain\n");
    a_main.send(b"main from a\n");
    b_main.expect(b"main from a\n");
    p.expect(b"main from a\n");
    // Markers last in each room: had a line crossed rooms, it would come before them.
    b_x.send(b"x end\n");
    a_x.expect(b"x end\n");
    b_main.send(b"main end\n");
    a_main.expect(b"main end\n");
    p.expect(b"main end\n");
    b_y.send(b"/rooms\n");
    b_y.expect(b"OK rooms main:1 x:1 y:1\n");
}

#[test]
fn ten_thousand_lines_cross_in_order_and_a_60000_byte_line_of_every_byte_crosses_intact() {
    let Some(nats) = Nats::start("ten_thousand_lines_cross_in_order") else {
        return;
    };
    let a = instance(&nats.url(), &[]);
    let b = instance(&nats.url(), &[]);
    let mut sender = a.connect();
    let mut far = b.connect();
    wait_until_bridged(&mut sender, &mut far, &mut []);
    let lines = numbered_lines("across", 10_000);
    sender.send(&lines);
    far.expect(&lines);
    let mut long: Vec<u8> = (0..60_000)
        .map(|i| (i % 256) as u8)
        .filter(|&b| b != b'\n')
        .collect();
    long.push(b'\n');
    sender.send(&long);
    far.expect(&long);
}

#[test]
fn three_instances_with_a_sender_each_get_every_line_once_and_the_bus_goes_quiet() {
    let Some(nats) = Nats::start("three_instances_with_a_sender_each") else {
        return;
    };
    let servers: Vec<Server> = (0..3).map(|_| instance(&nats.url(), &[])).collect();
    let mut clients: Vec<Client> = servers.iter().map(Server::connect).collect();
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let (from, to) = pair_mut(&mut clients, i, j);
                wait_until_bridged(from, to, &mut []);
                // The third client got the probes and the marker too.
                let k = 3 - i - j;
                read_through(&mut clients[k], b"ready\n");
            }
        }
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&numbered_lines(&format!("from{i}"), 1_000));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        // Everyone else's 2,000 lines, each sender's in order, none twice, none of its own.
        let got = client.read_exact(2 * numbered_lines("from0", 1_000).len());
        for j in (0..3).filter(|&j| j != i) {
            let theirs: Vec<&[u8]> = got
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| l.starts_with(format!("from{j}-").as_bytes()))
                .collect();
            assert_eq!(theirs.concat(), numbered_lines(&format!("from{j}"), 1_000));
        }
    }
    // Quiet: a last line per instance is the next thing every other client reads.
    for i in 0..3 {
        clients[i].send(format!("last{i}\n").as_bytes());
        for j in (0..3).filter(|&j| j != i) {
            clients[j].expect(format!("last{i}\n").as_bytes());
        }
    }
    // Every line published reached both other instances once: no loss, no duplicate.
    let (mut published, mut received) = (0, 0);
    for server in &servers {
        server.signal(libc::SIGTERM);
        let stats = server.wait_for_log("nats: published=");
        published += common::number_after(&stats, "published=");
        received += common::number_after(&stats, "received=");
    }
    assert_eq!(
        received,
        2 * published,
        "published {published}, received {received}"
    );
}

/// Two distinct elements of `v`, mutably.
fn pair_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (left, right) = v.split_at_mut(j);
        (&mut left[i], &mut right[0])
    } else {
        let (left, right) = v.split_at_mut(i);
        (&mut right[0], &mut left[j])
    }
}

#[test]
fn nats_down_at_start_then_up_bridges_by_itself_and_local_delivery_never_waits() {
    let Some(probe) = Nats::start("nats_down_at_start_then_up") else {
        return;
    };
    let port = probe.port;
    drop(probe); // a port where nothing listens yet
    let url = format!("nats://127.0.0.1:{port}");
    let a = Server::start(&["--nats", &url]);
    let b = Server::start(&["--nats", &url]);
    a.wait_for_log("nats: cannot reach");
    let mut a1 = a.connect();
    let mut a2 = a.connect();
    let mut b1 = b.connect();
    a1.send(b"local while nats is down\n");
    a2.expect(b"local while nats is down\n");
    let _nats = Nats::start_on(Some(port));
    a.wait_for_log("nats: connected");
    b.wait_for_log("nats: connected");
    wait_until_bridged(&mut a1, &mut b1, &mut [&mut a2]);
    a1.send(b"bridged\n");
    b1.expect(b"bridged\n");
    a2.expect(b"bridged\n");
}

/// Reads `client` on a thread until its stream ends with `end`, counting `probe` lines as
/// they come (so the test can tell bridging works without taking the reader's bytes).
fn record_until(
    mut client: Client,
    end: &'static [u8],
) -> (Arc<AtomicUsize>, thread::JoinHandle<Vec<u8>>) {
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&probes);
    let recording = thread::spawn(move || {
        let mut got = Vec::new();
        let mut counted_to = 0;
        while !got.ends_with(end) {
            let n = got.len();
            got.extend_from_slice(&client.read_exact(1));
            if got[n] == b'\n' {
                if got[counted_to..].starts_with(b"probe\n") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                counted_to = got.len();
            }
        }
        got
    });
    (probes, recording)
}

/// Sends probes from `from` until the recorder has seen one more than `before`; returns
/// them, as the sender's local peers receive them.
fn probe_until_seen(from: &mut Client, probes: &AtomicUsize, before: usize) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut sent = Vec::new();
    while probes.load(Ordering::SeqCst) <= before {
        assert!(Instant::now() < deadline, "bridging did not resume");
        from.send(b"probe\n");
        sent.extend_from_slice(b"probe\n");
        thread::sleep(Duration::from_millis(20)); // the probe's pace, not a wait
    }
    sent
}

#[test]
fn nats_killed_mid_stream_local_delivery_goes_on_far_side_has_no_dups_and_bridging_resumes() {
    let Some(mut nats) = Nats::start("nats_killed_mid_stream") else {
        return;
    };
    let port = nats.port;
    let mut a = instance(&nats.url(), &["--stats-interval", "0.2"]);
    let b = instance(&nats.url(), &[]);
    let mut sender = a.connect();
    let mut near = a.connect();
    let mut far = b.connect();
    wait_until_bridged(&mut sender, &mut far, &mut [&mut near]);
    let (probes, recording) = record_until(far, b"end\n");
    let before = numbered_lines("before", 2_000);
    sender.send(&before);
    near.expect(&before);
    // A probe seen after them means the far side has them all (one sender keeps its order).
    let sent = probe_until_seen(&mut sender, &probes, probes.load(Ordering::SeqCst));
    near.expect(&sent);
    nats.kill();
    a.wait_for_log("nats: disconnected");
    let during = numbered_lines("during", 2_000);
    sender.send(&during);
    near.expect(&during); // local delivery does not notice
    // Dropped (and counted) while NATS is down, not held to be judged at the reconnect.
    common::wait_until("the outage lines are counted offline", || {
        a.log_lines(" offline=")
            .last()
            .is_some_and(|stats| common::number_after(stats, " offline=") >= 2_000)
    });
    let _nats = Nats::start_on(Some(port));
    a.wait_for_logs("nats: connected", 2);
    b.wait_for_logs("nats: connected", 2);
    let seen = probes.load(Ordering::SeqCst);
    let sent = probe_until_seen(&mut sender, &probes, seen);
    near.expect(&sent);
    let after = numbered_lines("after", 2_000);
    sender.send(&after);
    near.expect(&after);
    sender.send(b"end\n");
    let got = recording.join().expect("the far reader");
    // The far side: each kind of line in order, none twice; the ones from the outage may
    // be missing (at most once); all of those sent once bridging was back arrived.
    let lines: Vec<&[u8]> = got.split_inclusive(|&b| b == b'\n').collect();
    for prefix in ["before-", "during-", "after-"] {
        let numbers: Vec<usize> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_bytes()))
            .map(|n| std::str::from_utf8(n).unwrap().trim_end().parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{prefix} lines repeated or out of order"
        );
        if prefix == "during-" {
            // Framed while A knew NATS was down: dropped for NATS, never held for later.
            assert!(
                numbers.is_empty(),
                "outage lines were replayed: {numbers:?}"
            );
        } else {
            assert_eq!(
                numbers,
                (0..2_000).collect::<Vec<_>>(),
                "{prefix} lines missing"
            );
        }
    }
    let stats = a.stop_for_stats();
    assert!(
        common::number_after(&stats, " offline=") >= 2_000,
        "{stats}"
    );
}

#[test]
fn a_stalled_nats_never_delivers_lines_late_out_of_order_or_twice() {
    let Some(nats) = Nats::start("a_stalled_nats") else {
        return;
    };
    // Order across a stall is promised with a key (numbers that can be trusted).
    let key = KeyFile::new("stalled");
    let mut a = instance(&nats.url(), &["--nats-key", key.arg()]);
    let mut b = instance(&nats.url(), &["--nats-key", key.arg()]);
    let mut sender = a.connect();
    let mut near = a.connect();
    let far = b.connect();
    let (probes, recording) = record_until(far, b"end\n");
    probe_until_seen(&mut sender, &probes, 0);
    // Frozen, not gone: the connection stays open and nothing is acknowledged, until the
    // clients' pings go unanswered. Lines keep coming meanwhile, and after the thaw.
    nats.signal(libc::SIGSTOP);
    // Lines keep coming until the instance has noticed the stall (its pings went
    // unanswered), and a little longer.
    let deadline = Instant::now() + DEADLINE;
    let mut stalled = 0;
    let mut noticed_at = None;
    while noticed_at.is_none_or(|at| stalled < at + 25) {
        assert!(Instant::now() < deadline, "the stall was never noticed");
        sender.send(format!("stall-{stalled}\n").as_bytes());
        stalled += 1;
        if noticed_at.is_none() && !a.log_lines("nats: disconnected").is_empty() {
            noticed_at = Some(stalled);
        }
        thread::sleep(Duration::from_millis(20)); // the sender's pace, not a wait
    }
    // Locally nothing waited for NATS: every line of the stall reached the near client while
    // nats-server is still frozen.
    let last = format!("stall-{}\n", stalled - 1);
    let near_got = read_through(&mut near, last.as_bytes());
    let local: Vec<&[u8]> = near_got
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"stall-"))
        .collect();
    assert_eq!(
        local.concat(),
        (0..stalled)
            .map(|i| format!("stall-{i}\n"))
            .collect::<String>()
            .into_bytes()
    );
    nats.signal(libc::SIGCONT);
    a.wait_for_logs("nats: connected", 2);
    let seen = probes.load(Ordering::SeqCst);
    probe_until_seen(&mut sender, &probes, seen);
    let after = numbered_lines("after", 1_000);
    sender.send(&after);
    sender.send(b"end\n");
    let got = recording.join().expect("the far reader");
    let lines: Vec<&[u8]> = got.split_inclusive(|&b| b == b'\n').collect();
    let mut sequence = Vec::new();
    for line in &lines {
        for (prefix, base) in [("stall-", 0), ("after-", 1_000_000)] {
            if let Some(n) = line.strip_prefix(prefix.as_bytes()) {
                let n: usize = std::str::from_utf8(n).unwrap().trim_end().parse().unwrap();
                sequence.push(base + n);
            }
        }
    }
    assert!(
        sequence.windows(2).all(|w| w[0] < w[1]),
        "lines arrived late, out of order or twice"
    );
    let after_count = sequence.iter().filter(|&&n| n >= 1_000_000).count();
    assert_eq!(after_count, 1_000, "lines sent after the thaw went missing");
    // Every line A framed is counted once: published (taken by a socket), or dropped for a
    // reason; B received no more than A published.
    let (a_stats, b_stats) = (&a.stop_for_stats(), &b.stop_for_stats());
    let accounted: u64 = [" published=", " backlog=", " offline=", " too_large="]
        .iter()
        .map(|name| common::number_after(a_stats, name))
        .sum();
    assert_eq!(
        accounted,
        common::number_after(a_stats, " lines_in="),
        "{a_stats}"
    );
    assert!(common::number_after(a_stats, " offline=") > 0, "{a_stats}");
    assert!(
        common::number_after(b_stats, " received=") <= common::number_after(a_stats, " published="),
        "{a_stats}\n{b_stats}"
    );
}

/// A shared key file for `--nats-key`, removed when dropped.
struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    fn new(name: &str) -> KeyFile {
        let path = std::env::temp_dir().join(format!(
            "broadcast-server-key-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        KeyFile { path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The secret in every test's key file.
const SECRET: &str = "a shared secret of more than sixteen bytes";

#[test]
fn a_slow_consumer_on_one_instance_is_cut_there_and_no_one_else_notices() {
    let Some(nats) = Nats::start("a_slow_consumer_on_one_instance") else {
        return;
    };
    let a = instance(&nats.url(), &[]);
    let b = instance(&nats.url(), &["--max-queue", "1MiB"]);
    let mut sender = a.connect();
    let mut near = a.connect();
    let mut far = b.connect();
    let stuck = b.connect();
    stuck.set_receive_buffer(4096);
    wait_until_bridged(&mut sender, &mut far, &mut [&mut near]);
    // 16 MB, far beyond the stuck client's 1 MiB queue and the kernel's buffers, sent a
    // piece at a time as the others take it (NATS delivery is at most once: a burst larger
    // than the bridge's queues could drop lines, which is not what this test is about).
    common::stream_sixteen_megabytes(
        |piece| sender.send(piece),
        |piece| {
            near.expect(piece);
            far.expect(piece);
        },
    );
    let log = b.wait_for_disconnect(stuck.local_addr());
    assert!(log.contains("slow consumer"), "{log}");
    assert!(a.log_lines("slow consumer").is_empty());
}

#[test]
fn a_line_over_nats_max_payload_is_delivered_locally_only_logged_and_counted() {
    if Nats::start("a_line_over_nats_max_payload").is_none() {
        return;
    }
    let nats = Nats::start_with(None, &["max_payload: 4096"]);
    let a = instance(&nats.url(), &[]);
    let b = instance(&nats.url(), &[]);
    let mut sender = a.connect();
    let mut near = a.connect();
    let mut far = b.connect();
    wait_until_bridged(&mut sender, &mut far, &mut [&mut near]);
    let mut big = vec![b'B'; 10_000];
    big.push(b'\n');
    sender.send(&big);
    near.expect(&big);
    sender.send(b"small\n");
    near.expect(b"small\n");
    far.expect(b"small\n"); // the big line never crossed
    a.wait_for_log("over NATS's max payload");
    a.signal(libc::SIGTERM);
    let stats = a.wait_for_log("nats: published=");
    assert!(stats.contains(" too_large=1 "), "{stats}");
}

/// A bare NATS client speaking NATS's text protocol, to play a publisher that is not one of
/// our instances: a foreign or misbehaving one, or one flooding the subject.
struct RawNats {
    stream: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl RawNats {
    fn connect(nats: &Nats) -> RawNats {
        let stream = std::net::TcpStream::connect(("127.0.0.1", nats.port)).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut raw = RawNats { stream, reader };
        assert!(
            raw.read_line().starts_with("INFO "),
            "no INFO from nats-server"
        );
        raw.write(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n");
        raw.round_trip();
        raw
    }

    fn write(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.stream, bytes).expect("write to nats-server");
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.reader, &mut line).expect("read nats-server");
        line
    }

    /// Publishes `payload` on `subject`, with these headers (none: a plain PUB).
    fn publish(&mut self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
        let mut frame = Vec::new();
        if headers.is_empty() {
            frame.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        } else {
            let mut head = String::from("NATS/1.0\r\n");
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let total = head.len() + payload.len();
            frame.extend_from_slice(
                format!("HPUB {subject} {} {total}\r\n{head}", head.len()).as_bytes(),
            );
        }
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.write(&frame);
    }

    /// PING, then read until PONG: nats-server has processed everything sent before, and
    /// refused none of it (an `-ERR` fails the test).
    fn round_trip(&mut self) {
        self.write(b"PING\r\n");
        loop {
            let line = self.read_line();
            assert!(!line.starts_with("-ERR"), "nats-server refused: {line}");
            match line.trim_end() {
                "PONG" => return,
                "PING" => self.write(b"PONG\r\n"),
                _ => {}
            }
        }
    }
}

/// Publishes plain probes from `raw` until `to` gets one, then a `ready` marker, and reads
/// `to` through it: the instance's subscription is live and no probe is in flight.
fn wait_until_subscribed(raw: &mut RawNats, to: &mut Client) {
    let publish = |line: &[u8]| raw.publish(SUBJECT, &[], line);
    probe_until_received(publish, to, &mut [], "the instance never subscribed");
}

/// The subject instances use by default.
const SUBJECT: &str = "broadcast-server.lines";

/// An instance's envelope: `~bcast1 - ORIGIN SEQ\n` (no key), then the lines.
fn enveloped(origin: &str, sequence: u64, lines: &[u8]) -> Vec<u8> {
    [
        format!("~bcast1 - {origin} {sequence} 0\n").as_bytes(),
        lines,
    ]
    .concat()
}

/// The instance id `server` logs at start.
fn instance_id(server: &Server) -> String {
    server
        .wait_for_log("as instance ")
        .split("as instance ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next())
        .expect("the instance's id")
        .to_string()
}

#[test]
fn without_a_key_numbers_decide_nothing_and_messages_arrive_whole_within_max_line() {
    let Some(nats) = Nats::start("without_a_key_numbers_decide_nothing") else {
        return;
    };
    let b = instance(&nats.url(), &["--max-line", "100"]);
    assert!(!b.log_lines("messages are not signed").is_empty());
    let own = instance_id(&b);
    let mut reader = b.connect();
    let mut raw = RawNats::connect(&nats);
    wait_until_subscribed(&mut raw, &mut reader);
    let x = "00000000000000aa";
    // Unverifiable numbers drop nothing: each message is delivered as it comes.
    raw.publish(SUBJECT, &[], &enveloped(x, 5, b"x5\n"));
    raw.publish(SUBJECT, &[], &enveloped(x, 3, b"x3\n"));
    raw.publish(SUBJECT, &[], &enveloped(x, 5, b"x5 again\n"));
    raw.publish(SUBJECT, &[], &enveloped(x, u64::MAX, b"x max\n"));
    raw.publish(SUBJECT, &[], &enveloped(x, 6, b"x6\n"));
    // Our own origin (back from an earlier connection, or a stranger's) is dropped quietly,
    // a bad envelope counted as forged.
    raw.publish(SUBJECT, &[], &enveloped(&own, 99, b"our own, come back\n"));
    raw.publish(SUBJECT, &[], b"~bcast1 - not-an-id 1 0\nbad envelope\n");
    // No envelope: a plain publisher's lines.
    raw.publish(SUBJECT, &[], b"foreign\n");
    raw.publish(SUBJECT, &[], b"not a whole line");
    let mut long = vec![b'L'; 101];
    long.extend_from_slice(b"\nafter the long line\n");
    raw.publish(SUBJECT, &[], &long);
    raw.publish(SUBJECT, &[], b"end\n");
    raw.round_trip();
    let got = read_through(&mut reader, b"end\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "x5\nx3\nx5 again\nx max\nx6\nforeign\nafter the long line\nend\n"
    );
    b.signal(libc::SIGTERM);
    let stats = b.wait_for_log("nats: published=");
    assert_eq!(common::number_after(&stats, " stale="), 0, "{stats}");
    assert_eq!(common::number_after(&stats, " inbound="), 2, "{stats}");
    assert_eq!(common::number_after(&stats, " forged="), 1, "{stats}");
}

/// A raw client that reads what instances publish on the subject.
fn subscribed_raw(nats: &Nats) -> RawNats {
    let mut raw = RawNats::connect(nats);
    raw.write(format!("SUB {SUBJECT} 9\r\n").as_bytes());
    raw.round_trip();
    raw
}

impl RawNats {
    /// The payload of the next message on the subject that ends with `end`.
    fn next_message_ending(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            let message = self.next_message();
            if message.ends_with(end) {
                return message;
            }
        }
    }

    /// The payload of the next message on the subject.
    fn next_message(&mut self) -> Vec<u8> {
        loop {
            let line = self.read_line();
            if line.starts_with("PING") {
                self.write(b"PONG\r\n");
                continue;
            }
            let Some(args) = line.strip_prefix("MSG ") else {
                continue;
            };
            let size: usize = args.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
            let mut payload = vec![0; size + 2];
            std::io::Read::read_exact(&mut self.reader, &mut payload).unwrap();
            payload.truncate(size);
            return payload;
        }
    }
}

/// Two instances on one nats-server with these extra flags, their clients bridged both ways.
fn bridged_pair(nats: &Nats, extra: &[&str]) -> (Server, Server, Client, Client) {
    let a = instance(&nats.url(), extra);
    let b = instance(&nats.url(), extra);
    let mut at_a = a.connect();
    let mut at_b = b.connect();
    wait_until_bridged(&mut at_a, &mut at_b, &mut []);
    wait_until_bridged(&mut at_b, &mut at_a, &mut []);
    (a, b, at_a, at_b)
}

/// The origin and sequence number in the envelope of `message`.
fn origin_and_sequence(message: &[u8]) -> (String, u64) {
    let end = message.iter().position(|&b| b == b'\n').unwrap();
    let head = String::from_utf8_lossy(&message[..end]).to_string();
    let fields: Vec<&str> = head.split(' ').collect();
    (fields[2].to_string(), fields[3].parse().unwrap())
}

#[test]
fn forged_sequence_numbers_never_stop_delay_or_reorder_an_instances_lines() {
    let Some(nats) = Nats::start("forged_sequence_numbers_never_stop") else {
        return;
    };
    let (a, b, mut at_a, mut at_b) = bridged_pair(&nats, &[]);
    let mut raw = subscribed_raw(&nats);
    at_a.send(b"reveal\n");
    at_b.expect(b"reveal\n");
    // The attacker reads A's origin and numbers from what A publishes...
    let seen = raw.next_message_ending(b"reveal\n");
    let (origin, mut last) = origin_and_sequence(&seen);
    assert_eq!(origin, instance_id(&a));
    // ...publishes one message with A's origin and the largest number (the probe's attack)...
    raw.publish(SUBJECT, &[], &enveloped(&origin, u64::MAX, b"forged\n"));
    // ...then, while A streams, keeps claiming A's next numbers and numbers just ahead.
    let mut expected = Vec::new();
    for k in 0..20 {
        for ahead in [1, 2, 200] {
            raw.publish(SUBJECT, &[], &enveloped(&origin, last + ahead, b"forged\n"));
        }
        raw.round_trip();
        let line = format!("after-{k}\n");
        at_a.send(line.as_bytes());
        expected.extend_from_slice(line.as_bytes());
        let message = raw.next_message_ending(line.as_bytes());
        last = origin_and_sequence(&message).1;
    }
    at_a.send(b"end\n");
    expected.extend_from_slice(b"end\n");
    let got = read_through(&mut at_b, b"end\n");
    let from_a: Vec<u8> = got
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| *line != b"forged\n")
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&from_a),
        String::from_utf8_lossy(&expected)
    );
    b.signal(libc::SIGTERM);
    let stats = b.wait_for_log("nats: published=");
    assert_eq!(common::number_after(&stats, " stale="), 0, "{stats}");
}

#[test]
fn with_a_shared_key_nothing_unsigned_or_altered_is_delivered() {
    let Some(nats) = Nats::start("with_a_shared_key_nothing_unsigned") else {
        return;
    };
    let key = KeyFile::new("shared");
    let (a, b, mut at_a, mut at_b) = bridged_pair(&nats, &["--nats-key", key.arg()]);
    assert!(
        a.wait_for_log("as instance ")
            .contains("signed with --nats-key")
    );
    let mut raw = subscribed_raw(&nats);
    at_a.send(b"signed\n");
    at_b.expect(b"signed\n");
    let genuine = raw.next_message_ending(b"signed\n");
    let origin = instance_id(&a);
    // Unsigned, forged with A's origin, plain, and the genuine message altered by one byte.
    raw.publish(SUBJECT, &[], &enveloped(&origin, u64::MAX, b"forged\n"));
    raw.publish(SUBJECT, &[], b"plain\n");
    let mut altered = genuine.clone();
    let last = altered.len() - 2;
    altered[last] ^= 0x20;
    raw.publish(SUBJECT, &[], &altered);
    // The genuine message replayed: late (stale). A message signed with the key (as only
    // an instance could) from an origin B has not heard from, recorded long ago: a replay
    // to an instance that never heard from it is refused too.
    raw.publish(SUBJECT, &[], &genuine);
    let signing = MessageKey::new(SECRET.as_bytes(), SUBJECT);
    let lines = b"recorded an hour ago\n";
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 3_600_000;
    let old = [
        seal(0xabc, 1, hour_ago, Some(&signing), b"", lines),
        lines.to_vec(),
    ]
    .concat();
    raw.publish(SUBJECT, &[], &old);
    raw.round_trip();
    at_a.send(b"still signed\n");
    at_b.expect(b"still signed\n");
    b.signal(libc::SIGTERM);
    let stats = b.wait_for_log("nats: published=");
    assert_eq!(common::number_after(&stats, " forged="), 3, "{stats}");
    assert_eq!(common::number_after(&stats, " stale="), 2, "{stats}");
    assert!(!b.log_lines("a replay, or clocks that differ").is_empty());
    // A key file that is too short is refused at start.
    std::fs::write(&key.path, "short\n").unwrap();
    let (code, _, stderr) = Server::run_to_exit(&["--nats", &nats.url(), "--nats-key", key.arg()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("at least 16"), "{stderr}");
}

/// Reads `count` lines from `client`, passing over every line equal to `skip`.
fn read_lines_but(client: &mut Client, skip: &[u8], count: usize) -> Vec<u8> {
    let (mut kept, mut line, mut lines) = (Vec::new(), Vec::new(), 0);
    while lines < count {
        line.extend_from_slice(&client.read_exact(1));
        if line.ends_with(b"\n") {
            if line != skip {
                kept.extend_from_slice(&line);
                lines += 1;
            }
            line.clear();
        }
    }
    kept
}

#[test]
fn garbage_headers_on_the_subject_cannot_take_bridging_down() {
    let Some(nats) = Nats::start("garbage_headers_on_the_subject") else {
        return;
    };
    let (a, b, mut at_a, mut at_b) = bridged_pair(&nats, &[]);
    let mut raw = RawNats::connect(&nats);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // 50 malformed-header messages a second for 5 s (a bad status line, a header
            // value that is not UTF-8, a line without a colon).
            let garbage: [&[u8]; 3] = [
                b"NATS/1.0 xx\r\n\r\n",
                b"NATS/1.0\r\nX: \xff\xfe\r\n\r\n",
                b"NATS/1.0\r\nno colon here\r\n\r\n",
            ];
            for i in 0..250 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let head = garbage[i % garbage.len()];
                let payload = b"garbage\n";
                let mut frame = format!(
                    "HPUB {SUBJECT} {} {}\r\n",
                    head.len(),
                    head.len() + payload.len()
                )
                .into_bytes();
                frame.extend_from_slice(head);
                frame.extend_from_slice(payload);
                frame.extend_from_slice(b"\r\n");
                raw.write(&frame);
                thread::sleep(Duration::from_millis(20)); // the pace of the attack, not a wait
            }
            raw.round_trip();
        })
    };
    // A streams numbered lines meanwhile, a few at a time: B's client gets every one.
    for k in 0..50 {
        let lines = numbered_lines(&format!("n{k}"), 6);
        at_a.send(&lines);
        assert_eq!(
            read_lines_but(&mut at_b, b"garbage\n", 6),
            lines,
            "batch {k}"
        );
        thread::sleep(Duration::from_millis(100)); // the pace of the stream, not a wait
    }
    stop.store(true, Ordering::SeqCst);
    flooding.join().unwrap();
    for server in [&a, &b] {
        assert!(
            server.log_lines("nats: disconnected").is_empty(),
            "{}",
            server.log_text()
        );
        assert_eq!(server.log_lines("nats: connected").len(), 1);
    }
}

#[test]
fn echo_with_nats_gives_the_sender_its_line_once_and_every_other_instance_once() {
    let Some(nats) = Nats::start("echo_with_nats") else {
        return;
    };
    let a = instance(&nats.url(), &["--echo"]);
    let b = instance(&nats.url(), &[]);
    let mut sender = a.connect();
    let mut far = b.connect();
    wait_until_bridged(&mut sender, &mut far, &mut []);
    read_through(&mut sender, b"ready\n"); // its own probes, echoed
    sender.send(b"hello\n");
    sender.expect(b"hello\n");
    far.expect(b"hello\n");
    // Nothing more was on its way to either: the next line each gets is the marker.
    far.send(b"from b\n");
    sender.expect(b"from b\n");
    sender.send(b"end\n");
    sender.expect(b"end\n");
    far.expect(b"end\n");
}

/// Reads `client` on a thread, fast, until the server closes it, keeping only the lines that
/// start with `prefix` (the flood around them is counted, not kept).
fn keep_lines_starting(
    client: Client,
    prefix: &'static [u8],
) -> thread::JoinHandle<(Vec<u8>, usize)> {
    keep_and_count_lines_starting(client, prefix, Arc::default())
}

/// Like `keep_lines_starting`, counting the kept lines in `kept_lines` as they arrive.
fn keep_and_count_lines_starting(
    mut client: Client,
    prefix: &'static [u8],
    kept_lines: Arc<AtomicUsize>,
) -> thread::JoinHandle<(Vec<u8>, usize)> {
    thread::spawn(move || {
        let (mut kept, mut line, mut total) = (Vec::new(), Vec::new(), 0);
        let mut buf = vec![0; 256 * 1024];
        client.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        loop {
            let n = match std::io::Read::read(&mut client.stream, &mut buf) {
                Ok(0) => return (kept, total),
                Ok(n) => n,
                Err(e) => panic!("read failed after {total} bytes: {e}"),
            };
            total += n;
            for piece in buf[..n].split_inclusive(|&b| b == b'\n') {
                // Only the start of a line tells; keep at most that much of others.
                if line.len() < prefix.len() || line.starts_with(prefix) {
                    line.extend_from_slice(piece);
                }
                if piece.ends_with(b"\n") {
                    if line.starts_with(prefix) {
                        kept.extend_from_slice(&line);
                        kept_lines.fetch_add(1, Ordering::SeqCst);
                    }
                    line.clear();
                }
            }
        }
    })
}

#[test]
fn a_publisher_flooding_the_subject_stalls_no_local_client_and_memory_stays_bounded() {
    let Some(nats) = Nats::start("a_publisher_flooding_the_subject") else {
        return;
    };
    let mut b = instance(&nats.url(), &[]);
    let talker = b.connect();
    let listener = b.connect();
    let mut raw = RawNats::connect(&nats);
    let mut near = b.connect();
    wait_until_subscribed(&mut raw, &mut near);
    let mut talker_out = Client {
        stream: talker.stream.try_clone().unwrap(),
    };
    let heard_lines = Arc::new(AtomicUsize::new(0));
    let heard = keep_and_count_lines_starting(listener, b"local-", Arc::clone(&heard_lines));
    let near_heard = keep_lines_starting(near, b"local-");
    let talker_heard = keep_lines_starting(talker, b"local-");
    let rss_before = b.rss_kib();
    // 240 MB in 60,000-byte lines, 4 to a message, as fast as nats-server takes them.
    let flood = thread::spawn(move || {
        let mut message = Vec::new();
        for _ in 0..4 {
            message.extend_from_slice(&[b'F'; 59_999]);
            message.push(b'\n');
        }
        for _ in 0..1_000 {
            raw.publish(SUBJECT, &[], &message);
        }
        raw.round_trip();
    });
    // Meanwhile a local conversation goes on, and is heard while the flood lasts (a loop
    // that waited on the bridge would deliver it late, after the flood).
    let mut sent = 0;
    let mut heard_during_the_flood = 0;
    while !flood.is_finished() || sent < 50 {
        if !flood.is_finished() {
            heard_during_the_flood = heard_lines.load(Ordering::SeqCst);
        }
        talker_out.send(format!("local-{sent}\n").as_bytes());
        sent += 1;
        assert!(sent < 100_000, "the flood never ended");
        thread::sleep(Duration::from_millis(5)); // the talker's pace, not a wait
    }
    flood.join().expect("the flood");
    assert!(
        heard_during_the_flood > 0,
        "no local line was delivered while the flood lasted"
    );
    let peak = b.peak_rss_kib();
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit().success());
    let expected: String = (0..sent).map(|i| format!("local-{i}\n")).collect();
    for (who, heard) in [("listener", heard), ("near", near_heard)] {
        let (local, total) = heard.join().expect("a local reader");
        assert!(
            total > sent * 8,
            "{who} got none of the flood ({total} bytes)"
        );
        assert_eq!(
            String::from_utf8_lossy(&local),
            expected,
            "{who}: local lines lost, repeated or reordered during the flood"
        );
    }
    let (echoed, _) = talker_heard.join().expect("the talker's reader");
    assert!(echoed.is_empty(), "the talker got its own lines back");
    assert!(
        peak < rss_before + 96 * 1024,
        "memory grew with the flood: {rss_before} KiB before, peak {peak} KiB"
    );
    let stats = b.final_log();
    assert!(common::number_after(&stats, " received=") > 0, "{stats}");
}

#[test]
fn a_flood_while_the_loop_takes_nothing_from_nats_is_dropped_and_counted_not_held() {
    let Some(nats) = Nats::start("a_flood_while_the_loop_takes_nothing") else {
        return;
    };
    let b = instance(&nats.url(), &["--shutdown-timeout", "60"]);
    let mut raw = RawNats::connect(&nats);
    let mut stuck = b.connect();
    stuck.set_receive_buffer(4096);
    wait_until_subscribed(&mut raw, &mut stuck);
    // Output the stuck client does not read keeps the shutdown draining; meanwhile the loop
    // takes nothing from NATS (its final batches are paced for the clients).
    let mut talker = b.connect();
    let mut line = vec![b'x'; 59_999];
    line.push(b'\n');
    talker.send(&line.repeat(60));
    b.signal(libc::SIGTERM);
    b.wait_for_log("shutting down");
    let rss_before = b.rss_kib();
    let mut message = Vec::new();
    for _ in 0..4 {
        message.extend_from_slice(&[b'F'; 59_999]);
        message.push(b'\n');
    }
    for _ in 0..1_000 {
        raw.publish(SUBJECT, &[], &message);
    }
    raw.round_trip();
    raw.publish(SUBJECT, &[], b"end\n");
    raw.round_trip();
    let peak = b.peak_rss_kib();
    drop(stuck);
    let stats = b.final_log();
    assert!(
        peak < rss_before + 64 * 1024,
        "memory grew with the flood: {rss_before} KiB before, peak {peak} KiB"
    );
    assert!(common::number_after(&stats, " inbound=") > 0, "{stats}");
}

#[test]
fn credentials_in_the_url_log_in_and_wrong_ones_leave_the_instance_serving_locally() {
    if Nats::start("credentials_in_the_url").is_none() {
        return;
    }
    let nats = Nats::start_with(None, &["authorization { user: bridge, password: s3cret }"]);
    let good = format!("nats://bridge:s3cret@127.0.0.1:{}", nats.port);
    let a = instance(&good, &[]);
    let b = instance(&good, &[]);
    let mut sender = a.connect();
    let mut far = b.connect();
    wait_until_bridged(&mut sender, &mut far, &mut []);
    sender.send(b"logged in\n");
    far.expect(b"logged in\n");
    // Wrong credentials: never bridged, but the instance serves its own clients.
    let bad = format!("nats://bridge:wrong@127.0.0.1:{}", nats.port);
    let c = Server::start(&["--nats", &bad]);
    c.wait_for_log("nats: cannot reach");
    let mut c1 = c.connect();
    let mut c2 = c.connect();
    c1.send(b"local only\n");
    c2.expect(b"local only\n");
    sender.send(b"not for c\n");
    far.expect(b"not for c\n");
    assert!(c.log_lines("nats: connected").is_empty());
}

#[test]
fn lines_from_other_instances_are_part_of_the_history() {
    let Some(nats) = Nats::start("lines_from_other_instances_are_part_of_the_history") else {
        return;
    };
    let a = instance(&nats.url(), &[]);
    let b = instance(&nats.url(), &["--history", "10"]);
    let mut sender = a.connect();
    let mut far = b.connect();
    wait_until_bridged(&mut sender, &mut far, &mut []);
    sender.send(b"from a\n");
    far.expect(b"from a\n");
    let mut joiner = b.connect();
    // The history holds what B handed out: the probes and marker of the bridging check,
    // then the line from A.
    let replay = read_through(&mut joiner, b"from a\n");
    assert!(
        replay.ends_with(b"ready\nfrom a\n"),
        "{:?}",
        String::from_utf8_lossy(&replay)
    );
}

/// A fake NATS server on a free port that plays `scripts`, one per connection, in order:
/// each gets the socket after the INFO and the client's introduction were answered.
fn fake_nats(scripts: Vec<Box<dyn FnOnce(std::net::TcpStream) + Send>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for script in scripts {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let info = "INFO {\"max_payload\":4611686018427387904,\"proto\":1}\r\n";
            std::io::Write::write_all(&mut stream, info.as_bytes()).unwrap();
            let mut seen = Vec::new();
            while !seen.ends_with(b"PING\r\n") {
                let mut byte = [0];
                if std::io::Read::read(&mut stream, &mut byte).unwrap_or(0) == 0 {
                    return;
                }
                seen.push(byte[0]);
            }
            std::io::Write::write_all(&mut stream, b"PONG\r\n").unwrap();
            script(stream);
        }
        thread::sleep(DEADLINE); // keep the listener (no more connections are answered)
    });
    port
}

#[test]
fn a_lying_nats_server_can_neither_crash_nor_bloat_an_instance() {
    let port = fake_nats(vec![
        // It claims a max payload of 2^62, then announces a message of 1 TiB.
        Box::new(|mut stream| {
            let msg = b"MSG broadcast-server.lines 1 1099511627776\r\nxxxx";
            let _ = std::io::Write::write_all(&mut stream, msg);
            thread::sleep(Duration::from_secs(1)); // the lie stays open, not a wait
        }),
        // It floods PINGs and never reads our PONGs (30 MB of them).
        Box::new(|mut stream| {
            let pings = b"PING\r\n".repeat(100_000);
            for _ in 0..50 {
                if std::io::Write::write_all(&mut stream, &pings).is_err() {
                    break;
                }
            }
        }),
    ]);
    let url = format!("nats://127.0.0.1:{port}");
    let server = instance(&url, &[]);
    let lied = server.wait_for_log("nats: disconnected");
    assert!(lied.contains("a message of 1099511627776 bytes"), "{lied}");
    let flooded = server.wait_for_logs("nats: disconnected", 2);
    assert!(
        flooded[1].contains("does not read what we send"),
        "{flooded:?}"
    );
    assert!(server.rss_kib() < 64 * 1024, "{} KiB", server.rss_kib());
    // Still serving its own clients.
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(b"alive\n");
    b.expect(b"alive\n");
}

#[test]
fn a_message_of_a_million_empty_lines_is_taken_a_read_budget_a_turn() {
    let Some(nats) = Nats::start("a_message_of_a_million_empty_lines") else {
        return;
    };
    let mut b = instance(&nats.url(), &["-vv"]);
    let mut reader = b.connect();
    let mut raw = RawNats::connect(&nats);
    wait_until_subscribed(&mut raw, &mut reader);
    let empty = vec![b'\n'; 1_000_000];
    raw.publish(SUBJECT, &[], &empty);
    raw.publish(SUBJECT, &[], b"end\n");
    let got = read_through(&mut reader, b"end\n");
    assert_eq!(got.len(), 1_000_000 + 4);
    b.signal(libc::SIGTERM);
    b.wait_exit();
    let log = b.final_log();
    let taken: Vec<usize> = log
        .lines()
        .filter_map(|l| l.split("nats: took ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        taken.iter().all(|&n| n <= 64 * 1024),
        "{:?}",
        taken.iter().max()
    );
    assert!(taken.iter().sum::<usize>() >= 1_000_000);
}

#[test]
fn a_one_second_stall_of_nats_under_load_costs_no_reconnect() {
    let Some(nats) = Nats::start("a_one_second_stall_of_nats_under_load") else {
        return;
    };
    let key = KeyFile::new("short-stall");
    let (a, _b, mut at_a, _at_b) = bridged_pair(&nats, &["--nats-key", key.arg()]);
    let mut near = a.connect();
    // The near client keeps up all along (a reader of its own).
    let reading = thread::spawn(move || {
        let (mut total, mut buf) = (0, vec![0; 256 * 1024]);
        near.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        loop {
            let n = std::io::Read::read(&mut near.stream, &mut buf).expect("the near reader");
            total += n;
            if n == 0 || buf[..n].ends_with(b"end\n") {
                return total;
            }
        }
    });
    let filler = "s".repeat(200);
    let mut sent = 0;
    // About 5 MB/s for 3 s, nats-server frozen for the middle second: more than the kernel
    // buffers and the bridge hold for it (1 MiB) piles up and is dropped, but the connection
    // is not given up.
    for step in 0..300 {
        if step == 100 {
            nats.signal(libc::SIGSTOP);
        }
        if step == 200 {
            nats.signal(libc::SIGCONT);
        }
        let lines = numbered_lines(&format!("{filler}{step}"), 250);
        at_a.send(&lines);
        sent += lines.len();
        thread::sleep(Duration::from_millis(10)); // the sender's pace, not a wait
    }
    at_a.send(b"end\n");
    assert_eq!(reading.join().unwrap(), sent + 4);
    assert!(
        a.log_lines("nats: disconnected").is_empty(),
        "{}",
        a.log_text()
    );
}

#[test]
fn a_hand_out_split_into_many_nats_messages_crosses_whole_and_in_order() {
    if Nats::start("a_hand_out_split_into_many_nats_messages").is_none() {
        return;
    }
    // A max payload of 2 KiB: one hand-out of 60 KB becomes some 30 messages, each with a
    // number of its own (and, with the key, checked in order on the far side).
    let nats = Nats::start_with(None, &["max_payload: 2048"]);
    let key = KeyFile::new("split");
    let (a, b, mut at_a, mut at_b) = bridged_pair(&nats, &["--nats-key", key.arg()]);
    let lines = numbered_lines(&"h".repeat(50), 1_000);
    at_a.send(&lines);
    at_b.expect(&lines);
    at_a.send(b"end\n");
    at_b.expect(b"end\n");
    for server in [&a, &b] {
        server.signal(libc::SIGTERM);
    }
    let stats = b.wait_for_log("nats: published=");
    assert_eq!(common::number_after(&stats, " stale="), 0, "{stats}");
    let stats = a.wait_for_log("nats: published=");
    assert_eq!(common::number_after(&stats, " too_large="), 0, "{stats}");
}
