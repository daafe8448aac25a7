//! Throw-away certificates (rcgen) and a rustls client, for the TLS tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::DEADLINE;
use super::certs::Authority;

/// A certificate authority with its own scratch directory for the PEM files it issues.
pub struct Pki {
    pub dir: PathBuf,
    ca: Authority,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "broadcast-server-tls-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let ca = Authority::new(name).expect("a throw-away CA");
        let pki = Pki { dir, ca };
        std::fs::write(pki.ca_path(), pki.ca.pem()).unwrap();
        pki
    }

    /// The CA certificate's PEM file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `localhost` / 127.0.0.1 (server) or a client, written as
    /// `STEM.pem` and `STEM.key`; returns their paths.
    pub fn issue(&self, stem: &str, client: bool) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(client).expect("a throw-away certificate");
        let (cert_path, key_path) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, issued.cert_pem).unwrap();
        std::fs::write(&key_path, issued.key_pem).unwrap();
        (cert_path, key_path)
    }

    /// A client configuration that trusts this CA, presenting `identity` (cert, key paths)
    /// if given.
    pub fn client_config(
        &self,
        identity: Option<&(PathBuf, PathBuf)>,
    ) -> Arc<rustls::ClientConfig> {
        client_config_from(&self.ca_path(), identity)
    }
}

/// A client configuration that trusts the CA in `ca` (a PEM file), presenting `identity`
/// (certificate, key files) if given.
pub fn client_config_from(
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca) {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
    };
    Arc::new(config)
}

/// A server speaking TLS with a certificate from `pki`, plus `extra` flags; with the
/// certificate and key files it was given.
pub fn tls_server(pki: &Pki, extra: &[&str]) -> (super::Server, (PathBuf, PathBuf)) {
    let identity = pki.issue("server", false);
    let mut args = vec![
        "--tls-cert",
        identity.0.to_str().unwrap(),
        "--tls-key",
        identity.1.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (super::Server::start(&args), identity)
}

/// A TLS client that `server` has admitted (its `connected` line logged).
pub fn connect(server: &super::Server, config: &Arc<rustls::ClientConfig>) -> TlsClient {
    let client = TlsClient::connect(server.addr(), Arc::clone(config)).expect("TLS handshake");
    let local = client.stream.sock.local_addr().unwrap();
    server.wait_for_log(&format!("client {local} connected"));
    client
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS client (blocking, with deadlines) to `localhost`.
pub struct TlsClient {
    pub stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects and completes the handshake, or returns why it failed.
    pub fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect_timeout(&addr, DEADLINE)?;
        TlsClient::handshake(tcp, config)
    }

    /// Like `connect`, with a small receive buffer set before connecting (a slow reader's
    /// socket: what the server sends must mostly wait in its own queue).
    pub fn connect_with_receive_buffer(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        bytes: usize,
    ) -> std::io::Result<TlsClient> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_recv_buffer_size(bytes)?;
        socket.connect_timeout(&addr.into(), DEADLINE)?;
        TlsClient::handshake(socket.into(), config)
    }

    /// Runs the TLS handshake over an already connected `tcp`.
    pub fn handshake(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsClient> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(DEADLINE))?;
        let name = ServerName::try_from("localhost").unwrap();
        let connection =
            rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        // TLS 1.3 decides on a client certificate after the client's side is done: a refusal
        // arrives as an alert on the first read, which `read_exact` and `expect` report.
        Ok(TlsClient { stream })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send over TLS");
        self.stream.flush().unwrap();
    }

    pub fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads exactly `expected.len()` bytes and asserts they are `expected`, byte for byte
    /// (shown as text first, for a readable failure).
    pub fn expect(&mut self, expected: &[u8]) {
        let got = self.read_exact(expected.len()).expect("read over TLS");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(got, expected, "bytes differ");
    }
}
