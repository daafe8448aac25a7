//! HTTP streams (issue 18), through the binary: `GET /lines` (`/lines/NAME` with `--rooms`)
//! streams the broadcast as a chunked body, to `curl -N` (a Debian package; the test that
//! runs it skips with one SKIPPED line without it) and to a hand-written reader.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{Client, Server, numbered_lines, report_skip, wait_until};

/// The head of every `GET /lines` answer.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Transfer-Encoding: chunked\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
    Connection: close\r\n\r\n";

/// `bytes` as one HTTP chunk.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

/// A reader of `path` on the web listener, once the server has made it a member (its
/// answer's head read and checked).
fn reader(server: &Server, path: &str) -> Client {
    let mut reader = Client::connect_raw(server.web_addr());
    reader.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    reader.expect(HEAD);
    server.wait_for_log(&format!("http reader {} connected", reader.local_addr()));
    reader
}

#[test]
fn a_reader_gets_the_history_then_each_hand_out_as_a_chunk_and_the_end_at_shutdown() {
    let mut server = Server::start(&["--http", "127.0.0.1:0", "--history", "2"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    sender.send(b"one\ntwo\nthree\n");
    witness.expect(b"one\ntwo\nthree\n");
    let mut reader = reader(&server, "/lines");
    reader.expect(&chunk(b"two\nthree\n"));
    sender.send(b"live\n");
    reader.expect(&chunk(b"live\n"));
    witness.expect(b"live\n");
    server.signal(libc::SIGTERM);
    // The body's end, then the connection's (a FIN: nothing was cut).
    assert_eq!(reader.read_to_eof(), b"0\r\n\r\n");
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn a_reader_whose_input_ends_is_gone_and_holds_no_room() {
    // curl and browsers never close their sending half; a reader that does may have closed
    // its socket altogether, and in a quiet room no write would ever tell: it is gone.
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0"]);
    let reader = reader(&server, "/lines/quiet");
    reader.half_close();
    server.wait_for_disconnect(reader.local_addr());
    let mut client = server.connect();
    client.send(b"/rooms\n");
    client.expect(b"OK rooms main:1\n");
}

#[test]
fn an_http_1_0_reader_gets_the_lines_as_they_are_until_the_connection_ends() {
    let mut server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut reader = Client::connect_raw(server.web_addr());
    reader.send(b"GET /lines HTTP/1.0\r\n\r\n");
    reader.expect(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n\
          X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
    );
    server.wait_for_log(&format!("http reader {} connected", reader.local_addr()));
    let mut sender = server.connect();
    sender.send(b"no chunks\nfor 1.0\n");
    reader.expect(b"no chunks\nfor 1.0\n");
    server.signal(libc::SIGTERM);
    assert_eq!(
        reader.read_to_eof(),
        b"",
        "the body ends with the connection"
    );
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn curl_prints_the_broadcast_live_and_ends_cleanly_at_shutdown() {
    if Command::new("curl").arg("--version").output().is_err() {
        return report_skip(
            "curl_prints_the_broadcast_live",
            "needs curl (apt-get install curl)",
        );
    }
    let mut server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut sender = server.connect();
    let mut curl = Command::new("curl")
        .args(["-sSN", "--fail"])
        .arg(format!("http://{}/lines", server.web_addr()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start curl");
    wait_until("curl is a reader", || {
        server.log_text().contains("http reader ")
    });
    let lines = numbered_lines("via curl", 1000);
    sender.send(&lines);
    let mut stdout = curl.stdout.take().expect("curl's stdout");
    let mut got = vec![0; lines.len()];
    stdout.read_exact(&mut got).expect("curl prints the lines");
    assert_eq!(got, lines);
    server.signal(libc::SIGTERM);
    assert!(
        curl.wait().expect("curl ends").success(),
        "curl saw a clean end"
    );
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("curl's end");
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn a_reader_that_stops_reading_is_cut_by_max_queue_and_no_one_else_notices() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let stuck = reader(&server, "/lines");
    stuck.set_receive_buffer(4096);
    let (mut sender, mut fast) = common::flood_until_cut(&server, &stuck, 250_000);
    sender.send(b"still fine\n");
    fast.expect(b"still fine\n");
}

#[test]
fn readers_count_in_max_clients_and_in_the_gauges() {
    let server = Server::start(&["--http", "127.0.0.1:0", "--max-clients", "2"]);
    let _reader = reader(&server, "/lines");
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("broadcast_server_clients{transport=\"http\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("broadcast_server_clients{transport=\"tcp\"} 0\n"));
    let _line_client = server.connect();
    let full = server.http("GET /lines HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(full.starts_with("HTTP/1.1 503 "), "{full}");
}

#[test]
fn with_rooms_a_reader_of_lines_name_gets_that_rooms_lines_only() {
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0"]);
    let mut ops_reader = reader(&server, "/lines/ops");
    let mut main_reader = reader(&server, "/lines");
    let mut in_ops = server.connect();
    in_ops.send(b"/join ops\n");
    in_ops.expect(b"OK joined ops\n");
    let mut in_main = server.connect();
    in_main.send(b"for main\n");
    in_ops.send(b"for ops\n");
    ops_reader.expect(&chunk(b"for ops\n"));
    main_reader.expect(&chunk(b"for main\n"));
    in_ops.send(b"/rooms\n");
    in_ops.expect(b"OK rooms main:2 ops:2\n");
    let bad = server.http("GET /lines/bad!name HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    let plain = Server::start(&["--http", "127.0.0.1:0"]);
    let off = plain.http("GET /lines/ops HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(off.starts_with("HTTP/1.1 404 "), "{off}");
}

/// Everything the server sends `client` until it closes, as text.
fn read_answer(client: &mut Client) -> String {
    String::from_utf8_lossy(&client.read_to_eof()).into_owned()
}

/// Sends a raw request to the web listener and returns the whole answer.
fn post(server: &Server, path: &str, body: &[u8]) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let mut client = Client::connect_raw(server.web_addr());
    client.send(&request);
    read_answer(&mut client)
}

#[test]
fn curl_posts_a_file_of_lines_and_every_client_gets_them_in_order() {
    if Command::new("curl").arg("--version").output().is_err() {
        return report_skip(
            "curl_posts_a_file_of_lines",
            "needs curl (apt-get install curl)",
        );
    }
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut receiver = server.connect();
    let mut reader = reader(&server, "/lines");
    // A file of 3,000 lines, as a user would post one (curl asks for a 100 Continue only
    // for bodies over 1 MiB, refused anyway: that exchange is tested by hand below).
    let lines = numbered_lines("posted", 3000);
    let file = std::env::temp_dir().join(format!("broadcast-server-post-{}", std::process::id()));
    std::fs::write(&file, &lines).expect("write the body");
    let answer = Command::new("curl")
        .args(["-sS", "--fail", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/lines", server.web_addr()))
        .output()
        .expect("run curl");
    let _ = std::fs::remove_file(&file);
    assert!(answer.status.success(), "{answer:?}");
    assert_eq!(answer.stdout, b"3000 lines\n");
    receiver.expect(&lines);
    reader.expect(&chunk(&lines));
}

#[test]
fn a_post_waits_for_its_100_continue_and_its_last_line_gets_a_newline() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut receiver = server.connect();
    let mut poster = Client::connect_raw(server.web_addr());
    poster.send(
        b"POST /lines HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nExpect: 100-continue\r\n\r\n",
    );
    poster.expect(b"HTTP/1.1 100 Continue\r\n\r\n");
    poster.send(b"one\n\ntwo");
    let answer = read_answer(&mut poster);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n3 lines\n"), "{answer}");
    receiver.expect(b"one\n\ntwo\n");
}

#[test]
fn a_body_with_a_line_over_max_line_is_refused_whole_and_limits_are_said() {
    let server = Server::start(&["--http", "127.0.0.1:0", "--max-line", "10"]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let answer = post(
        &server,
        "/lines",
        b"fine\nthis line is too long\nfine too\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.contains("none of the body was broadcast"),
        "{answer}"
    );
    // None of it went out: the next line anyone gets is this one.
    sender.send(b"marker\n");
    receiver.expect(b"marker\n");
    // Refused from its head: the body is never read.
    let mut big = Client::connect_raw(server.web_addr());
    big.send(b"POST /lines HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n");
    let answer = read_answer(&mut big);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("a body over 1048576 bytes"), "{answer}");
    let mut chunked = Client::connect_raw(server.web_addr());
    chunked.send(b"POST /lines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let answer = read_answer(&mut chunked);
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    sender.send(b"marker 2\n");
    receiver.expect(b"marker 2\n");
}

#[test]
fn with_rooms_a_post_reaches_its_room_only_and_makes_no_room() {
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0"]);
    let mut in_ops = server.connect();
    in_ops.send(b"/join ops\n");
    in_ops.expect(b"OK joined ops\n");
    let mut in_main = server.connect();
    let answer = post(&server, "/lines/ops", b"for ops\n");
    assert!(answer.ends_with("\r\n\r\n1 lines\n"), "{answer}");
    in_ops.expect(b"for ops\n");
    let answer = post(&server, "/lines/ghost", b"for no one\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with("0 lines: room ghost has no members here\n"),
        "{answer}"
    );
    let answer = post(&server, "/lines", b"for main\n");
    assert!(answer.ends_with("\r\n\r\n1 lines\n"), "{answer}");
    in_main.expect(b"for main\n");
    in_ops.send(b"/rooms\n");
    in_ops.expect(b"OK rooms main:1 ops:1\n");
}

/// `POST path` with a body of `length` bytes: its head (with `extra` headers).
fn post_head(path: &str, length: usize, extra: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n")
        .into_bytes()
}

/// What `/metrics` says the POST bodies being read hold.
fn post_bytes_held(server: &Server) -> u64 {
    let (_, metrics) = server.get("/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("broadcast_server_http_post_bytes_held "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no post_bytes_held gauge in {metrics}"))
}

#[test]
fn post_bodies_being_read_hold_at_most_64_mib_together_past_which_a_post_gets_a_503() {
    const MIB: usize = 1024 * 1024;
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut receiver = server.connect();
    // 64 bodies of 1 MiB, each one byte short: 64 MiB - 64 bytes held.
    let mut holders: Vec<Client> = (0..64)
        .map(|_| {
            let mut holder = Client::connect_raw(server.web_addr());
            holder.send(&post_head("/lines", MIB, ""));
            holder.send(&vec![b'\n'; MIB - 1]);
            holder
        })
        .collect();
    let held = (64 * (MIB - 1)) as u64;
    wait_until("the 64 bodies are read", || {
        post_bytes_held(&server) == held
    });
    // Refused from its head, before a 100 Continue: its declared megabyte does not fit.
    let mut refused = Client::connect_raw(server.web_addr());
    refused.send(&post_head("/lines", MIB, "Expect: 100-continue\r\n"));
    let answer = read_answer(&mut refused);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("hold 64 MiB already"), "{answer}");
    // 64 bytes are left exactly: a body of 65 is refused, one of 64 published.
    let answer = post(&server, "/lines", &[b'x'; 65]);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let mut fits = vec![b'y'; 63];
    fits.push(b'\n');
    let answer = post(&server, "/lines", &fits);
    assert!(answer.ends_with("\r\n\r\n1 lines\n"), "{answer}");
    receiver.expect(&fits);
    // A holder that goes gives its bytes back, and a megabyte fits again.
    holders.pop().expect("a holder").reset();
    wait_until("a holder's bytes are given back", || {
        post_bytes_held(&server) == held - (MIB - 1) as u64
    });
    let mut welcome = Client::connect_raw(server.web_addr());
    welcome.send(&post_head("/lines", MIB, "Expect: 100-continue\r\n"));
    welcome.expect(b"HTTP/1.1 100 Continue\r\n\r\n");
    // One that completes its body publishes it and gives its bytes back too.
    holders[0].send(b"\n");
    let answer = read_answer(&mut holders[0]);
    assert!(
        answer.ends_with(&format!("\r\n\r\n{MIB} lines\n")),
        "{answer}"
    );
    receiver.expect(&vec![b'\n'; MIB]);
    wait_until("a published body is no longer held", || {
        post_bytes_held(&server) == held - 2 * (MIB - 1) as u64
    });
}

/// Three POSTs of 600,000 bytes of lines (a turn publishes up to 1 MiB of bodies, at least
/// one), each sent but its last byte, once the server has read them; returns the bodies
/// and their posters.
fn three_bodies_but_their_last_bytes(server: &Server) -> (Vec<Vec<u8>>, Vec<Client>) {
    let bodies: Vec<Vec<u8>> = ["a", "b", "c"]
        .iter()
        .map(|prefix| {
            let mut body = numbered_lines(prefix, 100_000);
            body.truncate(600_000);
            *body.last_mut().expect("a byte") = b'\n';
            body
        })
        .collect();
    let posters: Vec<Client> = bodies
        .iter()
        .map(|body| {
            let mut poster = Client::connect_raw(server.web_addr());
            poster.send(&post_head("/lines", body.len(), ""));
            poster.send(&body[..body.len() - 1]);
            poster
        })
        .collect();
    wait_until("the bodies are read but their last bytes", || {
        post_bytes_held(server) == 3 * 599_999
    });
    (bodies, posters)
}

#[test]
fn bodies_that_end_together_are_published_a_turns_budget_at_a_time_each_whole() {
    let server = Server::start(&["--http", "127.0.0.1:0", "-v"]);
    let mut receiver = server.connect();
    // Three bodies of 600,000 bytes: a turn publishes up to 1 MiB of bodies (at least one).
    let (bodies, mut posters) = three_bodies_but_their_last_bytes(&server);
    // The last bytes arrive while the server is stopped: its next turn sees all three.
    server.stop_and_wait();
    for poster in &mut posters {
        poster.send(b"\n");
    }
    server.signal(libc::SIGCONT);
    let counts: Vec<String> = bodies
        .iter()
        .map(|body| {
            format!(
                "\r\n\r\n{} lines\n",
                body.iter().filter(|&&b| b == b'\n').count()
            )
        })
        .collect();
    for (poster, count) in posters.iter_mut().zip(&counts) {
        let answer = read_answer(poster);
        assert!(answer.ends_with(count.as_str()), "{answer}");
    }
    server.wait_for_log("its body waits for the next turn");
    // Each body whole, one after another, in whichever order they were published.
    let got = receiver.read_exact(3 * 600_000);
    let mut seen: Vec<&[u8]> = got.chunks(600_000).collect();
    seen.sort();
    let mut expected: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    expected.sort();
    assert!(seen == expected, "the bodies came interleaved or altered");
}

#[test]
fn a_post_gets_its_100_continue_only_once_its_room_is_known_and_never_over_http_1_0() {
    let expect = "Expect: 100-continue\r\n";
    let plain = Server::start(&["--http", "127.0.0.1:0"]);
    let rooms = Server::start(&["--rooms", "--http", "127.0.0.1:0"]);
    for (server, path, status) in [
        (&plain, "/lines/ops", "HTTP/1.1 404 "),
        (&rooms, "/lines/bad!name", "HTTP/1.1 400 "),
    ] {
        let mut poster = Client::connect_raw(server.web_addr());
        poster.send(&post_head(path, 5000, expect));
        let answer = read_answer(&mut poster);
        assert!(answer.starts_with(status), "{path}: {answer}");
    }
    // HTTP/1.0 has no 100 Continue: its client sends the body at once, and gets one answer.
    let mut receiver = plain.connect();
    let mut old = Client::connect_raw(plain.web_addr());
    old.send(b"POST /lines HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nol");
    // Its body started (where a 1.1 client would have had its 100 Continue), then the rest.
    wait_until("the body is started", || post_bytes_held(&plain) == 2);
    old.send(b"d\n");
    let answer = read_answer(&mut old);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n1 lines\n"), "{answer}");
    receiver.expect(b"old\n");
}

#[test]
fn bytes_after_a_posted_body_are_a_request_not_served_however_they_arrive() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let pipelined = b"POST /lines HTTP/1.1\r\nContent-Length: 1\r\n\r\nx";
    for split in [false, true] {
        let mut poster = Client::connect_raw(server.web_addr());
        let mut request = post_head("/lines", 4, "");
        request.extend_from_slice(b"one\n");
        if split {
            poster.send(&request);
            poster.send(pipelined);
        } else {
            request.extend_from_slice(pipelined);
            poster.send(&request);
        }
        let answer = read_answer(&mut poster);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n1 lines\n"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
        receiver.expect(b"one\n");
    }
    // Nothing of the second requests was published: the next line is this one.
    sender.send(b"marker\n");
    receiver.expect(b"marker\n");
}

#[test]
fn bodies_waiting_for_their_turn_at_a_stop_signal_are_published_and_answered() {
    let mut server = Server::start(&["--http", "127.0.0.1:0", "-v"]);
    let mut receiver = server.connect();
    let (bodies, mut posters) = three_bodies_but_their_last_bytes(&server);
    // The last bytes, then the signal, while the server is stopped: in its next turn one
    // body is published, the others wait for a turn that the stop signal ends.
    server.stop_and_wait();
    for poster in &mut posters {
        poster.send(b"\n");
    }
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
    for (poster, body) in posters.iter_mut().zip(&bodies) {
        let answer = read_answer(poster);
        let lines = body.iter().filter(|&&b| b == b'\n').count();
        assert!(
            answer.ends_with(&format!("\r\n\r\n{lines} lines\n")),
            "{answer}"
        );
    }
    let got = receiver.read_to_eof();
    assert_eq!(got.len(), 3 * 600_000, "every body, whole");
    assert_eq!(server.wait_exit().code(), Some(0));
}
