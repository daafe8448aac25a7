//! The web listener (`--http`) through the binary: WebSocket clients in the broadcast,
//! the protocol's limits, HTTP hygiene (a request path full of terminal controls reaches
//! neither the log nor the answer raw), metrics and the page.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::websocket::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, upgrade_request};
use common::{Client, DEADLINE, Server, numbered_lines};

fn web_server(extra: &[&str]) -> Server {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn tcp_and_websocket_clients_share_one_broadcast_as_text_or_binary_messages() {
    let server = web_server(&[]);
    let mut tcp = server.connect();
    // A third-party client (tungstenite) as well as our own.
    let url = format!("ws://{}/ws", server.web_addr());
    let (mut browser, _) = tungstenite::connect(url).expect("tungstenite connects");
    server.wait_for_log("websocket client");
    let mut ours = server.connect_websocket();
    tcp.send(b"hello from tcp\n\xff\xfe binary\n");
    for expected in [
        tungstenite::Message::Text("hello from tcp".into()),
        tungstenite::Message::Binary(b"\xff\xfe binary".to_vec().into()),
    ] {
        assert_eq!(browser.read().expect("a message"), expected);
    }
    ours.expect_text("hello from tcp");
    let binary = ours.read_message();
    assert_eq!(
        (binary.opcode, binary.payload),
        (BINARY, b"\xff\xfe binary".to_vec())
    );
    browser
        .send(tungstenite::Message::Text("from the browser".into()))
        .unwrap();
    tcp.expect(b"from the browser\n");
    ours.expect_text("from the browser");
    // A binary message with an embedded newline is two lines, bytes unchanged.
    ours.send_frame(BINARY, true, b"one\ntwo \x00\x01");
    tcp.expect(b"one\ntwo \x00\x01\n");
    for expected in ["one", "two \u{0}\u{1}"] {
        assert_eq!(
            browser.read().unwrap(),
            tungstenite::Message::Text(expected.into())
        );
    }
    // Nobody got their own line back: the next thing each gets is this marker.
    tcp.send(b"marker\n");
    ours.expect_text("marker");
    assert_eq!(
        browser.read().unwrap(),
        tungstenite::Message::Text("marker".into())
    );
}

#[test]
fn with_echo_a_websocket_sender_gets_its_own_message_back() {
    let server = web_server(&["--echo"]);
    let mut tcp = server.connect();
    let mut ws = server.connect_websocket();
    ws.send_text("echoed");
    ws.expect_text("echoed");
    tcp.expect(b"echoed\n");
}

#[test]
fn five_thousand_lines_reach_two_websocket_clients_in_order() {
    let server = web_server(&[]);
    let mut sender = server.connect();
    let mut readers = [server.connect_websocket(), server.connect_websocket()];
    let lines = numbered_lines("line", 5_000);
    sender.send(&lines);
    sender.send(b"marker\n");
    for reader in &mut readers {
        let mut got = Vec::new();
        while got.len() < lines.len() {
            let message = reader.read_message();
            assert_eq!(message.opcode, TEXT);
            got.extend_from_slice(&message.payload);
            got.push(b'\n');
        }
        assert_eq!(got, lines);
        // Nothing extra or repeated before the marker.
        reader.expect_text("marker");
    }
}

#[test]
fn a_fragmented_message_with_a_ping_between_is_one_line_and_the_ping_gets_its_pong() {
    let server = web_server(&[]);
    let mut tcp = server.connect();
    let mut ws = server.connect_websocket();
    ws.send_frame(TEXT, false, b"frag");
    ws.send_frame(PING, true, b"still there?");
    ws.send_frame(CONTINUATION, false, b"men");
    ws.send_frame(CONTINUATION, true, b"ted");
    let pong = ws.read_frame().expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload),
        (PONG, b"still there?".to_vec())
    );
    tcp.expect(b"fragmented\n");
}

#[test]
fn an_over_long_message_closes_with_1009_and_none_of_it_is_broadcast() {
    let server = web_server(&["--max-line", "100"]);
    let mut tcp = server.connect();
    let mut whole = server.connect_websocket();
    let mut fragmented = server.connect_websocket();
    whole.send_frame(TEXT, true, &[b'w'; 101]);
    whole.expect_close(1009);
    // Fragments within the limit, then one that passes it: nothing of it goes out.
    fragmented.send_frame(TEXT, false, b"first part\n");
    fragmented.send_frame(CONTINUATION, true, &[b'f'; 95]);
    fragmented.expect_close(1009);
    let mut ok = server.connect_websocket();
    ok.send_text(&"x".repeat(100));
    tcp.expect(format!("{}\n", "x".repeat(100)).as_bytes());
    server.wait_for_log("line too long");
}

#[test]
fn protocol_violations_close_with_1002_or_1007_and_are_logged_and_counted() {
    let mut server = web_server(&[]);
    let mut tcp = server.connect();
    let mut unmasked = server.connect_websocket();
    unmasked.send_frame_with(TEXT, true, b"not masked", false);
    unmasked.expect_close(1002);
    let mut bad_opcode = server.connect_websocket();
    bad_opcode.send_frame(0x3, true, b"");
    bad_opcode.expect_close(1002);
    let mut long_ping = server.connect_websocket();
    long_ping.send_frame(PING, true, &[0; 126]);
    long_ping.expect_close(1002);
    let mut bad_utf8 = server.connect_websocket();
    bad_utf8.send_frame(TEXT, true, b"\xc3\x28");
    bad_utf8.expect_close(1007);
    let mut bad_last_fragment = server.connect_websocket();
    bad_last_fragment.send_frame(TEXT, false, b"");
    bad_last_fragment.send_frame(CONTINUATION, true, b"\xff\xfe");
    bad_last_fragment.expect_close(1007);
    server.wait_for_log("WebSocket protocol error 1002: client frame not masked");
    server.wait_for_log("WebSocket protocol error 1007");
    // None of it reached anyone.
    let mut fine = server.connect_websocket();
    fine.send_text("after the violations");
    tcp.expect(b"after the violations\n");
    let stats = server.stop_for_stats();
    assert!(
        stats.contains(" protocol_error=5 ping_timeout=0"),
        "{stats}"
    );
}

#[test]
fn the_close_handshake_is_answered_and_the_connection_closed() {
    let server = web_server(&[]);
    let mut ws = server.connect_websocket();
    let local = ws.stream.local_addr().unwrap();
    ws.send_frame(CLOSE, true, &1000u16.to_be_bytes());
    ws.expect_close(1000);
    let line = server.wait_for_disconnect(local);
    assert!(
        line.contains("client closed (WebSocket close 1000)"),
        "{line}"
    );
}

#[test]
fn max_clients_counts_websocket_clients_and_a_full_server_answers_503() {
    let server = web_server(&["--max-clients", "2"]);
    let _tcp = server.connect();
    let _ws = server.connect_websocket();
    let mut refused = TcpStream::connect(server.web_addr()).unwrap();
    refused
        .write_all(upgrade_request("t", "").as_bytes())
        .unwrap();
    let response = String::from_utf8(Client { stream: refused }.read_to_eof()).unwrap();
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    assert!(
        response.ends_with("server full (max 2 clients)\n"),
        "{response}"
    );
    let mut tcp_refused = Client::connect_raw(server.addr());
    assert_eq!(
        tcp_refused.read_to_eof(),
        b"ERR server full (max 2 clients)\n"
    );
    // The page and metrics still answer when the broadcast is full.
    assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));
}

#[test]
fn http_refusals_have_their_status_and_one_log_line_each() {
    let server = web_server(&[]);
    assert_eq!(server.get("/nope").0, 404);
    let post = server.http("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD\r\n"),
        "{post}"
    );
    assert_eq!(server.get("/ws").0, 426);
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    assert!(server.http(&huge).starts_with("HTTP/1.1 431 "));
    assert!(
        server
            .http("NOT HTTP AT ALL\r\n\r\n")
            .starts_with("HTTP/1.1 400 ")
    );
    let head = server.http("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    for needle in [
        "404 Not Found",
        "405 Method",
        "426 Upgrade",
        "431 Request",
        "400 Bad",
    ] {
        let line = server.wait_for_log(needle);
        assert!(line.contains("http: refused 127.0.0.1:"), "{line}");
    }
}

#[test]
fn the_page_is_served_whole_and_shows_lines_as_text() {
    let server = web_server(&[]);
    let response = server.http("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(response.contains("Content-Security-Policy: default-src 'none'"));
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let length: usize = response
        .split("Content-Length: ")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(body.len(), length);
    assert!(body.contains("new WebSocket(") && body.contains("textContent = line"));
    assert!(
        !body.contains("innerHTML"),
        "lines must never become markup"
    );
    assert!(body.contains("autofocus") && body.contains("name=\"viewport\""));
}

#[test]
fn metrics_are_prometheus_text_and_move_with_traffic() {
    let server = web_server(&[]);
    let mut tcp = server.connect();
    let mut ws = server.connect_websocket();
    let before = metrics(&server);
    assert_eq!(before["broadcast_server_clients{transport=\"tcp\"}"], 1);
    assert_eq!(
        before["broadcast_server_clients{transport=\"websocket\"}"],
        1
    );
    tcp.send(b"one\ntwo\n");
    ws.expect_text("one");
    ws.expect_text("two");
    ws.send_text("three");
    tcp.expect(b"three\n");
    let after = metrics(&server);
    let moved = |name: &str| after[name] - before[name];
    assert_eq!(moved("broadcast_server_lines_received_total"), 3);
    assert_eq!(moved("broadcast_server_deliveries_total"), 3);
    assert_eq!(moved("broadcast_server_bytes_received_total"), 14);
    // To tcp "three\n" (6); to the WebSocket client two 2-byte headers + "one" + "two".
    assert_eq!(moved("broadcast_server_bytes_sent_total"), 6 + 10);
    drop(ws);
    let closed = "broadcast_server_disconnects_total{reason=\"client_closed\"}";
    common::wait_until("the disconnect shows", || {
        metrics(&server)[closed] != before[closed]
    });
}

/// Fetches `/metrics`, checks its format, and returns every sample by name and labels.
fn metrics(server: &Server) -> std::collections::HashMap<String, u64> {
    let response = server.http("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        response.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{response}"
    );
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let mut samples = std::collections::HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if line.starts_with("# HELP ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            assert!(matches!(parts.next(), Some("gauge" | "counter")), "{line}");
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
            typed.insert(name.to_string());
        } else {
            let (name, value) = line.rsplit_once(' ').expect("NAME VALUE");
            let family = name.split('{').next().unwrap();
            assert!(
                typed.contains(family),
                "{family} has no TYPE line before it"
            );
            samples.insert(name.to_string(), value.parse().expect("an integer value"));
        }
    }
    samples
}

#[test]
fn a_websocket_client_that_stops_reading_is_a_slow_consumer_and_no_one_else_notices() {
    let server = web_server(&["--max-queue", "1MiB"]);
    let mut sender = server.connect();
    let mut reader = server.connect();
    let stuck = server.connect_websocket();
    let stuck_addr = stuck.stream.local_addr().unwrap();
    stuck.set_receive_buffer(4096);
    common::stream_sixteen_megabytes(|piece| sender.send(piece), |piece| reader.expect(piece));
    let line = server.wait_for_disconnect(stuck_addr);
    assert!(line.contains("slow consumer"), "{line}");
}

#[test]
fn a_silent_websocket_client_is_pinged_then_dropped_counted_and_one_that_answers_stays() {
    let mut server = web_server(&["--ws-ping-interval", "1"]);
    let mut silent = server.connect_websocket();
    let silent_addr = silent.stream.local_addr().unwrap();
    let answering = server.connect_websocket();
    let answering_addr = answering.stream.local_addr().unwrap();
    // The answering client reads (answering pings) until it gets "done".
    let answerer = thread::spawn(move || {
        let mut answering = answering;
        let message = answering.read_message();
        assert_eq!(message.payload, b"done");
        answering // still connected: dropped only after the check below
    });
    let ping = silent.read_frame().expect("a ping");
    assert_eq!(ping.opcode, PING);
    let line = server.wait_for_disconnect(silent_addr);
    assert!(line.contains("no answer to WebSocket pings"), "{line}");
    let mut tcp = server.connect();
    tcp.send(b"done\n");
    let answering = answerer
        .join()
        .expect("the answering client stayed connected");
    assert!(
        server
            .log_lines(&format!("client {answering_addr} disconnected"))
            .is_empty()
    );
    drop(answering);
    let stats = server.stop_for_stats();
    assert!(
        stats.contains(" protocol_error=0 ping_timeout=1"),
        "{stats}"
    );
}

/// On a server with nothing else to do, a silent request is closed at its deadline all the
/// same: the deadline itself wakes the loop (nothing else would).
#[test]
fn a_silent_request_on_an_idle_server_is_closed_at_its_deadline() {
    // No pings either: their schedule would wake the loop every 15 s.
    let server = web_server(&["--ws-ping-interval", "0"]);
    let connected = Instant::now();
    let mut silent = Client::connect_raw(server.web_addr());
    silent.send(b"GET / HTTP/1.1\r\nHost: qu");
    assert_eq!(silent.read_to_eof(), b"", "closed unanswered");
    // A lower bound only (load can make it later, never earlier); without its deadline
    // waking the loop it would never be closed, and the read above would fail.
    assert!(
        connected.elapsed() >= Duration::from_secs(9),
        "closed too early"
    );
    server.wait_for_log("no complete request within 10 s");
}

/// The deadlines of finished requests are swept when they pile up (past 2 × waiting + 1024
/// entries); the connection whose accept runs the sweep keeps its own deadline (it once
/// lost it, not yet counted as waiting, and stayed open for good).
#[test]
fn a_request_accepted_as_finished_deadlines_are_swept_still_has_its_deadline() {
    let server = web_server(&["-v", "--ws-ping-interval", "0"]);
    // One silent request waits at the front of the queue; 1025 finished ones pile up
    // behind it, each gone (by the server's own log) before the next comes, so that the
    // next accept is the one that sweeps.
    let mut first = Client::connect_raw(server.web_addr());
    first.send(b"GET / HTTP/1.1\r\n");
    for done in 1..=1025 {
        assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));
        server.wait_for_logs("closed after its answer", done);
    }
    let mut silent = Client::connect_raw(server.web_addr());
    assert_eq!(
        silent.read_to_eof(),
        b"",
        "closed unanswered at its deadline"
    );
    assert_eq!(first.read_to_eof(), b"");
    server.wait_for_logs("no complete request within 10 s", 2);
}

#[test]
fn slow_requests_are_closed_ten_seconds_after_they_connect_and_stall_no_one_meanwhile() {
    let server = web_server(&[]);
    let started = Instant::now();
    let slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(server.web_addr()).unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: sl").unwrap();
            stream
        })
        .collect();
    // Each keeps trickling a byte now and then (a deadline that restarted with every byte
    // would never fire), until the server closes it.
    let trickling: Vec<_> = slow
        .into_iter()
        .map(|mut stream| {
            thread::spawn(move || {
                let deadline = Instant::now() + DEADLINE;
                // Writes fail soon after the server closed the connection.
                while stream.write_all(b"o").is_ok() {
                    if Instant::now() > deadline {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(300)); // the trickle's pace
                }
                Some(Instant::now())
            })
        })
        .collect();
    // Meanwhile everything else works at once.
    let mut tcp = server.connect();
    let mut ws = server.connect_websocket();
    tcp.send(b"while they dawdle\n");
    ws.expect_text("while they dawdle");
    assert_eq!(server.get("/healthz"), (200, "ok\n".to_string()));
    for trickle in trickling {
        let closed_at = trickle.join().unwrap().expect("never closed");
        // A lower bound only (a loaded machine can make it later, never earlier).
        let closed_at = closed_at.duration_since(started);
        assert!(
            closed_at >= Duration::from_secs(9),
            "closed too early: {closed_at:?}"
        );
    }
    server.wait_for_logs("no complete request within 10 s", 20);
}

#[test]
fn a_client_that_keeps_sending_after_its_answer_is_cut_off() {
    let server = web_server(&["-v"]);
    let mut stream = TcpStream::connect(server.web_addr()).unwrap();
    let me = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // It never reads, and sends far more than the server will throw away for it.
    let junk = vec![b'j'; 64 * 1024];
    let mut sent = 0;
    let deadline = Instant::now() + DEADLINE;
    while stream.write_all(&junk).is_ok() {
        sent += junk.len();
        assert!(
            Instant::now() < deadline,
            "the server never cut it off ({sent} bytes)"
        );
    }
    // What the client managed to send includes what the kernels buffered (MiBs); what the
    // server read is in its log: at most 64 KiB, give or take its last 4 KiB read.
    let line = server.wait_for_log(&format!(
        "http: {me} closed after its answer (it sent too much)"
    ));
    let thrown_away = common::number_after(&line, ", ") as usize;
    assert!(
        (64 * 1024..=68 * 1024).contains(&thrown_away),
        "the server read {thrown_away} bytes after its answer (the client sent {sent})"
    );
}

#[test]
fn shutdown_gives_websocket_clients_their_lines_then_close_1001() {
    let mut server = web_server(&[]);
    let mut tcp = server.connect();
    let mut ws = server.connect_websocket();
    tcp.send(b"last words\nunfinished");
    ws.expect_text("last words");
    server.signal(libc::SIGTERM);
    ws.expect_text("unfinished");
    ws.expect_close(1001);
    assert_eq!(server.wait_exit().code(), Some(0));
    let stats = server.final_log();
    assert!(stats.contains(" web: websocket=0 "), "{stats}");
}

/// An upgrade request for `/ws` with these `Host` and (if any) `Origin` headers; returns
/// the answer's head, and the stream (upgraded or closed).
fn upgrade_with(server: &Server, host: &str, origin: Option<&str>) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(server.web_addr()).unwrap();
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let request = upgrade_request(host, &origin);
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        match std::io::Read::read(&mut stream, &mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

#[test]
fn pages_of_other_sites_cannot_open_the_websocket_and_the_servers_own_can() {
    let mut server = web_server(&[]);
    let web = server.web_addr();
    let port = web.port();
    let own = format!("http://127.0.0.1:{port}");
    let foreign = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    for (host, origin, expected) in [
        (web.to_string(), None, "101"),
        (web.to_string(), Some(own.as_str()), "101"),
        (
            format!("localhost:{port}"),
            Some(&*format!("http://localhost:{port}")),
            "101",
        ),
        (
            format!("LOCALHOST:{port}"),
            Some(&*format!("http://localhost:{port}")),
            "101",
        ),
        (web.to_string(), Some(foreign.as_str()), "403"),
        (web.to_string(), Some("https://evil.example"), "403"),
        (web.to_string(), Some("null"), "403"),
        // Same host, other scheme: https is not this listener's scheme.
        (
            web.to_string(),
            Some(&*format!("https://127.0.0.1:{port}")),
            "403",
        ),
        (format!("localhost:{port}"), Some(own.as_str()), "403"),
    ] {
        let (head, stream) = upgrade_with(&server, &host, origin);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {expected} ")),
            "Host {host}, Origin {origin:?}: {head}"
        );
        if expected == "403" {
            // A fixed body, nothing of the request echoed, and nothing broadcast to it.
            let mut client = Client { stream };
            let body = String::from_utf8_lossy(&client.read_to_eof()).into_owned();
            assert_eq!(
                body,
                "403 Forbidden: this page's origin may not open /ws (see --allow-origin)\n"
            );
        } else {
            server.wait_for_logs("websocket client", 1);
        }
    }
    let refused = server.wait_for_logs("403 Forbidden", 5);
    assert!(
        refused[0].contains("Origin http://127.0.0.1:"),
        "{}",
        refused[0]
    );
    let stats = server.stop_for_stats();
    assert!(stats.contains(" foreign_origin=5 "), "{stats}");
}

#[test]
fn allow_origin_admits_exactly_the_listed_origins_and_a_refusal_is_counted_in_metrics() {
    let server = web_server(&["--allow-origin", "http://127.0.0.1:3000"]);
    let host = server.web_addr().to_string();
    let (head, _ok) = upgrade_with(&server, &host, Some("http://127.0.0.1:3000"));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    for other in [
        "http://127.0.0.1:3001",
        "https://127.0.0.1:3000",
        "http://localhost:3000",
    ] {
        let (head, _) = upgrade_with(&server, &host, Some(other));
        assert!(head.starts_with("HTTP/1.1 403 "), "{other}: {head}");
    }
    // The escaped origin in the log: no raw control character.
    let (head, _) = upgrade_with(&server, &host, Some("http://x\u{9b}31m"));
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let line = server.wait_for_log("Origin http://x");
    assert!(line.contains("Origin http://x\\u{9b}31m"), "{line}");
    assert_eq!(
        metrics(&server)["broadcast_server_refused_total{reason=\"origin\"}"],
        4
    );
}

#[test]
fn a_rebound_dns_name_is_not_our_own_origin_over_plain_http_unless_listed() {
    // A page of evil.example whose name now resolves to us: Host and Origin agree.
    let server = web_server(&[]);
    let port = server.web_addr().port();
    let (host, origin) = (
        format!("evil.example:{port}"),
        format!("http://evil.example:{port}"),
    );
    let (head, _) = upgrade_with(&server, &host, Some(&origin));
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let line = server.wait_for_log("403 Forbidden");
    assert!(line.contains(&format!("--allow-origin {origin}")), "{line}");
    // A server reached by that name over plain HTTP lists it.
    let listed = web_server(&["--allow-origin", &format!("http://chat.example:{port}")]);
    let (host, origin) = (
        format!("chat.example:{port}"),
        format!("http://chat.example:{port}"),
    );
    let (head, _ws) = upgrade_with(&listed, &host, Some(&origin));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[test]
fn allow_origin_star_turns_the_check_off_and_says_so() {
    let server = web_server(&["--allow-origin", "*"]);
    server.wait_for_log("--allow-origin '*': any web page");
    let host = server.web_addr().to_string();
    let (head, _ws) = upgrade_with(&server, &host, Some("https://evil.example"));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let out = Server::command(&["--allow-origin", "http://x"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "--allow-origin needs --http");
    let out = Server::command(&["--http", "127.0.0.1:0", "--allow-origin", "example.com"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not an origin"), "{stderr}");
}

#[test]
fn messages_of_126_bytes_and_more_cross_both_ways_intact() {
    // 16-bit and 64-bit payload lengths, in both directions, against a third-party client.
    let server = web_server(&["--max-line", "100000"]);
    let mut tcp = server.connect();
    let url = format!("ws://{}/ws", server.web_addr());
    let (mut browser, _) = tungstenite::connect(url).expect("tungstenite connects");
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = browser.get_ref() {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
    }
    server.wait_for_log("websocket client");
    let lines: Vec<String> = [126, 200, 65_535, 65_536, 70_000]
        .iter()
        .map(|&len| {
            (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect()
        })
        .collect();
    for line in &lines {
        tcp.send(format!("{line}\n").as_bytes());
        assert_eq!(
            browser.read().expect("a message"),
            tungstenite::Message::Text(line.as_str().into())
        );
        browser
            .send(tungstenite::Message::Text(line.as_str().into()))
            .unwrap();
        tcp.expect(format!("{line}\n").as_bytes());
    }
    tcp.send(b"end\n");
    assert_eq!(
        browser.read().unwrap(),
        tungstenite::Message::Text("end".into())
    );
}

#[test]
fn a_websocket_message_unfinished_at_disconnect_is_not_delivered() {
    let server = web_server(&[]);
    let mut tcp = server.connect();
    let mut ws = server.connect_websocket();
    // The first fragment of a message whose end never comes.
    ws.send_frame(TEXT, false, b"half a message");
    let local = ws.stream.local_addr().unwrap();
    drop(ws);
    server.wait_for_log(&format!("client {local} disconnected"));
    let mut other = server.connect();
    other.send(b"marker\n");
    tcp.expect(b"marker\n");
}

#[test]
fn requests_in_progress_are_capped_by_max_clients_and_one_more_gets_503_at_once() {
    let server = web_server(&["--max-clients", "2"]);
    // Two connections that never finish their request hold the two places (the listen
    // queue is first in, first out: they are taken before the third).
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.web_addr()).unwrap())
        .collect();
    let mut third = Client::connect_raw(server.web_addr());
    let answer = third.read_to_eof();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("too many requests in progress\n"),
        "{answer}"
    );
    drop(silent);
}

#[test]
fn a_websocket_client_that_leaves_with_output_queued_is_let_go_at_once_with_a_reset() {
    // Its close frame says it is leaving; it reads nothing: the server's answer would wait
    // behind MiBs it will never take, so the server drops them with a reset.
    let server = web_server(&["--max-queue", "64MiB", "-vv"]);
    let mut leaving = server.connect_websocket();
    leaving.set_receive_buffer(4096);
    let mut fast = server.connect();
    let mut sender = server.connect();
    // More than the kernel's buffers hold: most of it waits in the server's queue.
    let lines = numbered_lines(&"q".repeat(100), (16 << 20) / 110);
    sender.send(&lines);
    fast.expect(&lines);
    leaving.send_frame(CLOSE, true, &1000u16.to_be_bytes());
    let me = leaving.stream.local_addr().unwrap();
    let line = server.wait_for_disconnect(me);
    assert!(
        line.ends_with("client closed (WebSocket close 1000)"),
        "{line}"
    );
    // At once: in the turn that read its close frame (8 bytes), not at a later deadline.
    let token = server.token_of_addr(me);
    assert!(common::in_one_turn(
        &server.log_text(),
        &format!("token {token}: read 8 bytes"),
        &format!("client {me} disconnected"),
    ));
    let (got, closed) = Client {
        stream: leaving.stream,
    }
    .read_until_closed();
    assert_eq!(closed, common::Closed::Reset, "after {} bytes", got.len());
    assert!(got.len() < lines.len());
}

#[test]
fn pongs_queued_for_a_client_that_pings_without_reading_count_in_max_queue() {
    let mut server = web_server(&["--max-line", "1KiB", "--max-queue", "64KiB"]);
    let mut tcp = server.connect();
    let pinger = server.connect_websocket();
    let me = pinger.stream.local_addr().unwrap();
    pinger.set_receive_buffer(4096);
    // Pings of 125 bytes, a thousand a write; it never reads a pong. Bounded: 64 MiB of
    // pings is far past the kernel's buffers and 64 KiB of queue.
    let pings = common::websocket::client_frame(PING, true, &[b'p'; 125], true).repeat(1000);
    let mut stream = pinger.stream;
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut sent = 0;
    while sent < 64 << 20 && stream.write_all(&pings).is_ok() {
        sent += pings.len();
    }
    let line = server.wait_for_disconnect(me);
    assert!(line.contains("slow consumer"), "{line}");
    // Everyone else is served, and the stats say why it went.
    let mut other = server.connect();
    other.send(b"after the pinger\n");
    tcp.expect(b"after the pinger\n");
    let stats = server.stop_for_stats();
    assert!(stats.contains(" slow_consumer=1 "), "{stats}");
}

#[test]
fn a_websocket_client_with_output_queued_is_not_pinged_while_an_idle_silent_one_is_dropped() {
    let server = web_server(&["--ws-ping-interval", "1", "--max-queue", "64MiB"]);
    let mut busy = server.connect_websocket();
    let busy_addr = busy.stream.local_addr().unwrap();
    // 64 KiB, not less: below one loopback MSS the window reopens only on the sender's
    // persist timer and reading it all back would crawl.
    busy.set_receive_buffer(64 * 1024);
    let mut sender = server.connect();
    let mut witness = server.connect();
    // More than the kernel's buffers hold: most of it waits in the server's queue for busy.
    let count = (16 << 20) / 110;
    let lines = numbered_lines(&"b".repeat(100), count);
    sender.send(&lines);
    witness.expect(&lines);
    // A client that joins now gets nothing and says nothing: it is pinged, then dropped.
    // That is the clock for the busy one, behind all along.
    let silent = server.connect_websocket();
    let silent_addr = silent.stream.local_addr().unwrap();
    let line = server.wait_for_disconnect(silent_addr);
    assert!(line.contains("no answer to WebSocket pings"), "{line}");
    assert!(
        server
            .log_lines(&format!("client {busy_addr} disconnected"))
            .is_empty(),
        "{}",
        server.log_text()
    );
    // Not pinged while behind: no ping among its lines, nor right after them (a ping
    // queued behind them would come before this marker).
    sender.send(b"marker\n");
    for i in 0..count {
        let frame = busy.read_frame().expect("a frame");
        assert_ne!(
            frame.opcode, PING,
            "pinged with output queued, before line {i}"
        );
    }
    let next = busy.read_frame().expect("a frame");
    assert_eq!((next.opcode, next.payload), (TEXT, b"marker".to_vec()));
}

#[test]
fn a_request_path_full_of_terminal_controls_reaches_neither_the_log_nor_the_answer_raw() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let path = "/x\u{9b}31mRED\u{85}FAKE\u{2028}INFO";
    let response = server.http(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );
    assert!(
        !response.contains("RED"),
        "the answer echoes the path: {response}"
    );
    let line = server.wait_for_log("http: refused");
    for raw in ['\u{9b}', '\u{85}', '\u{2028}', '\u{1b}'] {
        assert!(
            !server.log_text().contains(raw),
            "{raw:?} reached the log: {line}"
        );
    }
    assert!(
        line.contains("/x\\u{9b}31mRED\\u{85}FAKE\\u{2028}INFO"),
        "the path is quoted escaped: {line}"
    );
    let response = server.http(&format!("DELETE {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
    assert!(
        !response.contains("RED"),
        "the answer echoes the path: {response}"
    );
}
