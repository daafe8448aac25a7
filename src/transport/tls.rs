//! TLS for every listener: the server's certificate and key (and, for mutual TLS, the CA
//! client certificates must chain to), loaded at start and again on SIGHUP; and the
//! handshakes of new connections, each with a deadline, before they join anything.
//!
//! rustls with the *ring* crypto provider, its safe defaults (TLS 1.2 and 1.3, its default
//! cipher suites). This room knows nothing of lines or the broadcast: a connection leaves it
//! as a [`Transport`] whose handshake is complete, for the loop to admit.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info};
use mio::net::TcpStream;
use mio::{Registry, Token};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::observe::log_limit::RateLimit;
use crate::transport::{HandshakeProgress, Transport};

/// How long a new connection has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed handshakes logged one by one each second; more are summed up.
const FAILURES_LOGGED: u64 = 20;

/// Where the certificate, key and client CA come from (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS configuration cannot be loaded; each names the file at fault.
#[derive(Debug)]
pub enum TlsError {
    /// A file is missing, unreadable or not PEM.
    File {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    /// The key does not belong to the certificate, or rustls refuses them.
    Config { why: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::File { what, path, why } => {
                write!(f, "cannot use {what} '{}': {why}", path.display())
            }
            TlsError::Config { why } => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Loads the files and builds the rustls configuration every new connection uses.
pub fn load(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("--tls-cert", &settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| TlsError::File {
        what: "--tls-key",
        path: settings.key.clone(),
        why: key_error(&settings.key, &e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config { why: e.to_string() })?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("--tls-client-ca", path)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    what: "--tls-client-ca",
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config {
                    why: format!("--tls-client-ca '{}': {e}", path.display()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config {
            why: format!(
                "--tls-key '{}' does not fit --tls-cert '{}': {e}",
                settings.key.display(),
                settings.cert.display()
            ),
        })?;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |why: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Why a key file gave no key, in words: an encrypted key is named as such (the server
/// cannot ask for its passphrase), with the command that decrypts it.
fn key_error(path: &Path, error: &rustls::pki_types::pem::Error) -> String {
    let encrypted =
        std::fs::read(path).is_ok_and(|pem| memchr::memmem::find(&pem, b"ENCRYPTED").is_some());
    if encrypted {
        // PKCS#8 (`BEGIN ENCRYPTED PRIVATE KEY`) or the legacy `Proc-Type: 4,ENCRYPTED`.
        let quoted = format!("'{}'", path.display().to_string().replace('\'', "'\\''"));
        return format!(
            "the key is encrypted (a passphrase cannot be given to a server): write it \
             unencrypted with `openssl pkey -in {quoted} -out {quoted}.plain` (or make keys \
             with -nodes / -noenc)"
        );
    }
    pem_error(error)
}

/// A PEM error in words (an unreadable file says why, as the OS does).
fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM key in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// A connection in its TLS handshake, and `K`: where it goes once the handshake is done.
/// It is one entry of the loop's connection map; [`Handshakes`] keeps what all of them
/// share (the failure log); its deadline is the admission's.
#[derive(Debug)]
pub struct Handshake<K> {
    transport: Transport,
    peer: SocketAddr,
    kind: K,
}

/// What one step of a handshake came to.
#[derive(Debug)]
pub enum HandshakeStep {
    /// Complete: the connection is registered READABLE | WRITABLE under its token (its new
    /// owner's first interest update sets it right).
    Complete,
    /// Waiting for the client (or the socket): its next event moves it on.
    Waiting,
    /// The step's work bound was reached with input unread: no event will say so, so the
    /// caller moves it on again in a later turn.
    BudgetSpent,
    /// Failed, for this reason: the caller drops it (and logs it through
    /// [`Handshakes::log_failure`]).
    Failed(String),
}

impl<K> Handshake<K> {
    /// Starts the handshake of a new connection (already registered READABLE); the caller
    /// then takes its first [`step`](Self::step).
    pub fn start(
        tcp: TcpStream,
        config: &Arc<ServerConfig>,
        peer: SocketAddr,
        kind: K,
    ) -> io::Result<Handshake<K>> {
        let tls = rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        Ok(Handshake {
            transport: Transport::tls(tcp, tls),
            peer,
            kind,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Moves the handshake on by one step (bounded work).
    pub fn step(&mut self, token: Token, registry: &Registry) -> HandshakeStep {
        match self.transport.complete_handshake() {
            Ok(HandshakeProgress::Waiting) => {
                match self.transport.update_handshake_interest(registry, token) {
                    Ok(()) => HandshakeStep::Waiting,
                    Err(e) => HandshakeStep::Failed(e.to_string()),
                }
            }
            Ok(HandshakeProgress::BudgetSpent) => HandshakeStep::BudgetSpent,
            Ok(HandshakeProgress::Complete) => {
                // Leave a known registration behind (the new owner's first interest update
                // then sets it right): the last handshake step may have left READABLE only
                // while records still wait, and an edge would be lost.
                let both = mio::Interest::READABLE | mio::Interest::WRITABLE;
                match registry.reregister(self.transport.tcp_mut(), token, both) {
                    Ok(()) => HandshakeStep::Complete,
                    Err(e) => HandshakeStep::Failed(format!("lost after its handshake: {e}")),
                }
            }
            Err(e) => HandshakeStep::Failed(handshake_failure(&e)),
        }
    }

    /// The connection once its handshake is complete: its transport (registered under its
    /// token), its peer, and where it goes.
    pub fn into_parts(self) -> (Transport, SocketAddr, K) {
        (self.transport, self.peer, self.kind)
    }

    /// Removes the socket from the poller (it closes when the handshake is dropped).
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(self.transport.tcp_mut());
    }
}

/// Why a handshake failed, in words an operator can act on: the common mistakes (a
/// plaintext client on the TLS port, a client certificate that is X.509 v1) said plainly,
/// anything else as rustls says it.
fn handshake_failure(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return "closed before the handshake ended".into();
    }
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "it sent something that is not TLS (a plaintext client on the TLS port?)".into()
        }
        Some(e) if e.to_string().contains("UnsupportedCertVersion") => {
            "its client certificate is X.509 v1 (made with a plain `openssl x509 -req`?): \
             issue a v3 one (see the mutual TLS recipe in docs/operations.md)"
                .into()
        }
        _ => error.to_string(),
    }
}

/// What the handshakes under way share: the log of their failures, at most
/// `FAILURES_LOGGED` a second. (Their deadline is the admission's: `HANDSHAKE_TIMEOUT`
/// from the accept.)
#[derive(Debug)]
pub struct Handshakes {
    failure_log: RateLimit,
}

impl Default for Handshakes {
    fn default() -> Self {
        Handshakes {
            failure_log: RateLimit::with_burst(FAILURES_LOGGED),
        }
    }
}

impl Handshakes {
    /// Logs (rate-limited) a handshake with `peer` that failed for `why`.
    pub fn log_failure(&mut self, peer: SocketAddr, why: &str) {
        if self.failure_log.admit(Instant::now()) {
            info!("tls: handshake with {peer} failed: {why}");
        }
    }

    /// Logs (rate-limited) a handshake with `peer` that ran out of time.
    pub fn log_timeout(&mut self, peer: SocketAddr) {
        let why = format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
        self.log_failure(peer, &why);
    }

    /// Logs the summary of failures when it is due.
    pub fn log_summary(&mut self, now: Instant) {
        if let Some(more) = self.failure_log.take_summary(now) {
            info!("tls: {more} more handshakes failed in the last second");
        }
    }

    /// When the rate-limited log owes a summary.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.failure_log.summary_due_at()
    }
}

/// The TLS stage: the configuration new connections get (replaced on SIGHUP), what the
/// handshakes under way share, and how many steps this turn may still take.
pub struct TlsStage {
    /// The TLS configuration new connections get, with `--tls-cert`.
    pub config: Option<Arc<ServerConfig>>,
    pub handshakes: Handshakes,
    /// Handshake steps left in this turn.
    pub budget: usize,
}

/// Most TLS handshake steps per turn: each may cost a signature (tens of microseconds with
/// an ECDSA key, milliseconds with RSA), so a flood of ClientHellos is spread over turns.
const HANDSHAKE_BUDGET: usize = 8;

impl TlsStage {
    /// The stage for `config` (`None`: no `--tls-cert`, every connection is plain).
    pub fn new(config: Option<Arc<ServerConfig>>) -> TlsStage {
        TlsStage {
            config,
            handshakes: Handshakes::default(),
            budget: HANDSHAKE_BUDGET,
        }
    }

    /// A new turn: a fresh step budget.
    pub fn start_turn(&mut self) {
        self.budget = HANDSHAKE_BUDGET;
    }

    /// Takes one step from this turn's budget; false when it is spent.
    pub fn take_step(&mut self) -> bool {
        let granted = self.budget > 0;
        self.budget = self.budget.saturating_sub(1);
        granted
    }

    /// When the stage next needs the loop: the nearest handshake deadline, or a summary.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.handshakes.next_deadline()
    }

    /// Re-reads the certificate, key and client CA (SIGHUP): new connections get them,
    /// existing ones keep theirs. A failure keeps the configuration in force.
    pub fn reload(&mut self, settings: Option<&TlsSettings>) {
        let Some(settings) = settings else {
            info!("received SIGHUP: nothing to reload (no --tls-cert)");
            return;
        };
        match load(settings) {
            Ok(config) => {
                self.config = Some(config);
                info!(
                    "tls: reloaded {} and {} (new connections use them)",
                    settings.cert.display(),
                    settings.key.display()
                );
            }
            Err(e) => error!("tls: reload failed, keeping the configuration in force: {e}"),
        }
    }
}
