//! Who may connect, through the binary: `--allow`, `--deny` and `--max-clients-per-ip`,
//! with clients bound to other loopback addresses (all of 127.0.0.0/8 reaches 127.0.0.1).

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use common::websocket::upgrade_request;
use common::{Client, Server};

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Connects from 127.0.0.`last` and waits until the server has registered the client.
fn connect_from(server: &Server, last: u8) -> Client {
    let client = Client::connect_from(server.addr(), loopback(last));
    server.wait_for_log(&format!("client {} connected", client.local_addr()));
    client
}

/// Connects from 127.0.0.`last`, sends `bytes`, and returns all the server sent before
/// closing the connection (it must close it).
fn refused_from(server: &Server, last: u8, bytes: &[u8]) -> Vec<u8> {
    let mut client = Client::connect_from(server.addr(), loopback(last));
    let _ = client.stream.write_all(bytes); // the server may have closed already
    // Closed unread: a reset is as good as a FIN here.
    client.read_until_closed().0
}

#[test]
fn a_denied_address_is_closed_at_once_and_what_it_sent_reaches_no_one() {
    let server = Server::start(&["--deny", "127.0.0.3"]);
    let mut reader = connect_from(&server, 2);
    let mut writer = connect_from(&server, 4);
    assert_eq!(refused_from(&server, 3, b"secret\n"), b"");
    server.wait_for_log("denied 127.0.0.3:");
    writer.send(b"marker\n");
    reader.expect(b"marker\n"); // had "secret" been broadcast, it would come first
    server.signal(libc::SIGTERM);
    let stats = server.wait_for_log("stats:");
    assert!(
        stats.contains(" bytes_in=7 "),
        "only the marker was read: {stats}"
    );
}

#[test]
fn allow_admits_only_its_ranges_and_deny_wins_over_it() {
    let server = Server::start(&[
        "--allow",
        "127.0.0.0/30",
        "--allow",
        "127.0.0.9",
        "--deny",
        "127.0.0.2",
    ]);
    let mut one = connect_from(&server, 1);
    let mut nine = connect_from(&server, 9);
    assert_eq!(
        refused_from(&server, 2, b""),
        b"",
        "denied although allowed"
    );
    assert_eq!(refused_from(&server, 5, b""), b"", "outside every --allow");
    one.send(b"allowed\n");
    nine.expect(b"allowed\n");
    server.wait_for_log("denied 127.0.0.5:");
}

#[test]
fn one_more_client_than_max_clients_per_ip_gets_an_err_line() {
    let server = Server::start(&["--max-clients-per-ip", "2"]);
    let first = connect_from(&server, 2);
    let _second = connect_from(&server, 2);
    assert_eq!(
        refused_from(&server, 2, b""),
        b"ERR too many connections from 127.0.0.2 (max 2)\n"
    );
    let _other_address = connect_from(&server, 3);
    let first_addr = first.local_addr();
    drop(first);
    server.wait_for_disconnect(first_addr);
    let _again = connect_from(&server, 2); // a place came free
    server.signal(libc::SIGTERM);
    let stats = server.wait_for_log("stats:");
    assert!(
        stats.ends_with(" access: denied=0 per_address=1"),
        "{stats}"
    );
}

#[test]
fn the_web_listener_obeys_the_same_rules() {
    let server = Server::start(&[
        "--http",
        "127.0.0.1:0",
        "--deny",
        "127.0.0.3",
        "--max-clients-per-ip",
        "1",
    ]);
    let web = server.web_addr();
    let mut denied = Client::connect_from(web, loopback(3));
    let _ = denied
        .stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        denied.read_until_closed().0, // closed unread: a reset is as good as a FIN
        b"",
        "a denied address got an answer"
    );
    let _tcp = connect_from(&server, 2);
    let mut upgrade = Client::connect_from(web, loopback(2));
    upgrade
        .stream
        .write_all(upgrade_request("t", "").as_bytes())
        .unwrap();
    let response = String::from_utf8(upgrade.read_to_eof()).unwrap();
    assert!(response.starts_with("HTTP/1.1 429 "), "{response}");
    assert!(
        response.ends_with("too many connections from 127.0.0.2 (max 1)\n"),
        "{response}"
    );
    // Another address may still join over WebSocket.
    let ws = common::websocket::WsClient::connect_from(web, loopback(4));
    drop(ws);
}

#[test]
fn an_address_range_that_is_not_one_is_refused_at_start() {
    for (flag, value) in [
        ("--allow", "10.0.0.0/33"),
        ("--deny", "localhost"),
        ("--allow", "::1/129"),
    ] {
        let (code, _, stderr) = Server::run_to_exit(&[flag, value]);
        assert_eq!(code, 1, "{flag} {value}");
        assert!(
            stderr.starts_with(&format!(
                "error: invalid {flag}: '{value}' is not an address range"
            )),
            "{stderr}"
        );
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

#[test]
fn one_address_cannot_crowd_others_out_with_unfinished_requests_or_handshakes() {
    // Web requests that never finish count for their address.
    let server = Server::start(&["--http", "127.0.0.1:0", "--max-clients-per-ip", "2"]);
    let web = server.web_addr();
    let _dawdlers: Vec<Client> = (0..2)
        .map(|_| {
            let mut client = Client::connect_from(web, loopback(2));
            client.send(b"GET / HTTP/1.1\r\n");
            client
        })
        .collect();
    let mut third = Client::connect_from(web, loopback(2));
    let answer = String::from_utf8(third.read_to_eof()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    let mut other = Client::connect_from(web, loopback(3));
    other.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let answer = String::from_utf8(other.read_to_eof()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    // TLS handshakes that never start count too; past the limit one is closed unanswered
    // at once, and another address still gets through.
    let pki = common::tls::Pki::new("per-address");
    let (cert, key) = pki.issue("server", false);
    let tls = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--max-clients-per-ip",
        "2",
    ]);
    let _stalled: Vec<Client> = (0..2)
        .map(|_| Client::connect_from(tls.addr(), loopback(2)))
        .collect();
    let mut over = Client::connect_from(tls.addr(), loopback(2));
    assert_eq!(over.read_to_eof(), b"");
    tls.wait_for_log("refused 127.0.0.2:");
    // At once: while the two it was refused for still wait for their handshake deadline.
    assert!(
        tls.log_lines("no TLS handshake within").is_empty(),
        "{}",
        tls.log_text()
    );
    let client = common::tls::TlsClient::connect(tls.addr(), pki.client_config(None));
    assert!(client.is_ok(), "another address was crowded out");
}

/// With `--max-clients-per-ip 1`: the address's one place is free again (a line client
/// from it is admitted, then leaves).
fn place_is_free(server: &Server) {
    let client = connect_from(server, 2);
    let addr = client.local_addr();
    drop(client);
    server.wait_for_disconnect(addr);
}

/// A web request from 127.0.0.2 with `request`; reads the answer to its end and waits until
/// the server has closed the connection; returns the answer.
fn web_request_from(server: &Server, request: &[u8]) -> String {
    let mut client = Client::connect_from(server.web_addr(), loopback(2));
    client.send(request);
    let answer = String::from_utf8_lossy(&client.read_to_eof()).into_owned();
    let addr = client.local_addr();
    drop(client);
    server.wait_for_log(&format!("http: {addr} closed after its answer"));
    answer
}

#[test]
fn every_way_a_connection_ends_gives_its_address_place_back_and_a_websocket_keeps_it() {
    let server = Server::start(&[
        "--max-clients-per-ip",
        "1",
        "--max-line",
        "1KiB",
        "--http",
        "127.0.0.1:0",
        "-v",
    ]);
    // A line client sent away for an over-long line (it drains, then is closed).
    let mut long = connect_from(&server, 2);
    long.send(&[b'x'; 2000]);
    assert_eq!(long.read_to_eof(), b"ERR line too long (max 1024 bytes)\n");
    server.wait_for_disconnect(long.local_addr());
    place_is_free(&server);
    // A web request answered, and one refused (403: another site's page).
    let answer = web_request_from(&server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    place_is_free(&server);
    let foreign = upgrade_request("t", "Origin: http://evil.example\r\n");
    let answer = web_request_from(&server, foreign.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    place_is_free(&server);
    // A WebSocket client holds its place while connected ...
    let mut ws = common::websocket::WsClient::connect_from(server.web_addr(), loopback(2));
    let ws_addr = ws.stream.local_addr().unwrap();
    server.wait_for_log(&format!("websocket client {ws_addr} connected"));
    assert_eq!(
        refused_from(&server, 2, b""),
        b"ERR too many connections from 127.0.0.2 (max 1)\n"
    );
    // ... and gives it back when it closes, or breaks the protocol.
    ws.send_frame(common::websocket::CLOSE, true, &1000u16.to_be_bytes());
    ws.expect_close(1000);
    server.wait_for_disconnect(ws_addr);
    place_is_free(&server);
    let mut rude = common::websocket::WsClient::connect_from(server.web_addr(), loopback(2));
    let rude_addr = rude.stream.local_addr().unwrap();
    rude.send_frame_with(common::websocket::TEXT, true, b"unmasked", false);
    rude.expect_close(1002);
    server.wait_for_disconnect(rude_addr);
    place_is_free(&server);
}

#[test]
fn refusals_and_failed_handshakes_give_their_address_place_back() {
    // Refused because the server is full: the place is back when the full server has room.
    let server = Server::start(&["--max-clients", "1", "--max-clients-per-ip", "1"]);
    let occupant = connect_from(&server, 3);
    assert_eq!(
        refused_from(&server, 2, b""),
        b"ERR server full (max 1 clients)\n"
    );
    let occupant_addr = occupant.local_addr();
    drop(occupant);
    server.wait_for_disconnect(occupant_addr);
    place_is_free(&server);
    // A failed TLS handshake (plaintext on the TLS port).
    let pki = common::tls::Pki::new("places");
    let (tls, _) = common::tls::tls_server(&pki, &["--max-clients-per-ip", "1"]);
    let mut plain = Client::connect_from(tls.addr(), loopback(2));
    plain.send(b"hello in the clear\n");
    let _ = plain.read_until_closed();
    tls.wait_for_log(&format!(
        "tls: handshake with {} failed",
        plain.local_addr()
    ));
    drop(plain);
    let stream = Client::connect_from(tls.addr(), loopback(2)).stream;
    let client = common::tls::TlsClient::handshake(stream, pki.client_config(None));
    assert!(client.is_ok(), "the failed handshake kept its place");
}

#[test]
fn a_client_lingering_to_read_its_err_line_still_holds_its_address_place() {
    // --max-clients no longer counts it, but its socket is still open: the per-address
    // limit, which bounds sockets per host, does until it is closed.
    let server = Server::start(&["--max-clients-per-ip", "1", "--max-line", "1KiB"]);
    let mut lingering = connect_from(&server, 2);
    lingering.set_receive_buffer(4096);
    let mut reader = connect_from(&server, 3);
    let mut sender = connect_from(&server, 4);
    // Its window shut behind MiBs: its ERR line cannot leave, so it lingers (up to 2 s).
    let lines = common::numbered_lines(&"s".repeat(100), (8 << 20) / 110);
    sender.send(&lines);
    reader.expect(&lines);
    lingering.send(&[b'x'; 2000]);
    server.wait_for_log("sent a line longer than 1024 bytes; disconnecting it");
    assert_eq!(
        refused_from(&server, 2, b""),
        b"ERR too many connections from 127.0.0.2 (max 1)\n"
    );
    assert!(
        server
            .log_lines(&format!("client {} disconnected", lingering.local_addr()))
            .is_empty(),
        "it left before the newcomer came: nothing was tested"
    );
}
