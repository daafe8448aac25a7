//! The TLS client side the generator needs (rustls, *ring* provider): a throw-away
//! certificate authority and server certificate (rcgen), the handshake, and non-blocking
//! sessions driven by the generator's own loop.
//!
//! A TLS reader's bytes are read as a TCP reader's are (one `recvmsg` into a large buffer,
//! with the kernel's arrival time), then handed to its `ClientConnection` with `read_tls`
//! from that buffer, `process_new_packets` and `reader`, until the buffer is used up: the
//! plaintext goes to the same line checks as a TCP reader's bytes. A line that ends in a
//! record split across reads is complete only in the read that brings the record's last
//! byte, so, as for TCP and WebSocket readers, a line counts in the read that completes it,
//! at that read's arrival time. A TLS sender's lines go through `writer` and `write_tls`,
//! rustls holding at most its buffer limit (64 KiB) of records: the rest waits in the
//! sender's own backlog, where the generator sees a server that stops reading.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::certs::Authority;
use crate::target::{Scratch, TlsFiles};

/// The name the server certificate is issued for, and the one the clients ask for.
const SERVER_NAME: &str = crate::certs::NAMES[0];
/// How long a handshake may take before the connection counts as refused.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// A throw-away certificate authority and the server certificate it issued for
/// `localhost` and 127.0.0.1, written as PEM files into a scratch directory (removed on
/// drop); and a client configuration that trusts that authority and nothing else.
pub struct Pki {
    /// The server's certificate and key files.
    pub files: TlsFiles,
    /// What every TLS client of the swarm connects with.
    pub client: Arc<ClientConfig>,
    /// The server certificate and key, for the self-check's in-memory server.
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// Declared last: dropped once nothing refers to its files.
    _scratch: Scratch,
}

impl Pki {
    /// Generates the authority and the server certificate (ECDSA P-256, rcgen's default)
    /// into a fresh scratch directory named after `scenario`.
    pub fn new(scenario: &str) -> Result<Pki, String> {
        let ca = Authority::new("fanout bench")?;
        let server = ca.issue(false)?;
        let scratch = Scratch::new(scenario)?;
        let files = TlsFiles {
            cert: scratch.0.join("server.pem"),
            key: scratch.0.join("server.key"),
        };
        write_file(&files.cert, &server.cert_pem)?;
        write_file(&files.key, &server.key_pem)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.der())
            .map_err(|e| format!("rustls refuses the CA: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("rustls client configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Pki {
            files,
            client: Arc::new(client),
            cert: server.cert_der,
            key: PrivatePkcs8KeyDer::from(server.key_der),
            _scratch: scratch,
        })
    }

    /// A server configuration with the same certificate, for the self-check.
    fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder.with_no_client_auth().with_single_cert(
                    vec![self.cert.clone()],
                    PrivateKeyDer::Pkcs8(self.key.clone_key()),
                )
            })
            .map_err(|e| format!("rustls server configuration: {e}"))?;
        Ok(Arc::new(config))
    }
}

/// The *ring* crypto provider, as the server uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn write_file(path: &PathBuf, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Completes a TLS handshake on the blocking `stream` (at most `HANDSHAKE_TIMEOUT` per
/// read); returns the session, ready for the generator's loop once the socket is made
/// non-blocking.
pub fn handshake(
    stream: &mut TcpStream,
    config: &Arc<ClientConfig>,
) -> Result<ClientConnection, String> {
    let fail = |e: io::Error| format!("TLS handshake failed: {e}");
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let mut connection =
        ClientConnection::new(Arc::clone(config), name).map_err(|e| format!("rustls: {e}"))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(fail)?;
    while connection.is_handshaking() {
        connection.complete_io(stream).map_err(fail)?;
    }
    // The client's Finished, if complete_io left it queued.
    while connection.wants_write() {
        connection.write_tls(stream).map_err(fail)?;
    }
    stream.set_read_timeout(None).map_err(fail)?;
    Ok(connection)
}

/// The protocol version and cipher suite a session negotiated, e.g.
/// "TLSv1_3 TLS13_AES_256_GCM_SHA384".
pub fn describe(connection: &ClientConnection) -> String {
    let version = connection
        .protocol_version()
        .map_or("no version".to_string(), |v| format!("{v:?}"));
    let suite = connection
        .negotiated_cipher_suite()
        .map_or("no suite".to_string(), |s| format!("{:?}", s.suite()));
    format!("{version} {suite}")
}

/// What one call to [`decrypt`] found besides the lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decrypted {
    /// Plaintext bytes appended.
    pub plaintext: usize,
    /// 1 if the session failed (a record that does not decrypt, an alert, anything rustls
    /// refuses): nothing after it can be read, so its lines count as lost too.
    pub malformed: u64,
    /// The server ended the session (close_notify) or it failed.
    pub closed: bool,
}

/// Feeds the records in `input` (as read from the socket) to `connection` and appends the
/// plaintext they carry to `lines`, draining rustls after every `read_tls` so it never
/// holds more than one read's worth. Stops at the server's close_notify or a failure.
pub fn decrypt(
    connection: &mut ClientConnection,
    mut input: &[u8],
    lines: &mut Vec<u8>,
) -> Decrypted {
    let mut found = Decrypted::default();
    while !input.is_empty() {
        match connection.read_tls(&mut input) {
            Ok(0) => {
                // Nothing is taken after a close_notify.
                found.closed = true;
                break;
            }
            Ok(_) => {}
            Err(_) => {
                found.closed = true;
                found.malformed += 1;
                break;
            }
        }
        let state = match connection.process_new_packets() {
            Ok(state) => state,
            Err(_) => {
                found.closed = true;
                found.malformed += 1;
                break;
            }
        };
        let waiting = state.plaintext_bytes_to_read();
        let closed = state.peer_has_closed();
        if waiting > 0 {
            let start = lines.len();
            lines.resize(start + waiting, 0);
            if connection.reader().read_exact(&mut lines[start..]).is_err() {
                lines.truncate(start);
                found.closed = true;
                found.malformed += 1;
                break;
            }
            found.plaintext += waiting;
        }
        if closed {
            found.closed = true;
            break;
        }
    }
    found
}

/// Hands `plaintext` to the sender's session and its records to `stream`, as far as the
/// socket takes them: records first, then more plaintext, while rustls has room (its
/// buffer limit). Returns how many plaintext bytes rustls took; records it could not send
/// yet stay in it for the next call.
pub fn send(
    connection: &mut ClientConnection,
    stream: &mut impl Write,
    plaintext: &[u8],
) -> io::Result<usize> {
    let mut taken = 0;
    loop {
        while connection.wants_write() {
            match connection.write_tls(stream) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(taken),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if taken == plaintext.len() {
            return Ok(taken);
        }
        let n = connection.writer().write(&plaintext[taken..])?;
        if n == 0 {
            return Ok(taken);
        }
        taken += n;
    }
}

/// Sends what rustls holds for `connection` (e.g. its answer to a key update), best effort:
/// a reader writes nothing else, so its socket has room for it.
pub fn flush(connection: &mut ClientConnection, stream: &mut impl Write) {
    while connection.wants_write() {
        if connection.write_tls(stream).is_err() {
            return;
        }
    }
}

/// Moves bytes between an in-memory client and server until neither has more to say.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("in-memory handshake: {e}");
    for _ in 0..20 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).map_err(|e| fail(&e))?;
        }
        let mut from_client = &wire[..];
        while !from_client.is_empty() {
            server.read_tls(&mut from_client).map_err(|e| fail(&e))?;
            server.process_new_packets().map_err(|e| fail(&e))?;
        }
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).map_err(|e| fail(&e))?;
        }
        let mut from_server = &wire[..];
        while !from_server.is_empty() {
            client.read_tls(&mut from_server).map_err(|e| fail(&e))?;
            client.process_new_packets().map_err(|e| fail(&e))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
    }
    Err("in-memory handshake did not finish".into())
}

/// Records an in-memory server sends after the handshake: lines in records of several
/// sizes (one larger than a TLS record), then a close_notify; and the plaintext they carry.
fn server_records(server: &mut ServerConnection) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut plaintext = Vec::new();
    for (i, len) in [1, 64, 640, 20_000, 3].into_iter().enumerate() {
        let mut chunk: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        chunk.push(b'\n');
        server
            .writer()
            .write_all(&chunk)
            .map_err(|e| format!("in-memory server: {e}"))?;
        plaintext.extend_from_slice(&chunk);
    }
    server.send_close_notify();
    let mut wire = Vec::new();
    while server.wants_write() {
        server
            .write_tls(&mut wire)
            .map_err(|e| format!("in-memory server: {e}"))?;
    }
    Ok((wire, plaintext))
}

/// Decrypts a run of records from an in-memory rustls server cut into reads of several
/// sizes (1 byte, sizes that split headers and records, all of it), then a corrupted run,
/// and checks the plaintext, the close and the fault; like [`crate::line::self_check`], run
/// at every start because benches compile no tests.
pub fn self_check() -> Result<(), String> {
    let pki = Pki::new("tls-self-check")?;
    let server_config = pki.server_config()?;
    let session = || -> Result<(ClientConnection, Vec<u8>, Vec<u8>), String> {
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
        let mut client =
            ClientConnection::new(Arc::clone(&pki.client), name).map_err(|e| e.to_string())?;
        let mut server =
            ServerConnection::new(Arc::clone(&server_config)).map_err(|e| e.to_string())?;
        pump(&mut client, &mut server)?;
        let (wire, plaintext) = server_records(&mut server)?;
        Ok((client, wire, plaintext))
    };
    for read_len in [1, 2, 5, 7, 100, 4_095, 4_097, 16_389, usize::MAX] {
        let (mut client, wire, want) = session()?;
        let mut lines = Vec::new();
        let mut found = Decrypted::default();
        for read in wire.chunks(read_len.min(wire.len())) {
            let decrypted = decrypt(&mut client, read, &mut lines);
            found.plaintext += decrypted.plaintext;
            found.malformed += decrypted.malformed;
            if decrypted.closed {
                found.closed = true;
                break;
            }
        }
        let expected = Decrypted {
            plaintext: want.len(),
            malformed: 0,
            closed: true,
        };
        if lines != want || found != expected {
            return Err(format!(
                "tls: reads of {read_len} bytes: {} plaintext bytes (want {}), {found:?} \
                 (want {expected:?})",
                lines.len(),
                want.len()
            ));
        }
    }
    let (mut client, mut wire, _) = session()?;
    let middle = wire.len() / 2;
    wire[middle] ^= 0x40;
    let found = decrypt(&mut client, &wire, &mut Vec::new());
    if !found.closed || found.malformed != 1 {
        return Err(format!(
            "tls: a corrupted record gave {found:?}, want closed and 1 malformed"
        ));
    }
    Ok(())
}
