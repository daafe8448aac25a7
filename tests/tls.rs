//! TLS on every listener, through the binary: rustls clients with throw-away certificates
//! (rcgen), `ncat --ssl` as a third-party client (skipped when missing), mutual TLS,
//! SIGHUP reload, stalled and plaintext clients, start-up errors, WSS; and what an
//! adversarial probe tried: ClientHellos with a huge invalid SNI, 1-byte records against the
//! read budget, a flood of handshakes against the per-turn step budget.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::{Pki, TlsClient, connect, tls_server};
use common::websocket::upgrade_request;
use common::{Client, DEADLINE, Server, numbered_lines, report_skip};
use rustls::pki_types::pem::PemObject;

#[test]
fn tls_clients_broadcast_ten_thousand_lines_in_order_and_a_60000_byte_line() {
    let pki = Pki::new("broadcast");
    let (server, _) = tls_server(&pki, &[]);
    let config = pki.client_config(None);
    let mut receiver = connect(&server, &config);
    let mut sender = connect(&server, &config);
    let lines = numbered_lines("tls", 10_000);
    let expected = lines.clone();
    let sending = thread::spawn(move || {
        sender.send(&lines);
        sender
    });
    receiver.expect(&expected);
    let mut sender = sending.join().unwrap();
    let mut big: Vec<u8> = (0..60_000).map(|i| b'a' + (i % 26) as u8).collect();
    big.push(b'\n');
    sender.send(&big);
    receiver.expect(&big);
    // Bytes that are not UTF-8 cross unchanged (a lossy comparison could not tell).
    let mut binary: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    binary.push(b'\n');
    sender.send(&binary);
    receiver.expect(&binary);
    // Nothing repeated or extra after them.
    sender.send(b"marker\n");
    receiver.expect(b"marker\n");
}

#[test]
fn ncat_ssl_sends_and_receives() {
    if Command::new("ncat").arg("--version").output().is_err() {
        report_skip(
            "ncat_ssl_sends_and_receives",
            "needs ncat (apt-get install ncat)",
        );
        return;
    }
    let pki = Pki::new("ncat");
    let (server, _) = tls_server(&pki, &[]);
    let mut ours = connect(&server, &pki.client_config(None));
    let mut ncat = Command::new("ncat")
        .args(["--ssl", "--ssl-verify", "--ssl-trustfile"])
        .arg(pki.ca_path())
        .args(["localhost", &server.addr().port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ncat");
    server.wait_for_logs("connected (token", 2);
    let mut input = ncat.stdin.take().unwrap();
    input.write_all(b"from ncat\n").unwrap();
    ours.expect(b"from ncat\n");
    ours.send(b"to ncat\n");
    let mut output = ncat.stdout.take().unwrap();
    let mut got = [0; 8];
    let reading = thread::spawn(move || output.read_exact(&mut got).map(|()| got));
    common::wait_until("ncat printed the line", || reading.is_finished());
    assert_eq!(&reading.join().unwrap().unwrap(), b"to ncat\n");
    drop(input);
    let _ = ncat.kill();
    let _ = ncat.wait();
}

#[test]
fn a_plaintext_client_is_closed_and_its_bytes_reach_no_one() {
    let pki = Pki::new("plaintext");
    let (server, _) = tls_server(&pki, &[]);
    let config = pki.client_config(None);
    let mut reader = connect(&server, &config);
    let mut writer = connect(&server, &config);
    let mut plain = Client::connect_raw(server.addr());
    plain.send(b"hello in the clear\n");
    plain.stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let _ = plain.stream.read_to_end(&mut answer); // an alert, or nothing; then the close
    assert!(!answer.windows(5).any(|w| w == b"hello"));
    // Closed for what it sent, not at the handshake deadline 10 s later.
    let line = server.wait_for_log(&format!(
        "tls: handshake with {} failed",
        plain.local_addr()
    ));
    assert!(
        line.ends_with(&format!(
            "tls: handshake with {} failed: it sent something that is not TLS (a plaintext \
             client on the TLS port?)",
            plain.local_addr()
        )),
        "{line}"
    );
    writer.send(b"marker\n");
    reader.expect(b"marker\n");
}

#[test]
fn stalled_handshakes_block_no_one_and_are_closed_after_ten_seconds() {
    let pki = Pki::new("stalled");
    let (server, _) = tls_server(&pki, &[]);
    let started = Instant::now();
    let stalled: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    let config = pki.client_config(None);
    let mut a = connect(&server, &config);
    let mut b = connect(&server, &config);
    a.send(b"while they stall\n");
    b.expect(b"while they stall\n");
    for stream in stalled {
        let got = Client { stream }.read_to_eof();
        assert!(got.is_empty(), "a stalled handshake got bytes");
    }
    // A lower bound only (a loaded machine can make it later, never earlier).
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed too early"
    );
    server.wait_for_log("no TLS handshake within 10 s");
}

#[test]
fn mutual_tls_admits_certified_clients_and_refuses_others_in_the_handshake() {
    let pki = Pki::new("mtls");
    let ca = pki.ca_path();
    let (server, _) = tls_server(&pki, &["--tls-client-ca", ca.to_str().unwrap()]);
    let alice = pki.issue("alice", true);
    let certified = pki.client_config(Some(&alice));
    let mut a = connect(&server, &certified);
    let mut b = connect(&server, &certified);
    // Without a certificate: the handshake fails (TLS 1.3 reports it on the first read).
    let anonymous = TlsClient::connect(server.addr(), pki.client_config(None));
    if let Ok(mut anonymous) = anonymous {
        anonymous.stream.write_all(b"sneaking in\n").ok();
        refused_by_alert(anonymous.read_exact(1));
    }
    server.wait_for_log("tls: handshake with");
    // A certificate from another CA is refused too.
    let stranger_pki = Pki::new("stranger");
    let stranger = stranger_pki.issue("mallory", true);
    let mut config = (*stranger_pki.client_config(Some(&stranger))).clone();
    config
        .dangerous()
        .set_certificate_verifier(trust_server_anyway(&pki));
    if let Ok(mut mallory) = TlsClient::connect(server.addr(), Arc::new(config)) {
        mallory.stream.write_all(b"sneaking in\n").ok();
        refused_by_alert(mallory.read_exact(1));
    }
    a.send(b"only for the certified\n");
    b.expect(b"only for the certified\n");
    assert_eq!(server.log_lines(" connected (token").len(), 2);
}

/// Asserts a TLS 1.3 client learned of its refusal from the server (an alert, a close),
/// not by waiting in vain.
fn refused_by_alert(read: std::io::Result<Vec<u8>>) {
    match read {
        Ok(bytes) => panic!("a client without a valid certificate got {bytes:?}"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no refusal, only silence: {e}"
        ),
    }
}

/// A verifier that trusts `pki`'s server certificate (for a client whose own certificate
/// comes from another CA).
fn trust_server_anyway(pki: &Pki) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.ca_path()).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_old_ones_go_on() {
    let old_pki = Pki::new("old");
    let (server, (cert, key)) = tls_server(&old_pki, &[]);
    let old_config = old_pki.client_config(None);
    let mut old_sender = connect(&server, &old_config);
    let mut old_reader = connect(&server, &old_config);
    // Rotate: a certificate from a new CA, written over the same files.
    let new_pki = Pki::new("new");
    let (new_cert, new_key) = new_pki.issue("server", false);
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("tls: reloaded");
    let new_config = new_pki.client_config(None);
    let mut fresh = connect(&server, &new_config);
    assert!(
        TlsClient::connect(server.addr(), Arc::clone(&old_config)).is_err(),
        "a new connection still got the old certificate"
    );
    old_sender.send(b"after the rotation\n");
    old_reader.expect(b"after the rotation\n");
    fresh.expect(b"after the rotation\n");
    // A reload that fails keeps what is in force.
    std::fs::write(&key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("tls: reload failed, keeping the configuration in force");
    let _still_fine = connect(&server, &new_config);
}

#[test]
fn tls_start_up_errors_are_one_line_and_a_non_zero_exit() {
    let pki = Pki::new("startup");
    let (cert, key) = pki.issue("server", false);
    let (other_cert, _) = pki.issue("other", false);
    let missing = pki.dir.join("missing.pem");
    // What `openssl genpkey -aes256` writes (the base64 body is not checked before the label).
    let encrypted = pki.dir.join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG\n\
         -----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    // What `openssl ec -aes256` (or `genrsa -aes256 -traditional`) writes.
    let legacy = pki.dir.join("legacy.key");
    std::fs::write(
        &legacy,
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\n\
         MHcCAQEEIAbc\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let legacy = legacy.to_str().unwrap().to_string();
    let (cert, key, other_cert, missing, encrypted) = (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
        other_cert.to_str().unwrap().to_string(),
        missing.to_str().unwrap().to_string(),
        encrypted.to_str().unwrap().to_string(),
    );
    let cases: [(Vec<&str>, String); 7] = [
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            format!("error: cannot use --tls-cert '{missing}': No such file or directory"),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &missing],
            format!("error: cannot use --tls-key '{missing}': No such file or directory"),
        ),
        (
            vec!["--tls-cert", &other_cert, "--tls-key", &key],
            format!("error: --tls-key '{key}' does not fit --tls-cert '{other_cert}'"),
        ),
        (
            vec!["--tls-cert", &cert],
            "error: --tls-cert needs --tls-key".to_string(),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &encrypted],
            format!(
                "error: cannot use --tls-key '{encrypted}': the key is encrypted (a passphrase \
                 cannot be given to a server): write it unencrypted with `openssl pkey -in \
                 '{encrypted}' -out '{encrypted}'.plain` (or make keys with -nodes / -noenc)\n"
            ),
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &legacy],
            format!(
                "error: cannot use --tls-key '{legacy}': the key is encrypted (a passphrase \
                 cannot be given to a server): write it unencrypted with `openssl pkey -in \
                 '{legacy}' -out '{legacy}'.plain` (or make keys with -nodes / -noenc)\n"
            ),
        ),
        (
            vec!["--tls-client-ca", &cert],
            "error: --tls-client-ca needs --tls-cert and --tls-key".to_string(),
        ),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = Server::run_to_exit(&args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with(&expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn wss_clients_join_the_same_broadcast() {
    let pki = Pki::new("wss");
    let (server, _) = tls_server(&pki, &["--http", "127.0.0.1:0"]);
    let config = pki.client_config(None);
    let mut tcp = connect(&server, &config);
    let web = server.web_addr();
    let tls = TlsClient::connect(web, Arc::clone(&config)).expect("TLS to the web listener");
    let (mut ws, _) = tungstenite::client(format!("wss://localhost:{}/ws", web.port()), tls.stream)
        .expect("a WebSocket over TLS");
    server.wait_for_log("websocket client");
    tcp.send(b"to the browser\n");
    assert_eq!(
        ws.read().unwrap(),
        tungstenite::Message::Text("to the browser".into())
    );
    ws.send(tungstenite::Message::Text("from the browser".into()))
        .unwrap();
    tcp.expect(b"from the browser\n");
    // The page itself over HTTPS.
    let mut page = TlsClient::connect(web, config).unwrap();
    page.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut response = Vec::new();
    let _ = page.stream.read_to_end(&mut response);
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(response.ends_with(b"\r\n\r\nok\n"));
}

#[test]
fn a_tls_client_that_stops_reading_is_a_slow_consumer() {
    let pki = Pki::new("slow");
    let (server, _) = tls_server(&pki, &["--max-queue", "1MiB"]);
    let config = pki.client_config(None);
    let mut sender = connect(&server, &config);
    let mut reader = connect(&server, &config);
    let stuck = connect(&server, &config);
    let stuck_addr = stuck.stream.sock.local_addr().unwrap();
    common::stream_sixteen_megabytes(|piece| sender.send(piece), |piece| reader.expect(piece));
    let line = server.wait_for_disconnect(stuck_addr);
    assert!(line.contains("slow consumer"), "{line}");
}

#[test]
fn a_line_sent_together_with_the_clients_finished_message_is_not_held_back() {
    let pki = Pki::new("early");
    let (server, _) = tls_server(&pki, &[]);
    let config = pki.client_config(None);
    let mut reader = connect(&server, &config);
    // Drive a client by hand so that its Finished message and its first line leave in one
    // write: the server then finds the line already decrypted inside rustls when the
    // handshake completes, with no readiness event to come for it.
    let mut tcp = TcpStream::connect(server.addr()).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while client.is_handshaking() {
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        tcp.write_all(&out).unwrap();
        out.clear();
        client.read_tls(&mut tcp).expect("the server's flight");
        client.process_new_packets().expect("a valid handshake");
    }
    client.writer().write_all(b"early\n").unwrap();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    tcp.write_all(&out).unwrap(); // Finished and the line, in one segment
    reader.expect(b"early\n");
}

#[test]
fn a_tls_joiner_gets_the_history_after_its_handshake() {
    let pki = Pki::new("history");
    let (server, _) = tls_server(&pki, &["--history", "2"]);
    let config = pki.client_config(None);
    let mut sender = connect(&server, &config);
    let mut witness = connect(&server, &config);
    sender.send(b"one\ntwo\nthree\n");
    witness.expect(b"one\ntwo\nthree\n");
    let mut joiner = connect(&server, &config);
    joiner.expect(b"two\nthree\n");
    sender.send(b"live\n");
    joiner.expect(b"live\n");
}

#[test]
fn a_tls_joiner_gets_a_replay_larger_than_its_socket_without_more_traffic() {
    let pki = Pki::new("big-replay");
    let (server, _) = tls_server(&pki, &["--history", "100000", "--history-bytes", "7500000"]);
    let config = pki.client_config(None);
    let mut sender = connect(&server, &config);
    let mut witness = connect(&server, &config);
    let history: Vec<u8> = (0..115)
        .flat_map(|k| format!("{}{k:03}\n", "h".repeat(60_000)).into_bytes())
        .collect();
    sender.send(&history);
    witness.expect(&history);
    // 6.9 MB, more than its socket and the kernel's send buffer take at once: the rest must
    // follow as the joiner reads, with nothing else happening to wake the server.
    let mut joiner =
        TlsClient::connect_with_receive_buffer(server.addr(), Arc::clone(&config), 4096).unwrap();
    joiner.expect(&history);
}

#[test]
fn over_tls_the_servers_own_origin_is_https_and_others_are_refused() {
    let pki = Pki::new("wss-origin");
    let (server, _) = tls_server(&pki, &["--http", "127.0.0.1:0"]);
    let config = pki.client_config(None);
    let port = server.web_addr().port();
    let upgrade = |origin: &str| {
        let mut tls = TlsClient::connect(server.web_addr(), Arc::clone(&config)).unwrap();
        let host = format!("localhost:{port}");
        let request = upgrade_request(&host, &format!("Origin: {origin}\r\n"));
        tls.send(request.as_bytes());
        let head = tls.read_exact(12).expect("an answer");
        String::from_utf8_lossy(&head).into_owned()
    };
    assert_eq!(
        upgrade(&format!("https://localhost:{port}")),
        "HTTP/1.1 101"
    );
    assert_eq!(upgrade(&format!("http://localhost:{port}")), "HTTP/1.1 403");
    assert_eq!(upgrade("https://elsewhere.example"), "HTTP/1.1 403");
}

#[test]
fn a_tls_1_2_client_joins_and_exchanges_lines() {
    let pki = Pki::new("tls12");
    let (server, _) = tls_server(&pki, &[]);
    let modern = pki.client_config(None);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let old = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut tls12 = connect(&server, &old);
    assert_eq!(
        tls12.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut tls13 = connect(&server, &modern);
    tls12.send(b"from 1.2\n");
    tls13.expect(b"from 1.2\n");
    tls13.send(b"from 1.3\n");
    tls12.expect(b"from 1.3\n");
}

#[test]
fn a_full_server_says_so_encrypted_after_the_handshake() {
    let pki = Pki::new("full");
    let (server, _) = tls_server(&pki, &["--max-clients", "1"]);
    let config = pki.client_config(None);
    let _member = connect(&server, &config);
    // The limit is judged once the handshake is done: the refusal is a TLS record.
    let mut refused = TlsClient::connect(server.addr(), Arc::clone(&config)).expect("handshake");
    refused.expect(b"ERR server full (max 1 clients)\n");
}

#[test]
fn handshakes_in_progress_are_capped_by_max_clients_and_one_more_is_closed_at_once() {
    let pki = Pki::new("handshake-cap");
    let (server, _) = tls_server(&pki, &["--max-clients", "2"]);
    // Two connections that never start their handshake hold the two places.
    let silent: Vec<Client> = (0..2).map(|_| Client::connect_raw(server.addr())).collect();
    let mut third = Client::connect_raw(server.addr());
    assert_eq!(third.read_to_eof(), b"", "closed unanswered");
    server.wait_for_log("TLS handshakes in progress already");
    // At once: the two silent ones are still within their 10 s.
    assert!(
        server.log_lines("no TLS handshake within").is_empty(),
        "{}",
        server.log_text()
    );
    drop(silent);
}

/// A server speaking TLS with a certificate from `pki`, plus `extra` flags.
fn tls_line_server(pki: &Pki, extra: &[&str]) -> Server {
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
    let server = tls_line_server(&pki, &[]);
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
fn one_byte_tls_records_are_read_a_bounded_number_a_turn() {
    let pki = Pki::new("records");
    let mut server = tls_line_server(&pki, &["-vv", "--coalesce-us", "0"]);
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
    let mut server = tls_line_server(&pki, &["--max-line", "10"]);
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

#[test]
fn a_request_head_in_one_byte_tls_records_is_read_over_several_turns_and_answered() {
    let pki = Pki::new("head-records");
    let mut server = tls_line_server(&pki, &["--http", "127.0.0.1:0", "-vv"]);
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
fn at_most_eight_handshake_steps_are_taken_a_turn_and_the_rest_follow() {
    let pki = Pki::new("steps");
    let server = tls_line_server(&pki, &["-vv"]);
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

/// A web request's 10 s run from the connect, the TLS handshake included: a client that
/// takes 6 s over its handshake has 4 s left for its request, not 10 more.
#[test]
fn a_web_request_over_tls_has_ten_seconds_from_the_connect_handshake_included() {
    let pki = Pki::new("web-deadline");
    let (server, _) = tls_server(&pki, &["--http", "127.0.0.1:0"]);
    let web = server.web_addr();
    let config = pki.client_config(None);
    let partial_request = |tcp: TcpStream, config| {
        let mut client = TlsClient::handshake(tcp, config).expect("handshake");
        client.send(b"GET / HTTP/1.1\r\nHost: loc");
        let mut buf = [0; 64];
        // A FIN, or the reset-like end rustls reports without close_notify: closed either way.
        while matches!(client.stream.read(&mut buf), Ok(n) if n > 0) {}
        Instant::now()
    };
    let connected = Instant::now();
    let quick_tcp = TcpStream::connect(web).unwrap();
    let slow_tcp = TcpStream::connect(web).unwrap();
    let quick = {
        let config = Arc::clone(&config);
        thread::spawn(move || partial_request(quick_tcp, config))
    };
    let slow = thread::spawn(move || {
        thread::sleep(Duration::from_secs(6)); // the slow client's own pace
        partial_request(slow_tcp, config)
    });
    let (quick, slow) = (quick.join().unwrap(), slow.join().unwrap());
    // Not before the deadline (a lower bound only: load can make it later, never earlier).
    assert!(
        quick.duration_since(connected) >= Duration::from_secs(9),
        "closed too early"
    );
    // Both connected together, so both deadlines fall together (10 s from the connects);
    // a request clock started after the handshake would close the slow one 6 s later.
    assert!(
        slow.saturating_duration_since(quick) < Duration::from_secs(3),
        "the slow client was closed {:?} after the quick one",
        slow.saturating_duration_since(quick)
    );
    server.wait_for_logs("no complete request within 10 s", 2);
}

/// rustls warns about what clients send (here an IP address as SNI, which many clients
/// send when connecting to an IP): noise an operator cannot act on, kept out of the log.
#[test]
fn a_client_that_sends_an_ip_address_as_sni_leaves_no_rustls_warning() {
    let pki = Pki::new("ip-sni");
    let server = tls_line_server(&pki, &[]);
    let mut client = TcpStream::connect(server.addr()).unwrap();
    let local = client.local_addr().unwrap();
    client
        .write_all(&client_hello_with_sni(b"127.0.0.1"))
        .unwrap();
    let mut reply = [0; 1];
    let _ = client.read(&mut reply); // the ServerHello, or the close
    drop(client);
    // Logged after anything rustls said of the hello.
    server.wait_for_log(&format!("handshake with {local} failed"));
    assert_eq!(server.log_lines("SNI"), Vec::<String>::new());
}

/// The lines of the block `<!-- recipe:NAME -->` of docs/operations.md, unindented.
fn recipe(name: &str) -> Vec<String> {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let block = docs
        .split_once(&format!("<!-- recipe:{name} -->\n"))
        .and_then(|(_, rest)| rest.split_once("<!-- end -->"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("a recipe:{name} block in docs/operations.md"));
    block
        .lines()
        .map(|line| line.strip_prefix("    ").unwrap_or(line).to_string())
        .collect()
}

/// Runs a documented server line (its `--addr` on a free port instead) and client line
/// (on that port) in `dir`; the client's line reaches a reader presenting `identity`.
fn serve_and_send_as_documented(dir: &Path, name: &str, identity: Option<&(PathBuf, PathBuf)>) {
    let lines = recipe(name);
    let (server_line, client_line) = (&lines[0], &lines[1]);
    let args: Vec<&str> = server_line
        .split_whitespace()
        .skip(1) // target/release/broadcast-server: the binary under test
        .map(|arg| {
            if arg == "127.0.0.1:8443" {
                "127.0.0.1:0"
            } else {
                arg
            }
        })
        .collect();
    let mut command = Server::command(&args);
    command.current_dir(dir);
    let server = Server::start_command(command);
    server.wait_for_log(&format!("listening on {} (TLS)", server.addr()));
    let config = common::tls::client_config_from(&dir.join("ca.pem"), identity);
    let mut reader = connect(&server, &config);
    let port = server.addr().port().to_string();
    let client_args: Vec<String> = client_line
        .split_whitespace()
        .map(|arg| arg.replace("8443", &port))
        .collect();
    let mut client = Command::new(&client_args[0])
        .args(&client_args[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its stdin stays open (s_client -quiet ignores its end anyway) until it is killed.
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"sent as the docs say\n").unwrap();
    reader.expect(b"sent as the docs say\n");
    let _ = client.kill();
    let _ = client.wait();
}

/// The TLS recipe of docs/operations.md, run as written (openssl), makes files the server
/// takes at once, and the documented clients work with them as written: ncat against the
/// server certificate, openssl s_client with the client certificate under mutual TLS; the
/// log says the listener speaks TLS. A v1 client certificate (the usual mistake) is
/// refused, and the log says what it is.
#[test]
fn the_tls_recipe_in_the_docs_works_as_written() {
    let test = "the_tls_recipe_in_the_docs_works_as_written";
    for program in ["openssl", "ncat"] {
        if Command::new(program).arg("--version").output().is_err() {
            return report_skip(
                test,
                &format!("{program} is not installed (apt-get install {program})"),
            );
        }
    }
    let pki = Pki::new("recipe"); // only for its scratch directory
    let dir = pki.dir.clone();
    let run = |script: &str| {
        let out = Command::new("sh")
            .args(["-e", "-c", script])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&recipe("tls").join("\n"));
    serve_and_send_as_documented(&dir, "tls-clients", None);
    let alice = (dir.join("alice.pem"), dir.join("alice.key"));
    serve_and_send_as_documented(&dir, "mtls-clients", Some(&alice));
    // The same client certificate made without -extfile is X.509 v1; rustls will not even
    // present one, openssl s_client does.
    run("openssl x509 -req -in alice.csr -CA ca.pem -CAkey ca.key -days 825 -out v1.pem");
    let ca = dir.join("ca.pem");
    let files = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let server = Server::start(&[
        "--tls-cert",
        &files("server.pem"),
        "--tls-key",
        &files("server.key"),
        "--tls-client-ca",
        &files("ca.pem"),
    ]);
    let config = common::tls::client_config_from(&ca, Some(&alice));
    let mut a = connect(&server, &config);
    let mut b = connect(&server, &config);
    let port = server.addr().port();
    run(&format!(
        "openssl s_client -connect 127.0.0.1:{port} -CAfile ca.pem -cert v1.pem -key alice.key \
         </dev/null >/dev/null 2>&1 || true"
    ));
    server.wait_for_log("failed: its client certificate is X.509 v1 (made with a plain `openssl x509 -req`?): issue a v3 one (see the mutual TLS recipe in docs/operations.md)");
    a.send(b"still here\n");
    b.expect(b"still here\n");
}

/// RUST_LOG has the last word on rustls's lines too: asked for, they are there.
#[test]
fn rust_log_can_show_rustls_lines_again() {
    let pki = Pki::new("rust-log");
    let identity = pki.issue("server", false);
    let mut command = Server::command(&[
        "--tls-cert",
        identity.0.to_str().unwrap(),
        "--tls-key",
        identity.1.to_str().unwrap(),
    ]);
    command.env("RUST_LOG", "info"); // not naming rustls: the level alone decides
    let server = Server::start_command(command);
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client
        .write_all(&client_hello_with_sni(b"127.0.0.1"))
        .unwrap();
    server.wait_for_log("Illegal SNI extension");
}
