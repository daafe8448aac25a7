//! The NATS client protocol, as much of it as the bridge speaks: the server's `INFO`,
//! `MSG`, `PING`, `PONG`, `+OK` and `-ERR`; our `CONNECT`, `SUB`, `PUB`, `PING` and `PONG`.
//! Pure: bytes in, operations out, no socket.
//!
//! The bridge connects with `headers: false`, so nats-server strips any headers a publisher
//! sends before they reach us (it delivers `MSG`, never `HMSG`): no header a stranger
//! publishes can break our connection. An `HMSG` is still understood (its headers skipped),
//! should a server send one. Every length is bounded before anything is buffered.

use std::fmt;
use std::fmt::Write as _;

use bytes::{Buf, Bytes, BytesMut};

/// Longest control line accepted: an `INFO` of a large cluster lists many URLs.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;
/// nats-server's default max payload, until its `INFO` says otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// The most any server may claim as its max payload (nats-server's own ceiling): a lying
/// server cannot make us buffer more for one message.
pub const MAX_PAYLOAD_CEILING: usize = 64 * 1024 * 1024;

/// One operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(ServerInfo),
    /// A message on one of our subscriptions: its subject (which names the room, with
    /// `--rooms`) and its payload.
    Msg {
        subject: Bytes,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    /// The server's complaint, quoted as it sent it (bounded by the control line).
    Err(String),
}

/// What an `INFO` tells a client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// Largest payload the server accepts.
    pub max_payload: usize,
    /// Other servers of the cluster (`host:port`), for fail-over.
    pub connect_urls: Vec<String>,
    /// The server wants TLS.
    pub tls_required: bool,
}

/// Why the server's bytes cannot be understood: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    ControlLineTooLong,
    PayloadTooLarge(usize),
    Malformed(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ControlLineTooLong => {
                write!(f, "a control line over {MAX_CONTROL_LINE} bytes")
            }
            ProtocolError::PayloadTooLarge(n) => write!(f, "a message of {n} bytes"),
            ProtocolError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Takes the next whole operation off the front of `buf`, if there is one. A `MSG` larger
/// than `max_payload` is an error before its bytes are awaited.
pub fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Option<ServerOp>, ProtocolError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtocolError::ControlLineTooLong);
        }
        return Ok(None);
    };
    if end > MAX_CONTROL_LINE {
        return Err(ProtocolError::ControlLineTooLong);
    }
    let line = &buf[..end];
    let (op, args) = match memchr::memchr2(b' ', b'\t', line) {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = op.to_ascii_uppercase();
    let simple = match op.as_slice() {
        b"PING" => Some(ServerOp::Ping),
        b"PONG" => Some(ServerOp::Pong),
        b"+OK" => Some(ServerOp::Ok),
        b"-ERR" => Some(ServerOp::Err(
            String::from_utf8_lossy(args)
                .trim()
                .trim_matches('\'')
                .to_string(),
        )),
        b"INFO" => Some(ServerOp::Info(parse_info(args)?)),
        _ => None,
    };
    if let Some(op) = simple {
        buf.advance(end + 2);
        return Ok(Some(op));
    }
    let with_headers = match op.as_slice() {
        b"MSG" => false,
        b"HMSG" => true,
        _ => return Err(ProtocolError::Malformed("operation")),
    };
    let (header_len, total_len) = message_lengths(args, with_headers)?;
    // Where the subject (the first argument) lies in the control line: kept as a slice of
    // the read buffer, no copy.
    let args_at = line.len() - args.len();
    let skip = args
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let length = args[skip..]
        .iter()
        .take_while(|&&b| b != b' ' && b != b'\t')
        .count();
    let subject = (args_at + skip)..(args_at + skip + length);
    if total_len > max_payload.min(MAX_PAYLOAD_CEILING) {
        return Err(ProtocolError::PayloadTooLarge(total_len));
    }
    // Both lengths are bounded above, so this cannot overflow.
    let frame_len = end + 2 + total_len + 2;
    if buf.len() < frame_len {
        buf.reserve(frame_len - buf.len());
        return Ok(None);
    }
    if &buf[frame_len - 2..frame_len] != b"\r\n" {
        return Err(ProtocolError::Malformed("message end"));
    }
    let head = buf.split_to(end + 2 + header_len).freeze();
    let payload = buf.split_to(total_len - header_len).freeze();
    buf.advance(2);
    let subject = head.slice(subject);
    Ok(Some(ServerOp::Msg { subject, payload }))
}

/// The header and total lengths of `MSG <subject> <sid> [reply] <bytes>` or
/// `HMSG <subject> <sid> [reply] <header bytes> <total bytes>`.
fn message_lengths(args: &[u8], with_headers: bool) -> Result<(usize, usize), ProtocolError> {
    let fields: Vec<&[u8]> = args
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|f| !f.is_empty())
        .collect();
    let number = |field: &[u8]| -> Result<usize, ProtocolError> {
        std::str::from_utf8(field)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ProtocolError::Malformed("message length"))
    };
    let expected = if with_headers { [4, 5] } else { [3, 4] };
    if !expected.contains(&fields.len()) {
        return Err(ProtocolError::Malformed("message arguments"));
    }
    let total = number(fields[fields.len() - 1])?;
    let header = if with_headers {
        number(fields[fields.len() - 2])?
    } else {
        0
    };
    if header > total {
        return Err(ProtocolError::Malformed("message header length"));
    }
    Ok((header, total))
}

/// The fields of `INFO {json}` the bridge uses.
fn parse_info(json: &[u8]) -> Result<ServerInfo, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| ProtocolError::Malformed("INFO"))?;
    let max_payload = value
        .get("max_payload")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_MAX_PAYLOAD)
        .clamp(1, MAX_PAYLOAD_CEILING);
    let connect_urls = value
        .get("connect_urls")
        .and_then(serde_json::Value::as_array)
        .map(|urls| {
            urls.iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let tls_required = value
        .get("tls_required")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    Ok(ServerInfo {
        max_payload,
        connect_urls,
        tls_required,
    })
}

/// How the bridge introduces itself.
#[derive(Debug, Clone, Default)]
pub struct Connect<'a> {
    pub name: &'a str,
    pub user: Option<&'a str>,
    pub pass: Option<&'a str>,
    pub token: Option<&'a str>,
    pub tls_required: bool,
}

/// `CONNECT` (no echo of our own messages, no headers: the server strips foreign ones),
/// then `SUB subject N` for each of `subjects` (numbered from 1), then a `PING` whose
/// `PONG` says all were accepted.
pub fn connect_and_subscribe(connect: &Connect<'_>, subjects: &[String]) -> Vec<u8> {
    let mut options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": connect.tls_required,
        "name": connect.name,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": false,
        "headers": false,
        "no_responders": false,
    });
    let credentials = [
        ("user", connect.user),
        ("pass", connect.pass),
        ("auth_token", connect.token),
    ];
    for (key, value) in credentials {
        if let Some(value) = value {
            options[key] = serde_json::Value::from(value);
        }
    }
    let mut out = format!("CONNECT {options}\r\n");
    for (sid, subject) in subjects.iter().enumerate() {
        let _ = write!(out, "SUB {subject} {}\r\n", sid + 1);
    }
    out.push_str("PING\r\n");
    out.into_bytes()
}

/// `PUB subject <len>`: the line before a payload of `len` bytes (then `\r\n`).
pub fn publish_line_into(out: &mut Vec<u8>, subject: &str, len: usize) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "PUB {subject} {len}\r\n");
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<ServerOp>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = decode(&mut buf, 1024)? {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(ops)
    }

    fn msg(subject: &str, payload: &[u8]) -> ServerOp {
        ServerOp::Msg {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn server_operations_decode() {
        let ops = all(
            b"INFO {\"max_payload\":2048,\"connect_urls\":[\"127.0.0.1:4223\"]}\r\n\
              PING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\n\
              MSG s 1 6\r\nhello\n\r\nMSG s 1 reply 0\r\n\r\n\
              HMSG s.x 2 12 15\r\nNATS/1.0\r\n\r\nhi\n\r\n",
        )
        .unwrap();
        assert_eq!(
            ops,
            [
                ServerOp::Info(ServerInfo {
                    max_payload: 2048,
                    connect_urls: vec!["127.0.0.1:4223".into()],
                    tls_required: false
                }),
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Authorization Violation".into()),
                msg("s", b"hello\n"),
                msg("s", b""),
                msg("s.x", b"hi\n"),
            ]
        );
    }

    #[test]
    fn a_server_cannot_claim_a_max_payload_past_the_ceiling() {
        let mut buf = BytesMut::from(&b"INFO {\"max_payload\":18446744073709551615}\r\n"[..]);
        let Ok(Some(ServerOp::Info(info))) = decode(&mut buf, 1024) else {
            panic!("no INFO");
        };
        assert_eq!(info.max_payload, MAX_PAYLOAD_CEILING);
        let mut buf = BytesMut::from(&b"MSG s 1 18446744073709551614\r\n"[..]);
        assert!(
            decode(&mut buf, usize::MAX).is_err(),
            "a length near usize::MAX"
        );
    }

    #[test]
    fn bad_input_is_an_error_before_it_is_buffered() {
        assert_eq!(
            all(b"MSG s 1 999999\r\n"),
            Err(ProtocolError::PayloadTooLarge(999_999))
        );
        assert_eq!(
            all(b"HMSG s 1 20 10\r\n"),
            Err(ProtocolError::Malformed("message header length"))
        );
        assert_eq!(
            all(b"MSG s 1 2\r\nabcd\r\n"),
            Err(ProtocolError::Malformed("message end"))
        );
        assert_eq!(
            all(b"BOGUS\r\n"),
            Err(ProtocolError::Malformed("operation"))
        );
        let mut long = BytesMut::from(&vec![b'I'; MAX_CONTROL_LINE + 1][..]);
        assert_eq!(
            decode(&mut long, 1024),
            Err(ProtocolError::ControlLineTooLong)
        );
    }

    #[test]
    fn connect_escapes_credentials_and_turns_headers_and_echo_off() {
        let connect = Connect {
            name: "b",
            user: Some("u\"ser"),
            pass: Some("p"),
            ..Connect::default()
        };
        let subjects = ["subj".to_string(), "subj.*".to_string()];
        let text = String::from_utf8(connect_and_subscribe(&connect, &subjects)).unwrap();
        let json = text
            .strip_prefix("CONNECT ")
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(value["user"], "u\"ser");
        assert_eq!(value["headers"], false);
        assert_eq!(value["echo"], false);
        assert!(value.get("auth_token").is_none());
        assert!(text.ends_with("\r\nSUB subj 1\r\nSUB subj.* 2\r\nPING\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn operations_split_anywhere_decode_the_same(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..8),
            cut in 0usize..400,
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                wire.extend_from_slice(format!("MSG s 1 {}\r\n", p.len()).as_bytes());
                wire.extend_from_slice(p);
                wire.extend_from_slice(b"\r\nPING\r\n");
            }
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(op) = decode(&mut buf, 1024).unwrap() {
                got.push(op);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(op) = decode(&mut buf, 1024).unwrap() {
                got.push(op);
            }
            let expected: Vec<ServerOp> = payloads
                .iter()
                .flat_map(|p| [msg("s", p), ServerOp::Ping])
                .collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
