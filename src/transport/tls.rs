//! TLS for every listener: the server's certificate and key (and, for mutual TLS, the CA
//! client certificates must chain to), loaded at start and again on SIGHUP; and the
//! handshakes of new connections, each with a deadline, before they join anything.
//!
//! rustls with the *ring* crypto provider, its safe defaults (TLS 1.2 and 1.3, its default
//! cipher suites). This room knows nothing of lines or the broadcast: a connection leaves it
//! as a [`Transport`] whose handshake is complete, for the loop to admit.

use std::collections::HashMap;
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
use crate::reactor::deadlines::Deadlines;
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
        why: pem_error(&e),
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

/// A PEM error in words (an unreadable file says why, as the OS does).
fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM key in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// A handshake under way, and where the connection goes once it is done.
#[derive(Debug)]
struct Handshake<K> {
    transport: Transport,
    peer: SocketAddr,
    kind: K,
}

/// A connection whose handshake just completed, registered under its token.
#[derive(Debug)]
pub struct Handshaken<K> {
    pub transport: Transport,
    pub peer: SocketAddr,
    /// What the caller said when it started the handshake (e.g. which listener, and the
    /// connection's place in its address's count: dropped with a failed handshake).
    pub kind: K,
}

/// What one step of a handshake came to.
#[derive(Debug)]
pub enum HandshakeStep<K> {
    /// Complete: the connection, registered under its token.
    Complete(Handshaken<K>),
    /// Waiting for the client (or the socket): its next event moves it on.
    Waiting,
    /// The step's work bound was reached with input unread: no event will say so, so the
    /// caller moves it on again in a later turn.
    Unfinished,
    /// Failed (and closed) or not a handshake of ours.
    Gone,
}

/// Connections in their TLS handshake. `K` tells the loop where each goes afterwards.
#[derive(Debug)]
pub struct Handshakes<K> {
    pending: HashMap<Token, Handshake<K>>,
    deadlines: Deadlines,
    failure_log: RateLimit,
}

impl<K> Default for Handshakes<K> {
    fn default() -> Self {
        Handshakes {
            pending: HashMap::new(),
            deadlines: Deadlines::new(HANDSHAKE_TIMEOUT),
            failure_log: RateLimit::with_burst(FAILURES_LOGGED),
        }
    }
}

impl<K> Handshakes<K> {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn contains(&self, token: Token) -> bool {
        self.pending.contains_key(&token)
    }

    /// Starts the handshake of a new connection (already registered READABLE under
    /// `token`); the caller then calls [`Handshakes::on_ready`] for it.
    pub fn start(
        &mut self,
        tcp: TcpStream,
        config: &Arc<ServerConfig>,
        peer: SocketAddr,
        token: Token,
        kind: K,
    ) -> io::Result<()> {
        let tls = rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        let transport = Transport::tls(tcp, tls);
        self.pending.insert(
            token,
            Handshake {
                transport,
                peer,
                kind,
            },
        );
        let pending = &self.pending;
        self.deadlines
            .start(token, Instant::now(), pending.len(), |t| {
                pending.contains_key(&t)
            });
        Ok(())
    }

    /// Moves a handshake on by one step (bounded work); the connection once it is
    /// complete. A failure is logged (with the peer and reason, rate-limited) and the
    /// connection closed.
    pub fn on_ready(&mut self, token: Token, registry: &Registry) -> HandshakeStep<K> {
        let Some(handshake) = self.pending.get_mut(&token) else {
            return HandshakeStep::Gone;
        };
        match handshake.transport.complete_handshake() {
            Ok(HandshakeProgress::Waiting) => {
                if let Err(e) = handshake
                    .transport
                    .update_handshake_interest(registry, token)
                {
                    self.fail(token, &e.to_string(), registry);
                    return HandshakeStep::Gone;
                }
                HandshakeStep::Waiting
            }
            Ok(HandshakeProgress::Unfinished) => HandshakeStep::Unfinished,
            Ok(HandshakeProgress::Complete) => {
                let Some(mut done) = self.pending.remove(&token) else {
                    return HandshakeStep::Gone;
                };
                // Leave a known registration behind (the new owner's first interest update
                // then sets it right): the last handshake step may have left READABLE only
                // while records still wait, and an edge would be lost.
                let both = mio::Interest::READABLE | mio::Interest::WRITABLE;
                if let Err(e) = registry.reregister(done.transport.tcp_mut(), token, both) {
                    info!("tls: {} lost after its handshake: {e}", done.peer);
                    return HandshakeStep::Gone;
                }
                HandshakeStep::Complete(Handshaken {
                    transport: done.transport,
                    peer: done.peer,
                    kind: done.kind,
                })
            }
            Err(e) => {
                let why = match e.kind() {
                    io::ErrorKind::UnexpectedEof => "closed before the handshake ended".into(),
                    _ => e.to_string(),
                };
                self.fail(token, &why, registry);
                HandshakeStep::Gone
            }
        }
    }

    /// Closes handshakes that ran out of time.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        loop {
            let pending = &self.pending;
            let Some(token) = self
                .deadlines
                .next_expired(now, |t| pending.contains_key(&t))
            else {
                break;
            };
            let why = format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
            self.fail(token, &why, registry);
        }
        if let Some(more) = self.failure_log.take_summary(now) {
            info!("tls: {more} more handshakes failed in the last second");
        }
    }

    /// The next deadline, or when the rate-limited log owes a summary.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.deadlines.next(), self.failure_log.summary_due_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Closes every handshake (at shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        for (_, mut handshake) in self.pending.drain() {
            let _ = registry.deregister(handshake.transport.tcp_mut());
        }
        self.deadlines.clear();
    }

    fn fail(&mut self, token: Token, why: &str, registry: &Registry) {
        let Some(mut handshake) = self.pending.remove(&token) else {
            return;
        };
        if self.failure_log.admit(Instant::now()) {
            info!("tls: handshake with {} failed: {why}", handshake.peer);
        }
        let _ = registry.deregister(handshake.transport.tcp_mut());
    }
}

/// The TLS stage: the configuration new connections get (replaced on SIGHUP), the
/// handshakes under way (each carrying `K`: where it goes afterwards), and how many steps
/// this turn may still take.
pub struct TlsStage<K> {
    /// The TLS configuration new connections get, with `--tls-cert`.
    pub config: Option<Arc<ServerConfig>>,
    pub handshakes: Handshakes<K>,
    /// Handshake steps left in this turn.
    pub budget: usize,
    /// Handshakes that wait for the next turn's budget.
    pub deferred: Vec<Token>,
}

/// Most TLS handshake steps per turn: each may cost a signature (tens of microseconds with
/// an ECDSA key, milliseconds with RSA), so a flood of ClientHellos is spread over turns.
const HANDSHAKE_BUDGET: usize = 8;

impl<K> TlsStage<K> {
    /// The stage for `config` (`None`: no `--tls-cert`, every connection is plain).
    pub fn new(config: Option<Arc<ServerConfig>>) -> TlsStage<K> {
        TlsStage {
            config,
            handshakes: Handshakes::default(),
            budget: HANDSHAKE_BUDGET,
            deferred: Vec::new(),
        }
    }

    /// A new turn: a fresh step budget.
    pub fn start_turn(&mut self) {
        self.budget = HANDSHAKE_BUDGET;
    }

    /// When the stage next needs the loop: the nearest handshake deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.handshakes.next_deadline()
    }

    /// Ends the handshakes whose deadline passed.
    pub fn on_tick(&mut self, now: Instant, registry: &Registry) {
        self.handshakes.expire(now, registry);
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
