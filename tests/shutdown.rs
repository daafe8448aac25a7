//! Stopping, through the binary: SIGTERM and SIGINT drain every client (its output and the
//! lines it had unfinished), the drain's deadline, a second signal, and SIGHUP.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::thread;
use std::time::{Duration, Instant};

use broadcast_server::conn::socket_queues::{unacknowledged_output, unread_input};
use common::{Client, DEADLINE, Server, numbered_lines, stuck_client_behind, wait_until};

/// Has each of `senders` send one unfinished line of `len` bytes (distinct contents), and
/// waits until the server's kernel has acknowledged them all; returns the lines as they
/// must be delivered (with a `\n`).
fn send_unfinished_lines(senders: &mut [Client], len: usize) -> HashSet<Vec<u8>> {
    let mut expected = HashSet::new();
    for (i, sender) in senders.iter_mut().enumerate() {
        let mut line = format!("{i:05}").into_bytes();
        line.resize(len, b'a' + (i % 26) as u8);
        sender.send(&line);
        line.push(b'\n');
        expected.insert(line);
    }
    for sender in senders.iter() {
        wait_until("the server's kernel has every line", || {
            unacknowledged_output(&sender.stream) == 0
        });
    }
    expected
}

/// Sends SIGTERM while `readers` read as fast as they can; asserts each got exactly the
/// `expected` lines, whole and once, then a clean end ("server shutdown"), that no final
/// line was dropped, and exit 0.
fn shut_down_and_expect(mut server: Server, readers: &[Client], expected: &HashSet<Vec<u8>>) {
    let reading: Vec<_> = readers
        .iter()
        .map(|reader| {
            let stream = reader.stream.try_clone().unwrap();
            thread::spawn(move || Client { stream }.read_to_eof())
        })
        .collect();
    server.signal(libc::SIGTERM);
    for (reader, reading) in readers.iter().zip(reading) {
        let mine = || {
            let log = server.log_text();
            let addr = reader.local_addr().to_string();
            log.lines()
                .filter(|l| l.contains(&addr) || l.contains("shut") || l.contains("dropped"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let Ok(got) = reading.join() else {
            panic!("a reader failed; log:\n{}", mine());
        };
        let lines: Vec<&[u8]> = got.split_inclusive(|&b| b == b'\n').collect();
        let distinct: HashSet<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
        assert!(
            lines.len() == expected.len() && distinct == *expected,
            "a reader got {} lines ({} bytes), not the {} expected, whole and once; log:\n{}",
            lines.len(),
            got.len(),
            expected.len(),
            mine()
        );
        let log = server.wait_for_disconnect(reader.local_addr());
        assert!(log.ends_with("server shutdown"), "{log}");
    }
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.final_log();
    assert!(!log.contains("dropped"), "final lines were dropped:\n{log}");
}

#[test]
fn shutdown_hands_many_unfinished_lines_to_readers_that_keep_up_in_bounded_chunks() {
    let server = Server::start(&["--max-queue", "128KiB", "--shutdown-timeout", "25"]);
    let readers = server.connect_many(3);
    let mut senders = server.connect_many(300);
    let expected = send_unfinished_lines(&mut senders, 60_000);
    shut_down_and_expect(server, &readers, &expected);
}

#[test]
fn a_client_without_room_holds_the_final_lines_up_once_not_per_batch() {
    // With --max-line 4MiB a batch needs about 4.3 MB of room in a queue, so a client that
    // never reads, with megabytes queued, has none (nor have the senders, which never read
    // either). They may hold the final lines up for one patience (500 ms), not once per
    // batch: 32 batches would need far more than the 3 of the 4 s the finales get.
    let server = Server::start(&["--max-line", "4MiB", "--shutdown-timeout", "4"]);
    let (_stuck, _) = stuck_client_behind(&server, 6 << 20);
    let readers = server.connect_many(2);
    let mut senders = server.connect_many(40);
    let expected = send_unfinished_lines(&mut senders, 200_000);
    shut_down_and_expect(server, &readers, &expected);
}

#[test]
fn final_lines_not_handed_out_in_three_quarters_of_the_timeout_are_dropped_with_a_warning() {
    // The stuck client has no room for the first batch of final lines, and is waited for
    // up to 500 ms; the finales may use only 0.45 s of the 0.6 s, so they run out first
    // and the drain keeps its quarter (without that limit they would go out at 0.5 s).
    let mut server = Server::start(&["--max-line", "4MiB", "--shutdown-timeout", "0.6"]);
    let (_stuck, _) = stuck_client_behind(&server, 6 << 20);
    let mut readers = server.connect_many(2);
    let mut senders = server.connect_many(40);
    let expected = send_unfinished_lines(&mut senders, 200_000);
    server.signal(libc::SIGTERM);
    // Some batches may go out before the stuck client is found without room; both readers
    // get the same whole lines, and fewer than all.
    let got: Vec<Vec<u8>> = readers.iter_mut().map(Client::read_to_eof).collect();
    assert!(got[0] == got[1], "the readers got different lines");
    let delivered = got[0].split_inclusive(|&b| b == b'\n').count();
    for line in got[0].split_inclusive(|&b| b == b'\n') {
        assert!(expected.contains(line), "a line cut or invented");
    }
    assert!(
        delivered < 40,
        "all final lines delivered: no limit on the finales"
    );
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.final_log();
    let dropped = 40 - delivered;
    let warning = format!(
        "shutdown ran out of time before delivering everything already received: \
         {} bytes from {dropped} clients dropped",
        dropped * 200_000
    );
    assert!(log.contains(&warning), "{warning}\n{log}");
}

#[test]
fn shutdown_reads_input_already_in_the_kernel_instead_of_inventing_a_line_end() {
    let mut server = Server::start(&["--max-line", "1MiB", "--shutdown-timeout", "20"]);
    let mut receiver = server.connect();
    let mut sender = server.connect();
    // More than one read budget (64 KiB) waits in the kernel when the signal is handled.
    let mut line = vec![b'k'; 100_000];
    line.push(b'\n');
    server.stop_and_wait();
    sender.send(&line);
    wait_until("the stopped server's kernel holds the whole line", || {
        unacknowledged_output(&sender.stream) == 0
    });
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
    let got = receiver.read_to_eof();
    assert_eq!(got.len(), line.len(), "the line arrived cut or padded");
    assert!(got == line);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn at_the_shutdown_deadline_a_client_still_behind_is_reset_and_its_unsent_bytes_logged() {
    let mut server = Server::start(&["--shutdown-timeout", "0.5"]);
    let (stuck, total) = stuck_client_behind(&server, 2 << 20);
    // What the stuck client's kernel holds is all it will ever have: its window is shut.
    let mut held = unread_input(&stuck.stream);
    wait_until("the stuck client's window is shut", || {
        let now = unread_input(&stuck.stream);
        let settled = now == held && now > 0;
        held = now;
        settled
    });
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let log = server.wait_for_disconnect(stuck.local_addr());
    let unsent = common::number_after(&log, "server shutdown timed out with ") as usize;
    // Everything the client's kernel does not hold: queued in the server and in the
    // server's kernel (a window probe may move a byte or so; the server's own queue alone
    // would be short by the whole kernel send buffer, hundreds of KB).
    let expected = total - held;
    assert!(
        unsent.abs_diff(expected) <= 64,
        "logged {unsent} unsent, expected {expected} (sent {total}, the client holds {held})"
    );
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "before the deadline"
    );
    // Reset, not a FIN after a truncated stream.
    let mut stuck = stuck;
    stuck.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0; 64 * 1024];
    let err = loop {
        match stuck.stream.read(&mut buf) {
            Ok(n) => assert!(n > 0, "a FIN, not a reset"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
}

#[test]
fn a_zero_shutdown_timeout_exits_at_once_resetting_clients_still_behind() {
    let mut server = Server::start(&["--shutdown-timeout", "0"]);
    let (stuck, _) = stuck_client_behind(&server, 1 << 20);
    let mut idle = server.connect();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    let log = server.final_log();
    let disconnect = |client: &Client| {
        log.lines()
            .find(|l| l.contains(&format!("client {} disconnected", client.local_addr())))
            .unwrap_or_else(|| panic!("no disconnect line for {}", client.local_addr()))
    };
    assert!(
        disconnect(&stuck).contains("server shutdown timed out with "),
        "{log}"
    );
    // A client that had everything gets a clean end of stream, not a reset.
    assert!(disconnect(&idle).ends_with("): server shutdown"), "{log}");
    assert!(!log.contains("dropped"), "{log}");
    idle.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0; 16];
    assert_eq!(idle.stream.read(&mut buf).expect("a FIN, not a reset"), 0);
}

#[test]
fn a_client_that_half_closes_while_draining_still_gets_everything() {
    // More than the kernel's buffers hold, so that most of it waits in the server's queue.
    let mut server = Server::start(&["--shutdown-timeout", "20", "--max-queue", "64MiB"]);
    let mut slow = server.connect();
    slow.set_receive_buffer(64 * 1024);
    let mut fast = server.connect();
    let sender = server.connect();
    let lines = common::numbered_lines(&"h".repeat(100), 200_000); // 20 MB
    let writer = sender.stream.try_clone().unwrap();
    let to_send = lines.clone();
    let sending = thread::spawn(move || {
        let mut writer = writer;
        std::io::Write::write_all(&mut writer, &to_send).unwrap();
    });
    fast.expect(&lines); // so the rest is queued for `slow`
    sending.join().unwrap();
    server.signal(libc::SIGTERM);
    server.wait_for_log("received SIGTERM");
    // Done sending, still reading: the drain goes on (no cut, no reset).
    slow.half_close();
    let got = slow.read_to_eof();
    assert_eq!(got.len(), lines.len());
    assert!(got == lines);
    assert!(
        server
            .wait_for_disconnect(slow.local_addr())
            .ends_with("server shutdown")
    );
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn two_stop_signals_delivered_together_exit_at_once_without_the_drain() {
    // A client behind would hold a graceful shutdown for its full timeout (60 s); the second
    // signal, even one delivered before the loop looked at the first, means "now". (Two
    // different signals: the kernel would merge two pending SIGTERMs into one delivery.)
    let mut server = Server::start(&["--shutdown-timeout", "60"]);
    let (_stuck, _total) = stuck_client_behind(&server, 4 << 20);
    server.stop_and_wait();
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGINT);
    server.signal(libc::SIGCONT);
    assert_eq!(server.wait_exit().code(), Some(1), "a forced exit");
}

/// A stop signal with output pending to a slow reader: it gets every line, the server
/// exits 0 and logs its final stats.
fn graceful_shutdown_on(signal: libc::c_int, name: &str) {
    let mut server = Server::start(&["--shutdown-timeout", "20"]);
    let mut slow = server.connect();
    slow.set_receive_buffer(128 * 1024);
    let mut fast = server.connect();
    let mut sender = server.connect();
    let mut lines = numbered_lines(&"g".repeat(100), 60_000); // 6 MB
    sender.send(&lines);
    sender.send(b"unfinished");
    fast.expect(&lines);
    server.signal(signal);
    let log = server.wait_for_log(&format!("received {name}: shutting down, flushing "));
    let queued: usize = log
        .split("flushing ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the shutdown line says how many bytes are queued");
    assert!(
        queued > 0,
        "nothing was pending, so nothing was tested: {log}"
    );

    // Reading slowly on purpose, so that the drain takes many writable events.
    let got = slow.read_to_eof_pacing(Duration::from_micros(200));
    lines.extend_from_slice(b"unfinished\n");
    assert_eq!(got.len(), lines.len());
    assert!(got == lines, "the slow reader's bytes differ");
    assert_eq!(server.wait_exit().code(), Some(0));
    let stats = server
        .final_log()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(stats.contains("active=0"), "{stats}");
    assert!(stats.contains("shutdown=3"), "{stats}");
}

#[test]
fn sigterm_flushes_pending_output_then_exits_zero() {
    graceful_shutdown_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_flushes_pending_output_then_exits_zero() {
    graceful_shutdown_on(libc::SIGINT, "SIGINT");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["--shutdown-timeout", "600"]);
    let stuck = server.connect();
    stuck.set_receive_buffer(4096);
    let mut fast = server.connect();
    let mut sender = server.connect();
    let lines = numbered_lines(&"h".repeat(100), 20_000);
    sender.send(&lines);
    fast.expect(&lines); // so output is surely queued for `stuck`
    server.signal(libc::SIGTERM);
    server.wait_for_log("received SIGTERM: shutting down");
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(1));
    server.wait_for_log("received SIGINT again: exiting now");
    drop(stuck);
}

#[test]
fn sighup_without_tls_only_says_there_is_nothing_to_reload() {
    // A log rotation's `kill -HUP` must never stop the server.
    let mut server = Server::start(&[]);
    let mut a = server.connect();
    let mut b = server.connect();
    server.signal(libc::SIGHUP);
    server.wait_for_log("received SIGHUP: nothing to reload (no --tls-cert)");
    a.send(b"still serving\n");
    b.expect(b"still serving\n");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}
