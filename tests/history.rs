//! Late joiners catch up (`--history N`, `--history-bytes`), through the binary.

mod common;

use common::{Client, Server, numbered_lines, numbered_lines_in};

/// Sends `lines` from `sender` and waits until `witness` (connected all along) has them,
/// so they have been handed out (and kept) before anyone joins.
fn broadcast(sender: &mut Client, witness: &mut Client, lines: &[u8]) {
    sender.send(lines);
    witness.expect(lines);
}

#[test]
fn a_joiner_gets_the_last_n_lines_in_order_then_the_live_ones() {
    let mut server = Server::start(&["--history", "5"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    broadcast(&mut sender, &mut witness, &numbered_lines("old", 8));
    let mut joiner = server.connect();
    joiner.expect(&numbered_lines_in("old", 3..8));
    sender.send(b"live\n");
    joiner.expect(b"live\n");
    witness.expect(b"live\n");
    let stats = server.stop_for_stats();
    // old-4 .. old-7 and live: 4 × 6 + 5 bytes.
    assert!(stats.contains(" history: lines=5 bytes=29"), "{stats}");
}

#[test]
fn fewer_lines_than_n_are_all_replayed_and_without_history_none_are() {
    let server = Server::start(&["--history", "100"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    broadcast(&mut sender, &mut witness, b"one\ntwo\nthree\n");
    let mut joiner = server.connect();
    joiner.expect(b"one\ntwo\nthree\n");

    let plain = Server::start(&[]);
    let mut sender = plain.connect();
    let mut witness = plain.connect();
    broadcast(&mut sender, &mut witness, b"before\n");
    let mut late = plain.connect();
    sender.send(b"after\n");
    late.expect(b"after\n"); // and not "before"
}

#[test]
fn history_bytes_keeps_whole_recent_lines_and_memory_stays_bounded() {
    let server = Server::start(&["--history", "100000", "--history-bytes", "1MiB"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let rss_before = server.rss_kib();
    // 18 MB of 60,000-byte lines (60,001 with the newline) pass through.
    let line = |i: usize| {
        let mut line = format!("{i:06}-").into_bytes();
        line.resize(60_000, b'h');
        line.push(b'\n');
        line
    };
    for i in 0..300 {
        broadcast(&mut sender, &mut witness, &line(i));
    }
    let peak = server.peak_rss_kib();
    assert!(
        peak < rss_before + 8 * 1024,
        "the history grew past its bound: {rss_before} KiB before, peak {peak} KiB"
    );
    // 1 MiB holds 17 whole lines of 60,001 bytes: the last 17.
    let mut joiner = server.connect();
    let expected: Vec<u8> = (283..300).flat_map(line).collect();
    joiner.expect(&expected);
    sender.send(b"live\n");
    joiner.expect(b"live\n");
}

#[test]
fn a_joiner_that_never_reads_is_cut_at_max_queue_and_one_that_reads_gets_everything() {
    let server = Server::start(&["--history", "1000", "--history-bytes", "6MiB"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let line = |k: usize| format!("{}{k}\n", "r".repeat(60_000)).into_bytes();
    let history: Vec<u8> = (0..100).flat_map(line).collect();
    broadcast(&mut sender, &mut witness, &history);
    // A joiner that reads nothing: its receive buffer is tiny (set before it connects).
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck.set_recv_buffer_size(4096).unwrap();
    stuck.connect(&server.addr().into()).unwrap();
    let stuck_addr = stuck.local_addr().unwrap().as_socket().unwrap();
    server.wait_for_log(&format!("client {stuck_addr} connected"));
    // A joiner that reads gets the same 6 MB replay in full, then the live lines.
    let mut reader = server.connect();
    reader.expect(&history);
    // Live lines push the one that does not read past --max-queue (8 MiB).
    for k in 100..300 {
        let live = line(k);
        sender.send(&live);
        witness.expect(&live);
        reader.expect(&live);
    }
    let verdict = server.wait_for_disconnect(stuck_addr);
    assert!(verdict.contains("slow consumer"), "{verdict}");
    assert_eq!(
        server.log_lines("is a slow consumer").len(),
        1,
        "only the one that does not read"
    );
}

#[test]
fn a_history_that_cannot_fit_in_max_queue_is_refused_at_start() {
    let (code, _, stderr) = Server::run_to_exit(&[
        "--history",
        "10",
        "--history-bytes",
        "16MiB",
        "--max-queue",
        "1MiB",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: --history-bytes (16777216 bytes) must fit in --max-queue"),
        "{stderr}"
    );
    // With --http a WebSocket joiner's replay may be twice as large: 5 MiB fits an 8 MiB
    // queue for TCP joiners, not for WebSocket ones.
    let fits = ["--history", "10", "--history-bytes", "5MiB"];
    let tcp_only = Server::start(&fits);
    drop(tcp_only);
    let mut web = fits.to_vec();
    web.extend(["--http", "127.0.0.1:0"]);
    let (code, _, stderr) = Server::run_to_exit(&web);
    assert_eq!(code, 1);
    assert!(stderr.contains("twice over with --http"), "{stderr}");
}

#[test]
fn a_flood_of_empty_lines_keeps_the_history_within_its_bytes() {
    let server = Server::start(&["--history", "100000000", "--history-bytes", "1MiB"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let rss_before = server.rss_kib();
    let empties = vec![b'\n'; 1 << 20];
    for _ in 0..4 {
        broadcast(&mut sender, &mut witness, &empties);
    }
    let peak = server.peak_rss_kib();
    assert!(
        peak < rss_before + 8 * 1024,
        "4 M empty lines grew the history: {rss_before} KiB before, peak {peak} KiB"
    );
    let mut joiner = server.connect();
    joiner.expect(&empties); // the last 1 MiB of them: 1,048,576 empty lines
    sender.send(b"live\n");
    joiner.expect(b"live\n");
}

#[test]
fn a_joiner_during_a_busy_stream_sees_no_gap_and_no_duplicate() {
    let server = Server::start(&["--history", "100"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let chunk = |j: usize| numbered_lines_in("busy", 500 * j..500 * (j + 1));
    sender.send(&chunk(0));
    let mut joiners = Vec::new();
    for j in 0..5 {
        // Chunk j has been handed out; chunk j + 1 streams in while joiner j connects.
        witness.expect(&chunk(j));
        sender.send(&chunk(j + 1));
        joiners.push(server.connect());
    }
    witness.expect(&chunk(5));
    // A marker after them: nothing is repeated after the last line.
    sender.send(b"marker\n");
    let last = b"busy-2999\n";
    for (j, joiner) in joiners.iter_mut().enumerate() {
        let mut got = Vec::new();
        while !got.ends_with(last) {
            got.extend_from_slice(&joiner.read_exact(1));
        }
        let numbers: Vec<usize> = std::str::from_utf8(&got)
            .unwrap()
            .lines()
            .map(|l| l.strip_prefix("busy-").unwrap().parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[1] == w[0] + 1),
            "joiner {j}: a gap or a duplicate between the replay and the live lines"
        );
        // Its replay began with the last 100 lines handed out before it joined: at least
        // chunk j's, at most chunk j + 1's.
        let first = numbers[0];
        assert!(
            (500 * (j + 1) - 100..=500 * (j + 2) - 100).contains(&first),
            "joiner {j} began at line {first}"
        );
        joiner.expect(b"marker\n");
    }
}

#[test]
fn websocket_joiners_get_the_replay_as_messages() {
    let server = Server::start(&["--history", "3", "--http", "127.0.0.1:0"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    broadcast(&mut sender, &mut witness, b"a\nb\nc\nd\n\xff\n");
    let mut ws = server.connect_websocket();
    ws.expect_text("c");
    ws.expect_text("d");
    let binary = ws.read_message();
    assert_eq!(
        (binary.opcode, binary.payload),
        (common::websocket::BINARY, vec![0xff])
    );
    sender.send(b"live\n");
    ws.expect_text("live");
}

/// With `--history` on, its gauges are there from the start (0 lines, 0 bytes), in the
/// stats line and the metrics, not only after the first line.
#[test]
fn history_gauges_show_zero_from_the_start() {
    let mut server = Server::start(&["--history", "5", "--http", "127.0.0.1:0"]);
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\nbroadcast_server_history_lines 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nbroadcast_server_history_bytes 0\n"),
        "{metrics}"
    );
    let stats = server.stop_for_stats();
    assert!(stats.contains(" history: lines=0 bytes=0"), "{stats}");
}
