//! One connection to a NATS server, on the bridge thread's tokio runtime: the server's
//! address as given in `--nats`, the TCP (and, for `tls://` or a server that requires it,
//! TLS) connection, the introduction (`CONNECT`, `SUB`, `PING` answered by `PONG`), and
//! afterwards reading operations and writing what is queued.
//!
//! A NATS core client of our own rather than `async-nats`: that client always declares
//! header support and drops its connection on any header it cannot parse, so one stranger
//! publishing a malformed header on the subject kept every instance reconnecting. This
//! one declares `headers: false`, and nats-server strips headers before they reach it.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::protocol::{
    self, Connect, DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_CEILING, ServerInfo, ServerOp,
};
use crate::wire::host_port::{self, HostPortError};

/// How long connecting, and the introduction, may take before the next server is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages kept that arrive while the introduction is answered.
const MAX_EARLY: usize = 32;
/// NATS's default client port.
const DEFAULT_PORT: u16 = 4222;

/// A NATS server's address: `nats://HOST[:PORT]` or `tls://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Credentials taken out of a `--nats` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    UserPassword(String, String),
    Token(String),
}

impl ServerUrl {
    /// Parses `[nats|tls]://[USER:PASS@|TOKEN@]HOST[:PORT]` (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<(ServerUrl, Option<Credentials>), String> {
        let bad =
            |why: &str| format!("'{url}' is not a NATS URL ({why}); try nats://127.0.0.1:4222");
        let (tls, rest) = match url.split_once("://") {
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some((scheme, _)) => return Err(bad(&format!("scheme {scheme}: use nats or tls"))),
            None => (false, url),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((given, hostport)) => {
                let credentials = match given.split_once(':') {
                    Some((user, pass)) => Credentials::UserPassword(user.into(), pass.into()),
                    None => Credentials::Token(given.into()),
                };
                (Some(credentials), hostport)
            }
            None => (None, rest),
        };
        if !hostport.is_empty() && hostport.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a port without a host"));
        }
        let parsed = host_port::parse(hostport).map_err(|e| match e {
            HostPortError::UnclosedBracket => bad("an unclosed ["),
            HostPortError::PortNotANumber => bad("the port is not a number"),
            HostPortError::PortZero | HostPortError::BadHost => bad("no usable host and port"),
        })?;
        let (host, port) = (parsed.host, parsed.port.unwrap_or(DEFAULT_PORT));
        let server = ServerUrl {
            tls,
            host: host.to_string(),
            port,
        };
        Ok((server, credentials))
    }

    /// A server the cluster told us of (`host:port`), reached the way we reached this one.
    pub fn discovered(&self, hostport: &str) -> Option<ServerUrl> {
        let scheme = if self.tls { "tls://" } else { "nats://" };
        ServerUrl::parse(&format!("{scheme}{hostport}"))
            .ok()
            .map(|(url, _)| url)
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Bytes both ways, in the clear or through TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// An open, subscribed connection to one NATS server.
pub struct Connection {
    pub reader: ReadHalf<Box<dyn Io>>,
    pub writer: WriteHalf<Box<dyn Io>>,
    /// Bytes read and not yet decoded.
    pub input: BytesMut,
    /// What the server said of itself (its max payload, the cluster's other servers).
    pub info: ServerInfo,
    /// Messages that came before the introduction was answered, and how many more did.
    pub early: Vec<(bytes::Bytes, bytes::Bytes)>,
    pub dropped_early: usize,
}

impl Connection {
    /// Connects to `server`, introduces itself and subscribes to `subjects`; done once the
    /// server answered the introduction's `PING`. A `-ERR` (bad credentials) is an error.
    pub async fn open(
        server: &ServerUrl,
        credentials: Option<&Credentials>,
        subjects: &[String],
    ) -> io::Result<Connection> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::introduce(server, credentials, subjects),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer within 2 s"))?
    }

    async fn introduce(
        server: &ServerUrl,
        credentials: Option<&Credentials>,
        subjects: &[String],
    ) -> io::Result<Connection> {
        let tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Io> = Box::new(tcp);
        let mut input = BytesMut::with_capacity(4096);
        let info = match read_op(&mut stream, &mut input).await? {
            ServerOp::Info(info) => info,
            _ => return Err(invalid("the server did not start with INFO")),
        };
        let tls = server.tls || info.tls_required;
        if tls {
            if !input.is_empty() {
                return Err(invalid("bytes before the TLS handshake"));
            }
            stream = upgrade_to_tls(stream, &server.host).await?;
        }
        let (user, pass, token) = match credentials {
            Some(Credentials::UserPassword(user, pass)) => {
                (Some(user.as_str()), Some(pass.as_str()), None)
            }
            Some(Credentials::Token(token)) => (None, None, Some(token.as_str())),
            None => (None, None, None),
        };
        let connect = Connect {
            name: "broadcast-server",
            user,
            pass,
            token,
            tls_required: tls,
        };
        stream
            .write_all(&protocol::connect_and_subscribe(&connect, subjects))
            .await?;
        let mut early = Vec::new();
        let mut dropped_early = 0;
        loop {
            match read_op(&mut stream, &mut input).await? {
                ServerOp::Pong => break,
                // Messages between our SUB and the PONG: kept (a few) for the caller.
                ServerOp::Msg { subject, payload } if early.len() < MAX_EARLY => {
                    early.push((subject, payload))
                }
                ServerOp::Msg { .. } => dropped_early += 1,
                ServerOp::Err(why) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("the server refused us: {why}"),
                    ));
                }
                ServerOp::Ping => stream.write_all(protocol::PONG).await?,
                ServerOp::Ok | ServerOp::Info(_) => {}
            }
        }
        let (reader, writer) = tokio::io::split(stream);
        Ok(Connection {
            reader,
            writer,
            input,
            info,
            early,
            dropped_early,
        })
    }

    /// The next whole operation already read, if any.
    pub fn decode(&mut self) -> io::Result<Option<ServerOp>> {
        let limit = self
            .info
            .max_payload
            .clamp(DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_CEILING);
        protocol::decode(&mut self.input, limit).map_err(invalid)
    }
}

/// Reads until one whole operation is there.
async fn read_op(stream: &mut Box<dyn Io>, input: &mut BytesMut) -> io::Result<ServerOp> {
    loop {
        if let Some(op) = protocol::decode(input, DEFAULT_MAX_PAYLOAD).map_err(invalid)? {
            return Ok(op);
        }
        if stream.read_buf(input).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn invalid(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// TLS to the server, verified against the system's roots (rustls with *ring*).
async fn upgrade_to_tls(stream: Box<dyn Io>, host: &str) -> io::Result<Box<dyn Io>> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(invalid)?;
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    Ok(Box::new(connector.connect(name, stream).await?))
}

/// The TLS client configuration, built once.
fn tls_config() -> io::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert); // one unusable system certificate spoils nothing
            }
            if roots.is_empty() {
                return Err("no usable system root certificates for tls:// URLs".into());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_servers_and_credentials() {
        let parse = |url| ServerUrl::parse(url);
        assert_eq!(
            parse("nats://127.0.0.1:4222"),
            Ok((
                ServerUrl {
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 4222
                },
                None
            ))
        );
        assert_eq!(
            parse("nats://u:pw@127.0.0.2:4223").unwrap().1,
            Some(Credentials::UserPassword("u".into(), "pw".into()))
        );
        assert_eq!(
            parse("nats://s3cret@127.0.0.1").unwrap(),
            (
                ServerUrl {
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 4222
                },
                Some(Credentials::Token("s3cret".into()))
            )
        );
        let (v6, _) = parse("tls://[::1]:4222/").unwrap();
        assert_eq!(v6.to_string(), "tls://[::1]:4222");
        assert!(v6.tls);
        for bad in [
            "",
            "nats://host:notaport",
            "ws://h:1",
            "nats://[::1",
            "nats://:4222",
            "nats://h o:1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let seed = parse("tls://a:1").unwrap().0;
        assert_eq!(
            seed.discovered("10.1.2.3:4223").unwrap().to_string(),
            "tls://10.1.2.3:4223"
        );
    }
}
