//! The broadcast contract, through the real binary over real TCP: who receives what, in
//! which order, with which bytes, whatever clients send and however they leave.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, Server, numbered_lines};

#[test]
fn three_clients_each_line_reaches_the_others_but_not_its_sender() {
    let server = Server::start(&[]);
    let mut a = server.connect();
    let mut b = server.connect();
    let mut c = server.connect();

    a.send(b"from a\n");
    b.expect(b"from a\n");
    c.expect(b"from a\n");
    b.send(b"from b\n");
    // Had `a` received its own line, it would come before this one.
    a.expect(b"from b\n");
    c.expect(b"from b\n");
    c.send(b"from c\n");
    a.expect(b"from c\n");
    b.expect(b"from c\n");
}

#[test]
fn echo_sends_each_line_back_to_its_sender_too() {
    let server = Server::start(&["--echo"]);
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(b"hello\n");
    a.expect(b"hello\n");
    b.expect(b"hello\n");
}

#[test]
fn ten_thousand_lines_reach_five_receivers_in_order() {
    let server = Server::start(&[]);
    let mut receivers = server.connect_many(5);
    let mut sender = server.connect();
    let lines = numbered_lines("line", 10_000);
    // A marker after them: nothing arrives twice or extra (e.g. a partly written slice
    // sent again) between the lines and the marker.
    let expected = [lines.clone(), b"marker\n".to_vec()].concat();
    let sending = thread::spawn(move || {
        sender.send(&lines);
        sender.send(b"marker\n");
    });
    for receiver in &mut receivers {
        receiver.expect(&expected);
    }
    sending.join().unwrap();
}

#[test]
fn a_60000_byte_line_fed_one_byte_at_a_time_arrives_whole() {
    // Framing scans only new bytes: 60,000 one-byte reads stay linear (the cost is the
    // framer's; see framing.rs), and the line must come out once, intact.
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let mut line: Vec<u8> = (0..60_000).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    for byte in &line {
        sender.send(std::slice::from_ref(byte));
    }
    receiver.expect(&line);
}

#[test]
fn many_lines_in_one_send_arrive_as_separate_intact_lines() {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    sender.send(b"one\ntwo\n\nfour\nfive\n");
    receiver.expect(b"one\ntwo\n\nfour\nfive\n");
}

#[test]
fn every_byte_value_crlf_nul_and_invalid_utf8_pass_through_unchanged() {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let mut payload: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    payload.push(b'\n');
    payload.extend_from_slice(b"crlf\r\n\0nul\0\n\xff\xfe\xc3\x28 not utf-8\n");
    sender.send(&payload);
    receiver.expect(&payload);
}

#[test]
fn a_60000_byte_line_arrives_intact() {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let mut line: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    line.retain(|&b| b != b'\n');
    line.push(b'\n');
    sender.send(&line);
    receiver.expect(&line);
}

#[test]
fn two_concurrent_senders_never_interleave_inside_a_line() {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let senders = server.connect_many(2);
    const LINES: usize = 3_000;
    let threads: Vec<_> = senders
        .into_iter()
        .zip([b'x', b'y'])
        .map(|(mut sender, fill)| {
            thread::spawn(move || {
                let mut all = Vec::new();
                for i in 0..LINES {
                    let mut line = format!("{}{i}:", fill as char).into_bytes();
                    line.resize(200, fill);
                    line.push(b'\n');
                    all.extend_from_slice(&line);
                }
                // Odd-sized writes, so that lines are cut at every possible place.
                for piece in all.chunks(997) {
                    sender.send(piece);
                }
                // Keep the socket: closing it with unread input (the other sender's lines)
                // would reset the connection and discard what the server had not read yet.
                sender
            })
        })
        .collect();
    let got = receiver.read_exact(2 * LINES * 201);
    let _senders: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut next: HashMap<u8, usize> = HashMap::new();
    for line in got.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let fill = line[0];
        let number = next.entry(fill).or_default();
        let mut expected = format!("{}{number}:", fill as char).into_bytes();
        expected.resize(200, fill);
        assert_eq!(line, &expected[..], "a line was cut or out of order");
        *number += 1;
    }
    assert_eq!(next[&b'x'], LINES);
    assert_eq!(next[&b'y'], LINES);
}

/// A client whose output backs up, then leaves with `leave` (which returns the client if
/// its socket stays open): the server drops it and keeps serving everyone else.
fn leaving_with_output_pending(leave: impl FnOnce(Client) -> Option<Client>) {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let stuck = server.connect();
    stuck.set_receive_buffer(4096);
    let stuck_addr = stuck.local_addr();
    let mut sender = server.connect();
    // 2 MB: far more than the stuck client's socket buffers hold, less than --max-queue.
    let lines = numbered_lines(&"p".repeat(100), 20_000);
    sender.send(&lines);
    receiver.expect(&lines);
    let kept = leave(stuck);
    server.wait_for_disconnect(stuck_addr);
    drop(kept);
    sender.send(b"after\n");
    receiver.expect(b"after\n");
    let mut newcomer = server.connect();
    sender.send(b"still serving\n");
    newcomer.expect(b"still serving\n");
    receiver.expect(b"still serving\n");
}

#[test]
fn a_client_closing_with_fin_while_output_is_pending_is_dropped_cleanly() {
    // A FIN, and the socket kept open: dropping it with unread data would send a reset.
    leaving_with_output_pending(|client| {
        client.half_close();
        Some(client)
    });
}

#[test]
fn a_client_resetting_while_output_is_pending_is_dropped_cleanly() {
    leaving_with_output_pending(|client| {
        client.reset();
        None
    });
}

#[test]
fn events_for_clients_closed_in_the_same_batch_are_ignored() {
    // Many clients with pending output reset at once: their read, write and error events
    // arrive together, often after the client was already removed by an earlier one.
    let server = Server::start(&[]);
    let stuck: Vec<Client> = server.connect_many(50);
    for client in &stuck {
        client.set_receive_buffer(4096);
    }
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let lines = numbered_lines(&"q".repeat(100), 5_000);
    sender.send(&lines);
    receiver.expect(&lines);
    let addrs: Vec<_> = stuck.iter().map(Client::local_addr).collect();
    for client in stuck {
        client.reset();
    }
    for addr in addrs {
        server.wait_for_disconnect(addr);
    }
    sender.send(b"alive\n");
    receiver.expect(b"alive\n");
}

#[test]
fn a_client_that_half_closes_after_sending_has_its_lines_delivered() {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let sender = server.connect();
    let mut writer = sender.stream.try_clone().unwrap();
    std::io::Write::write_all(&mut writer, b"one\ntwo").unwrap();
    sender.half_close();
    receiver.expect(b"one\ntwo\n");
    let line = server.wait_for_disconnect(sender.local_addr());
    assert!(line.ends_with("client closed"), "{line}");
}

#[test]
fn an_unterminated_last_line_is_delivered_with_a_newline_when_its_sender_leaves() {
    let server = Server::start(&[]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    sender.send(b"complete\nno newline at the end");
    drop(sender);
    receiver.expect(b"complete\nno newline at the end\n");
}

#[test]
fn five_hundred_clients_all_receive_every_line() {
    let server = Server::start(&[]);
    let mut receivers = server.connect_many(500);
    let mut sender = server.connect();
    let lines = numbered_lines("to everyone", 20);
    sender.send(&lines);
    sender.send(b"marker\n");
    let expected = [lines, b"marker\n".to_vec()].concat();
    for receiver in &mut receivers {
        receiver.expect(&expected);
    }
}

#[test]
fn two_thousand_connect_close_cycles_leak_no_descriptors() {
    let server = Server::start(&[]);
    let mut sender = server.connect();
    let mut receiver = server.connect();
    let baseline = server.fd_count();
    for i in 0..2_000 {
        let client = server.connect();
        let addr = client.local_addr();
        if i % 2 == 0 {
            drop(client)
        } else {
            client.reset()
        }
        server.wait_for_disconnect(addr);
    }
    // The disconnect is logged just before the socket is dropped: give the last one its
    // moment (polling, with a deadline).
    common::wait_until("no descriptor is left over", || {
        server.fd_count() == baseline
    });
    sender.send(b"still here\n");
    receiver.expect(b"still here\n");
}

#[test]
fn a_slow_reader_still_gets_everything() {
    let server = Server::start(&[]);
    let mut slow = server.connect();
    slow.set_receive_buffer(128 * 1024);
    let mut sender = server.connect();
    let lines = numbered_lines(&"s".repeat(60), 30_000); // about 2 MB
    let expected = lines.clone();
    let sending = thread::spawn(move || sender.send(&lines));
    // Read in small pieces with pauses: pacing, not synchronisation.
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let want = (expected.len() - got.len()).min(8 * 1024);
        got.extend_from_slice(&slow.read_exact(want));
        thread::sleep(std::time::Duration::from_micros(500));
    }
    assert_eq!(got, expected);
    sending.join().unwrap();
}

#[test]
fn ipv6_loopback_works() {
    if TcpListener::bind("[::1]:0").is_err() {
        common::report_skip(
            "ipv6_loopback_works",
            "this machine has no IPv6 loopback (::1)",
        );
        return;
    }
    let server = Server::start(&["--addr", "[::1]:0"]);
    assert!(server.addr().is_ipv6());
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(b"over v6\n");
    b.expect(b"over v6\n");
}

#[test]
fn localhost_names_resolve() {
    let server = Server::start(&["--addr", "localhost:0"]);
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(b"by name\n");
    b.expect(b"by name\n");
}

#[test]
fn coalescing_delays_nothing_out_of_order_and_loses_nothing() {
    let server = Server::start(&["--coalesce-us", "20000"]);
    let mut receivers = server.connect_many(3);
    let mut sender = server.connect();
    let lines = numbered_lines("held", 5_000);
    for piece in lines.chunks(300) {
        sender.send(piece);
    }
    for receiver in &mut receivers {
        receiver.expect(&lines);
    }
    // A lone line after a quiet spell goes out too (at once, without more input).
    sender.send(b"lone\n");
    for receiver in &mut receivers {
        receiver.expect(b"lone\n");
    }
}

#[test]
fn an_unterminated_line_already_read_is_delivered_even_when_its_sender_resets() {
    let server = Server::start(&["-vv"]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    let token = server.token_of(&sender);
    sender.send(b"cut short");
    // The server has the bytes (they left the kernel) before the reset can discard them.
    server.wait_for_log(&format!("token {token}: read 9 bytes, 0 lines"));
    sender.reset();
    receiver.expect(b"cut short\n");
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
fn a_held_batch_is_held_and_skips_a_client_accepted_before_the_timer_fires() {
    // A hold of up to 1 s: a line right after another is held while batches keep coming.
    let server = Server::start(&["--coalesce-us", "1000000"]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    sender.send(b"lone\n");
    receiver.expect(b"lone\n"); // after a quiet spell: at once
    let sent = Instant::now();
    sender.send(b"held\n");
    receiver.expect(b"held\n");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "the line was not held: it arrived after {waited:?}"
    );
    // Held again; a client accepted meanwhile must not receive it (it was framed before).
    sender.send(b"held again\n");
    let mut newcomer = server.connect();
    receiver.expect(b"held again\n");
    sender.send(b"after\n");
    newcomer.expect(b"after\n");
    receiver.expect(b"after\n");
}

#[test]
fn the_stats_line_counts_a_scripted_session_exactly() {
    let mut server = Server::start(&["--max-clients", "3", "--stats-interval", "0.05"]);
    server.wait_for_log("stats: accepted=0 active=0 peak=0 ");
    let mut a = server.connect();
    let mut b = server.connect();
    let mut c = server.connect();
    a.send(b"hello\nworld\n");
    b.expect(b"hello\nworld\n");
    c.expect(b"hello\nworld\n");
    b.send(b"hi\n");
    a.expect(b"hi\n");
    c.expect(b"hi\n");
    let mut refused = Client::connect_raw(server.addr());
    assert_eq!(refused.read_to_eof(), b"ERR server full (max 3 clients)\n");
    let c_addr = c.local_addr();
    drop(c);
    server.wait_for_disconnect(c_addr);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.final_log();
    let last = log.lines().last().unwrap_or_default();
    let expected = "stats: accepted=3 active=0 peak=3 lines_in=3 deliveries=6 bytes_in=15 \
                    bytes_out=30 disconnects: client_closed=1 error=0 peer_vanished=0 slow_consumer=0 \
                    line_too_long=0 http_request=0 server_full=1 shutdown=2";
    assert!(last.ends_with(expected), "{last}");
}
