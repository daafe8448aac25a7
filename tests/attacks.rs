//! What an adversarial probe broke once, each replayed through the binary: a ClientHello
//! with a huge invalid SNI (a dependency's log line, unthrottled), client bytes reaching the
//! log raw, 1-byte TLS records against the read budget. The NATS attacks (a forged origin,
//! garbage headers) are in tests/bridge.rs, beside a real nats-server.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;

use common::Server;
use common::tls::{Pki, TlsClient, connect};
use common::websocket::upgrade_request;

/// A server speaking TLS with a certificate from `pki`, plus `extra` flags.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    common::tls::tls_server(pki, extra).0
}

/// A TLS 1.3 ClientHello whose server_name is `name` (any bytes), cut into handshake
/// records of at most 16 KiB: no cryptography needed to send it again and again.
fn client_hello_with_sni(name: &[u8]) -> Vec<u8> {
    let u16be = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    let mut sni = vec![0x00]; // host_name
    sni.extend_from_slice(&u16be(name.len()));
    sni.extend_from_slice(name);
    let mut extension = vec![0x00, 0x00]; // server_name
    extension.extend_from_slice(&u16be(sni.len() + 2));
    extension.extend_from_slice(&u16be(sni.len()));
    extension.extend_from_slice(&sni);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // no compression
    body.extend_from_slice(&u16be(extension.len()));
    body.extend_from_slice(&extension);
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut records = Vec::new();
    for fragment in handshake.chunks(16 * 1024) {
        records.extend_from_slice(&[0x16, 0x03, 0x01]);
        records.extend_from_slice(&u16be(fragment.len()));
        records.extend_from_slice(fragment);
    }
    records
}

/// Handshakes the log says failed: one line each, or summed up.
fn failed_handshakes(server: &Server) -> usize {
    let one_each = server.log_lines("tls: handshake with ").len();
    let summed: usize = server
        .log_lines(" more handshakes failed")
        .iter()
        .filter_map(|l| {
            l.split("tls: ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    one_each + summed
}

/// The log so far, in bytes, and its longest line.
fn log_size(server: &Server) -> (usize, usize) {
    let log = server.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    (log.len(), longest)
}

#[test]
fn two_hundred_hellos_with_a_huge_invalid_sni_leave_the_log_small_and_tls_working() {
    let pki = Pki::new("sni");
    let server = tls_server(&pki, &[]);
    let config = pki.client_config(None);
    let mut receiver = connect(&server, &config);
    let mut sender = connect(&server, &config);
    let (before, _) = log_size(&server);
    let hello = client_hello_with_sni(&[0xff; 60_000]);
    for _ in 0..200 {
        let mut attacker = TcpStream::connect(server.addr()).unwrap();
        // The server may answer the first records with an alert and close: a failed write
        // is part of the attack going as planned.
        let _ = attacker.write_all(&hello);
    }
    // Every attacker's failure is logged or summed up (20 a second, then a summary).
    common::wait_until("all 200 handshakes failed", || {
        failed_handshakes(&server) >= 200
    });
    // A normal client is still served after them.
    let mut late = connect(&server, &config);
    sender.send(b"still here\n");
    receiver.expect(b"still here\n");
    late.expect(b"still here\n");
    let (after, longest) = log_size(&server);
    let grown = after - before;
    assert!(
        grown < 100_000,
        "the log grew by {grown} bytes for 200 hellos"
    );
    assert!(longest < 1_100, "a log line of {longest} bytes");
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

#[test]
fn one_byte_tls_records_are_read_a_bounded_number_a_turn() {
    let pki = Pki::new("records");
    let mut server = tls_server(&pki, &["-vv", "--coalesce-us", "0"]);
    let config = pki.client_config(None);
    let mut receiver = connect(&server, &config);
    let mut sender = connect(&server, &config);
    let token = server.token_of_addr(sender.stream.sock.local_addr().unwrap());
    // 40,000 bytes of lines, one byte a record: encrypted first, sent in one go.
    let lines = common::numbered_lines(&"r".repeat(90), 400);
    let mut ciphertext = Vec::new();
    for byte in &lines {
        sender.stream.conn.writer().write_all(&[*byte]).unwrap();
        while sender.stream.conn.wants_write() {
            sender.stream.conn.write_tls(&mut ciphertext).unwrap();
        }
    }
    let mut tcp = sender.stream.sock.try_clone().unwrap();
    let sending = thread::spawn(move || tcp.write_all(&ciphertext).unwrap());
    receiver.expect(&lines);
    sending.join().unwrap();
    server.signal(libc::SIGTERM);
    server.wait_exit();
    let log = server.final_log();
    let per_turn: Vec<usize> = common::reads_per_turn(&log, &token)
        .into_iter()
        .filter(|&read| read > 0)
        .collect();
    assert_eq!(per_turn.iter().sum::<usize>(), lines.len());
    let most = per_turn.iter().max().copied().unwrap_or(0);
    // One turn decrypts about what one 4 KiB read from the socket holds (some 180 such
    // records), not 65,536 of them.
    assert!(
        most <= 1024,
        "{most} one-byte records read in one turn ({} turns)",
        per_turn.len()
    );
}

#[test]
fn a_tls_client_sent_away_for_a_long_line_is_counted_as_such_even_if_it_resets() {
    let pki = Pki::new("long");
    let mut server = tls_server(&pki, &["--max-line", "10"]);
    let config = pki.client_config(None);
    let mut client = connect(&server, &config);
    client.send(b"far more than ten bytes\n");
    server.wait_for_log("sent a line longer than 10 bytes");
    // Its farewell (ERR, close_notify) arrives and is left unread: closing now is a reset.
    client.stream.sock.peek(&mut [0; 1]).unwrap();
    let local = client.stream.sock.local_addr().unwrap();
    drop(client);
    server.wait_for_disconnect(local);
    let stats = server.stop_for_stats();
    assert!(
        stats.contains(" error=0 ") && stats.contains(" line_too_long=1 "),
        "{stats}"
    );
}

/// /proc/net/tcp's code for CLOSE_WAIT: the FIN arrived, the socket is still open.
const CLOSE_WAIT: u8 = 0x08;

/// The state of the IPv4 socket from `local_port` to `remote_port`, from /proc/net/tcp.
fn tcp_state(local_port: u16, remote_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (port(local) == Some(local_port) && port(remote) == Some(remote_port))
            .then(|| u8::from_str_radix(state, 16).ok())
            .flatten()
    })
}

#[test]
fn a_client_that_left_in_the_same_poll_as_a_newcomer_arrived_no_longer_counts() {
    let mut server = Server::start(&["--http", "127.0.0.1:0", "--max-clients", "3"]);
    let web = server.web_addr();
    let leaving = server.connect();
    let _b = server.connect();
    let _c = server.connect();
    server.stop_and_wait();
    // The newcomer's connection is ready on the web listener first, then the leaver's close
    // arrives: one poll reports both, the listener first.
    let mut newcomer = TcpStream::connect(web).unwrap();
    newcomer
        .write_all(upgrade_request("t", "").as_bytes())
        .unwrap();
    let leaver = leaving.local_addr();
    drop(leaving);
    // Both are in the server's kernel before it runs again (a loaded machine may process
    // loopback packets late): its side of the leaver is in CLOSE_WAIT.
    common::wait_until("the FIN arrived", || {
        tcp_state(server.addr().port(), leaver.port()) == Some(CLOSE_WAIT)
    });
    server.signal(libc::SIGCONT);
    let mut answer = [0; 12];
    newcomer.set_read_timeout(Some(common::DEADLINE)).unwrap();
    std::io::Read::read_exact(&mut newcomer, &mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101", "{}", server.log_text());
    server.wait_for_log("websocket client");
    let log = server.log_text();
    let left = log.find(&format!("client {leaver} disconnected")).unwrap();
    let joined = log.find("websocket client").unwrap();
    assert!(left < joined, "{log}");
    server.signal(libc::SIGTERM);
    server.wait_exit();
}

#[test]
fn a_request_head_in_one_byte_tls_records_is_read_over_several_turns_and_answered() {
    let pki = Pki::new("head-records");
    let mut server = tls_server(&pki, &["--http", "127.0.0.1:0", "-vv"]);
    let config = pki.client_config(None);
    let mut client = TlsClient::connect(server.web_addr(), Arc::clone(&config)).unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(7_000)
    );
    // Some 7,000 records, about 160 KB on the wire: more than one turn's read budget, all
    // in the kernel before the server reads any (no further event announces the rest).
    let mut ciphertext = Vec::new();
    for byte in head.as_bytes() {
        client.stream.conn.writer().write_all(&[*byte]).unwrap();
        while client.stream.conn.wants_write() {
            client.stream.conn.write_tls(&mut ciphertext).unwrap();
        }
    }
    client.stream.sock.write_all(&ciphertext).unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut client.stream, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    // Read a budget a turn: a few hundred bytes of head each time, over many turns.
    server.signal(libc::SIGTERM);
    server.wait_exit();
    let log = server.final_log();
    let mut so_far = 0;
    let mut grew = Vec::new();
    for turn in common::turns(&log) {
        for line in turn {
            let Some(rest) = line.split("request head ").nth(1) else {
                continue;
            };
            let now: usize = rest.split(' ').next().unwrap().parse().unwrap();
            grew.push(now - so_far);
            so_far = now;
        }
    }
    assert_eq!(so_far, head.len());
    assert!(grew.len() >= 10, "read in {} steps", grew.len());
    assert!(grew.iter().all(|&n| n <= 1024), "{grew:?}");
}

#[test]
fn an_http_request_sent_to_the_line_port_is_refused_and_none_of_it_is_broadcast() {
    let mut server = Server::start(&[]);
    let mut member = server.connect();
    let mut page = server.connect();
    page.send(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\
          Content-Type: text/plain\r\n\r\nINJECTED\n",
    );
    assert_eq!(
        page.read_to_eof(),
        b"ERR this port speaks lines, not HTTP (browsers use the --http listener)\n"
    );
    // With a small --max-line the request's body can carry a line too long: still nothing
    // of it is broadcast (the first line decides, before the long one is judged).
    let mut short = Server::start(&["--max-line", "1000"]);
    let mut watcher = short.connect();
    let mut page = short.connect();
    let body = "A".repeat(1_100);
    page.send(format!("POST / HTTP/1.1\r\nHost: x\r\n\r\nINJECTED\n{body}\n").as_bytes());
    assert!(
        page.read_to_eof()
            .starts_with(b"ERR this port speaks lines, not HTTP")
    );
    // An unfinished request line left at a disconnect is not delivered either.
    let unfinished = short.connect();
    let mut raw = unfinished.stream.try_clone().unwrap();
    raw.write_all(b"POST /INJECTED-unfinished HTTP/1.1")
        .unwrap();
    let local = unfinished.local_addr();
    drop((raw, unfinished));
    short.wait_for_disconnect(local);
    let mut talker = short.connect();
    talker.send(b"marker\n");
    watcher.expect(b"marker\n");
    let stats = short.stop_for_stats();
    assert!(stats.contains(" http_request=1 "), "{stats}");
    // A line that only starts like a request is chat.
    let mut talker = server.connect();
    talker.send(b"GET me a coffee\n");
    member.expect(b"GET me a coffee\n");
    let stats = server.stop_for_stats();
    assert!(stats.contains(" http_request=1 "), "{stats}");
}

#[test]
fn at_most_eight_handshake_steps_are_taken_a_turn_and_the_rest_follow() {
    let pki = Pki::new("steps");
    let server = tls_server(&pki, &["-vv"]);
    // Forty real ClientHellos (each costs the server a signature), all waiting when the
    // server runs again.
    let mut hello = Vec::new();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    rustls::ClientConnection::new(pki.client_config(None), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    server.stop_and_wait();
    let clients: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            stream.write_all(&hello).unwrap();
            stream
        })
        .collect();
    server.signal(libc::SIGCONT);
    server.wait_for_logs(": handshake step", 40);
    let steps: Vec<usize> = common::turns(&server.log_text())
        .iter()
        .map(|turn| {
            turn.iter()
                .filter(|l| l.contains(": handshake step"))
                .count()
        })
        .filter(|&n| n > 0)
        .collect();
    assert!(steps.iter().all(|&n| n <= 8), "steps per turn: {steps:?}");
    assert!(
        steps.contains(&8),
        "the budget was never reached: {steps:?}"
    );
    drop(clients);
}
