//! Server-Sent Events (issue 18), through the binary: `GET /events` (`/events/NAME` with
//! `--rooms`), one event per line with an `EPOCH-SEQ` id, and a returning reader resuming
//! after its `Last-Event-ID` (or `?since=`) with no duplicate and no gap, or told what it
//! missed. (The browser's own reconnecting `EventSource` is in tests/browser.rs.)

mod common;

use common::{Client, Server, wait_until};

/// The head of every `GET /events` answer.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Accel-Buffering: no\r\n\
    Connection: close\r\n\r\n";

/// A reader of `path` with `headers`, once the server has made it a member.
fn reader_with(server: &Server, path: &str, headers: &str) -> Client {
    let mut reader = Client::connect_raw(server.web_addr());
    reader.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes());
    reader.expect(HEAD);
    server.wait_for_log(&format!("sse reader {} connected", reader.local_addr()));
    reader
}

fn reader(server: &Server, path: &str) -> Client {
    reader_with(server, path, "")
}

/// One line's event.
fn event(epoch: &str, seq: u64, data: &str) -> String {
    format!("id: {epoch}-{seq}\ndata: {data}\n\n")
}

/// The `missed` event.
fn missed(epoch: &str, seq: u64, lines: u64, exact: bool) -> String {
    format!("id: {epoch}-{seq}\nevent: missed\ndata: {{\"lines\":{lines},\"exact\":{exact}}}\n\n")
}

/// Reads the start of the next event, `id: EPOCH-`, and returns the epoch: what the rest of
/// a test's expected bytes are written with (it is drawn at random by the server).
fn read_epoch(reader: &mut Client) -> String {
    let start = String::from_utf8(reader.read_exact(21)).expect("UTF-8");
    let epoch = start
        .strip_prefix("id: ")
        .and_then(|rest| rest.strip_suffix('-'))
        .unwrap_or_else(|| panic!("not the start of an event: {start:?}"));
    assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()), "{epoch}");
    epoch.to_string()
}

#[test]
fn each_line_is_an_event_with_its_id_lines_sse_cannot_carry_go_as_base64() {
    let server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--history",
        "2",
        "--stats-interval",
        "0.2",
    ]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    sender.send(b"one\ntwo\nthree\n");
    witness.expect(b"one\ntwo\nthree\n");
    // A new reader gets the history (lines 2 and 3), each its event, then live ones.
    let mut reader = reader(&server, "/events");
    let epoch = read_epoch(&mut reader);
    reader.expect(&event(&epoch, 2, "two").as_bytes()[21..]);
    reader.expect(event(&epoch, 3, "three").as_bytes());
    sender.send(b" spaced\n\nbad \xff\ncr\rin\n");
    witness.expect(b" spaced\n\nbad \xff\ncr\rin\n");
    let binary =
        |seq, base64: &str| format!("id: {epoch}-{seq}\nevent: binary\ndata: {base64}\n\n");
    reader.expect(
        [
            event(&epoch, 4, " spaced"),
            event(&epoch, 5, ""),
            binary(6, "YmFkIP8="),
            binary(7, "Y3INaW4="),
        ]
        .concat()
        .as_bytes(),
    );
    // Readers are counted by transport.
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("broadcast_server_clients{transport=\"sse\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("broadcast_server_clients{transport=\"tcp\"} 2\n"));
    server.wait_for_log(" http_readers=0 sse_readers=1 ");
    // At shutdown: what it is owed, then the end of the body (a FIN).
    sender.send(b"last\n");
    server.signal(libc::SIGTERM);
    assert_eq!(reader.read_to_eof(), event(&epoch, 8, "last").as_bytes());
    let stats = server.final_log();
    assert!(stats.contains(" sse_readers=0 "), "{stats}");
}

#[test]
fn a_returning_reader_gets_exactly_the_lines_after_its_last_event_then_live_ones() {
    let server = Server::start(&["--http", "127.0.0.1:0", "--history", "100"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let mut first = reader(&server, "/events");
    sender.send(b"l1\nl2\nl3\n");
    witness.expect(b"l1\nl2\nl3\n");
    let epoch = read_epoch(&mut first);
    first.expect(
        &[
            event(&epoch, 1, "l1"),
            event(&epoch, 2, "l2"),
            event(&epoch, 3, "l3"),
        ]
        .concat()
        .as_bytes()[21..],
    );
    first.reset();
    sender.send(b"l4\nl5\nl6\n");
    witness.expect(b"l4\nl5\nl6\n");
    // As a browser's EventSource comes back: its Last-Event-ID, and the URL it first had
    // (whose ?since= is older: the header wins).
    let mut back = reader_with(
        &server,
        &format!("/events?since={epoch}-1"),
        &format!("Last-Event-ID: {epoch}-3\r\n"),
    );
    back.expect(
        [
            event(&epoch, 4, "l4"),
            event(&epoch, 5, "l5"),
            event(&epoch, 6, "l6"),
        ]
        .concat()
        .as_bytes(),
    );
    sender.send(b"l7\n");
    back.expect(event(&epoch, 7, "l7").as_bytes());
    // ?since= alone, as curl would ask.
    let mut curl_like = reader(&server, &format!("/events?since={epoch}-5"));
    curl_like.expect(
        [event(&epoch, 6, "l6"), event(&epoch, 7, "l7")]
            .concat()
            .as_bytes(),
    );
    // Up to date: nothing but what comes next.
    let mut current = reader_with(&server, "/events", &format!("Last-Event-ID: {epoch}-7\r\n"));
    sender.send(b"l8\n");
    current.expect(event(&epoch, 8, "l8").as_bytes());
    back.expect(event(&epoch, 8, "l8").as_bytes());
    curl_like.expect(event(&epoch, 8, "l8").as_bytes());
}

#[test]
fn an_id_older_than_the_history_or_from_another_run_is_told_what_it_missed() {
    let mut server = Server::start(&["--http", "127.0.0.1:0", "--history", "2"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let mut first = reader(&server, "/events");
    sender.send(b"l1\n");
    let epoch = read_epoch(&mut first);
    first.expect(&event(&epoch, 1, "l1").as_bytes()[21..]);
    sender.send(b"l2\nl3\nl4\nl5\n");
    witness.expect(b"l1\nl2\nl3\nl4\nl5\n");
    // Lines 2 and 3 are no longer kept: it is told, exactly, then gets 4 and 5.
    let mut late = reader_with(&server, "/events", &format!("Last-Event-ID: {epoch}-1\r\n"));
    late.expect(
        [
            missed(&epoch, 3, 2, true),
            event(&epoch, 4, "l4"),
            event(&epoch, 5, "l5"),
        ]
        .concat()
        .as_bytes(),
    );
    // An id that is not ours at all: what this stream had before its history, not exactly.
    let mut stranger = reader_with(&server, "/events", "Last-Event-ID: nonsense\r\n");
    stranger.expect(
        [
            missed(&epoch, 3, 3, false),
            event(&epoch, 4, "l4"),
            event(&epoch, 5, "l5"),
        ]
        .concat()
        .as_bytes(),
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    // A new run is a new stream: an id of the last one is not confused with its lines.
    let server = Server::start(&["--http", "127.0.0.1:0", "--history", "2"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    sender.send(b"n1\nn2\nn3\n");
    witness.expect(b"n1\nn2\nn3\n");
    let mut returning = reader_with(&server, "/events", &format!("Last-Event-ID: {epoch}-5\r\n"));
    let new_epoch = read_epoch(&mut returning);
    assert_ne!(new_epoch, epoch, "a new run draws a new epoch");
    returning.expect(
        &[
            missed(&new_epoch, 1, 1, false),
            event(&new_epoch, 2, "n2"),
            event(&new_epoch, 3, "n3"),
        ]
        .concat()
        .as_bytes()[21..],
    );
}

#[test]
fn without_history_a_returning_reader_hears_how_many_lines_went_by() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    let mut first = reader(&server, "/events");
    sender.send(b"a\n");
    let epoch = read_epoch(&mut first);
    first.expect(&event(&epoch, 1, "a").as_bytes()[21..]);
    sender.send(b"b\nc\n");
    witness.expect(b"a\nb\nc\n");
    let mut back = reader_with(&server, "/events", &format!("Last-Event-ID: {epoch}-1\r\n"));
    back.expect(missed(&epoch, 3, 2, true).as_bytes());
    sender.send(b"d\n");
    back.expect(event(&epoch, 4, "d").as_bytes());
}

#[test]
fn events_readers_are_members_cut_by_max_queue_and_per_room() {
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0", "--max-clients", "6"]);
    let stuck = reader(&server, "/events");
    stuck.set_receive_buffer(4096);
    let mut ops = reader(&server, "/events/ops");
    let (mut sender, _fast) = common::flood_until_cut(&server, &stuck, 150_000);
    // The room's reader got none of main's lines, and its room lives while it reads.
    sender.send(b"/join ops\n");
    sender.expect(b"OK joined ops\n");
    sender.send(b"for ops\n");
    let epoch = read_epoch(&mut ops);
    ops.expect(&event(&epoch, 1, "for ops").as_bytes()[21..]);
    sender.send(b"/rooms\n");
    sender.expect(b"OK rooms main:1 ops:2\n");
    let bad = server.http("GET /events/bad!name HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    let plain = Server::start(&["--http", "127.0.0.1:0", "--max-clients", "1"]);
    let off = plain.http("GET /events/ops HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(off.starts_with("HTTP/1.1 404 "), "{off}");
    let _one = reader(&plain, "/events");
    let full = plain.http("GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(full.starts_with("HTTP/1.1 503 "), "{full}");
    wait_until("the stats gauge", || {
        plain
            .get("/metrics")
            .1
            .contains("broadcast_server_clients{transport=\"sse\"} 1\n")
    });
}

/// A reader's events as they come, whole: what was read past the last one waits here.
struct Events<'a> {
    reader: &'a mut Client,
    pending: Vec<u8>,
}

impl Events<'_> {
    /// The next `count` lines' events: their sequence numbers, and the `missed` event's
    /// data if one came among them. Fails on a reset (a reader cut as a slow consumer) and
    /// at the deadline.
    fn take(&mut self, count: usize) -> (Vec<u64>, Option<String>) {
        use std::io::Read as _;
        let deadline = std::time::Instant::now() + common::DEADLINE;
        let (mut seqs, mut missed) = (Vec::new(), None);
        let mut buf = vec![0; 64 * 1024];
        loop {
            while seqs.len() < count
                && let Some(at) = self.pending.windows(2).position(|w| w == b"\n\n")
            {
                let event: Vec<u8> = self.pending.drain(..at + 2).collect();
                let event = String::from_utf8(event).expect("UTF-8 events");
                let seq = event
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .and_then(|id| id.rsplit('-').next()?.parse().ok())
                    .expect("an id");
                match event.contains("event: missed") {
                    true => {
                        missed = event
                            .lines()
                            .find_map(|l| l.strip_prefix("data: "))
                            .map(str::to_string)
                    }
                    false => seqs.push(seq),
                }
            }
            if seqs.len() == count {
                return (seqs, missed);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {count} events",
                seqs.len()
            );
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            self.reader.stream.set_read_timeout(Some(left)).unwrap();
            match self.reader.stream.read(&mut buf) {
                Ok(0) => panic!("closed after {} of {count} events", seqs.len()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed after {} of {count} events: {e}", seqs.len()),
            }
        }
    }
}

/// `reader`'s events.
fn events(reader: &mut Client) -> Events<'_> {
    Events {
        reader,
        pending: Vec::new(),
    }
}

#[test]
fn a_replay_is_at_most_half_of_max_queue_and_a_returning_reader_is_told_what_it_left_out() {
    let server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--history",
        "100000",
        "--history-bytes",
        "256KiB",
        "--max-queue",
        "1MiB",
    ]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    // 30,000 empty lines: 30 KB kept, but about 1.1 MB as events.
    let lines = vec![b'\n'; 30_000];
    sender.send(&lines);
    witness.expect(&lines);
    // A new reader gets the newest lines whose events fit in 512 KiB, and no word of more.
    let mut fresh = reader(&server, "/events");
    let mut fresh = events(&mut fresh);
    let (first, _) = fresh.take(1);
    let fits = 30_000 - first[0] + 1;
    assert!(fits > 5_000 && fits < 30_000, "{fits} lines replayed");
    let (rest, missed) = fresh.take(fits as usize - 1);
    assert_eq!(missed, None);
    assert_eq!(rest.last(), Some(&30_000));
    assert!(rest.windows(2).all(|w| w[1] == w[0] + 1));
    // A returning reader that saw line 10: told exactly what it will not get, then the rest.
    let epoch = {
        let mut probe = reader(&server, "/events?since=0000000000000000-0");
        read_epoch(&mut probe)
    };
    let mut back = reader_with(
        &server,
        "/events",
        &format!("Last-Event-ID: {epoch}-10\r\n"),
    );
    let (got, missed) = events(&mut back).take(fits as usize);
    assert_eq!(got.first(), Some(&first[0]), "the same lines fit");
    let left_out = first[0] - 11;
    assert_eq!(
        missed.as_deref(),
        Some(&*format!("{{\"lines\":{left_out},\"exact\":true}}"))
    );
    sender.send(b"live\n");
    back.expect(format!("id: {epoch}-30001\ndata: live\n\n").as_bytes());
}

#[test]
fn a_burst_of_joiners_is_taken_a_few_a_turn_and_every_one_gets_in() {
    let server = Server::start(&["--http", "127.0.0.1:0", "--history", "10", "-v"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    sender.send(b"kept\n");
    witness.expect(b"kept\n");
    // Twenty readers ask while the server is stopped: its next turn sees them all.
    server.stop_and_wait();
    let mut readers: Vec<Client> = (0..20)
        .map(|_| {
            let mut reader = Client::connect_raw(server.web_addr());
            reader.send(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
            reader
        })
        .collect();
    server.signal(libc::SIGCONT);
    server.wait_for_log("a member too many this turn; it comes in the next");
    for reader in &mut readers {
        reader.expect(HEAD);
        let epoch = read_epoch(reader);
        reader.expect(&event(&epoch, 1, "kept").as_bytes()[21..]);
    }
}

#[test]
fn a_reader_whose_request_and_end_of_input_come_together_is_gone() {
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0", "-vv"]);
    for (n, path) in ["/events/quiet", "/lines/quiet"].into_iter().enumerate() {
        let mut reader = Client::connect_raw(server.web_addr());
        // Accepted, and nothing to read yet; then the request and the FIN in one event.
        server.wait_for_logs("request head 0 bytes so far", n + 1);
        server.stop_and_wait();
        reader.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        reader.half_close();
        server.signal(libc::SIGCONT);
        server.wait_for_disconnect(reader.local_addr());
    }
    let mut client = server.connect();
    client.send(b"/rooms\n");
    client.expect(b"OK rooms main:1\n");
}
