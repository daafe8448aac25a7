//! Unit tests of one connection over a real loopback pair.

use super::*;
use mio::net::TcpStream;
use std::io::Read;

/// A connected pair on loopback: our side as a client connection, and the peer.
fn pair() -> (Member, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, addr) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    let poll = mio::Poll::new().unwrap();
    let mut ours = TcpStream::from_std(ours);
    poll.registry()
        .register(&mut ours, Token(9), Interest::READABLE)
        .unwrap();
    let place = AddressPlace::uncounted(addr.ip());
    (Member::new(Transport::Plain(ours), addr, place), peer)
}

#[test]
fn more_slices_than_iov_max_go_out_whole_and_in_order() {
    let (mut connection, mut peer) = pair();
    let bytes: Vec<u8> = (0..3 * IOV_MAX + 7).map(|i| (i % 251) as u8).collect();
    let mut slices: Vec<IoSlice<'_>> = bytes.chunks(1).map(IoSlice::new).collect();
    let sent = connection.send(&mut slices, 1 << 20);
    assert_eq!(sent.failure, None);
    assert_eq!(sent.written + connection.queued(), bytes.len());
    connection.flush().expect("flush");
    let mut got = vec![0; bytes.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, bytes);
}

#[test]
fn a_send_that_would_pass_max_queue_queues_nothing_and_says_slow_consumer() {
    let (mut connection, _peer) = pair();
    let chunk = vec![b'q'; 1 << 20];
    let mut total_queued = 0;
    // Fill the kernel's buffers until output has to wait here.
    for _ in 0..64 {
        let sent = connection.send(&mut [IoSlice::new(&chunk)], 8 << 20);
        assert_eq!(sent.failure, None);
        total_queued = connection.queued();
        if total_queued > 0 {
            break;
        }
    }
    assert!(total_queued > 0, "the kernel took 64 MiB without a reader");
    let sent = connection.send(&mut [IoSlice::new(&chunk)], total_queued + 10);
    assert!(matches!(
        sent.failure,
        Some(DisconnectReason::SlowConsumer { .. })
    ));
    assert_eq!(connection.queued(), total_queued, "nothing was queued");
}

#[test]
fn the_rest_of_a_line_is_read_across_reads_and_no_further() {
    use std::io::Write as _;
    let (mut connection, mut peer) = pair();
    let mut scratch = vec![0; 64 * 1024];
    let mut out = Vec::new();
    peer.write_all(b"start-").unwrap();
    // Wait (bounded) until the bytes are readable, then frame them as an unfinished line.
    for _ in 0..1000 {
        if connection.unread_input() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let report = connection.read_until_would_block(&mut scratch, 1 << 20, &mut out);
    assert_eq!((report.lines, connection.unfinished_line_len()), (0, 6));
    // The rest is longer than one read (but fits the receive window), and more input
    // follows it.
    let rest = vec![b'r'; 90_000];
    peer.write_all(&rest).unwrap();
    peer.write_all(b"\nnext line\n").unwrap();
    for _ in 0..1000 {
        if connection.unread_input() >= rest.len() + 11 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        connection.read_rest_of_line(&mut scratch, 1 << 20, &mut out),
        1
    );
    assert_eq!(out.len(), 6 + rest.len() + 1);
    assert!(out.starts_with(b"start-r") && out.ends_with(b"r\n"));
    assert_eq!(connection.unfinished_line_len(), 0);
    assert_eq!(
        connection.read_rest_of_line(&mut scratch, 1 << 20, &mut out),
        0
    );
}

#[test]
fn discarding_queued_lines_keeps_the_line_being_sent() {
    let (mut connection, _peer) = pair();
    connection
        .write_buf
        .extend(b"rest of a line\nnext\nand more\n");
    connection.discard_queued_lines();
    assert_eq!(connection.write_buf.make_contiguous(), b"rest of a line\n");
}
