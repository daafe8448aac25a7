//! HTTP/1.1 for the web listener, pure: a request head parsed (`httparse`) into a [`Route`]
//! or a [`Refusal`], and the answers' bytes. The stage that reads requests from sockets is
//! [`crate::web::requests`].

use crate::observe::logger;

/// Largest request head (request line and headers) accepted; larger gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest body `POST /lines` takes (its lines are broadcast all or none).
pub const MAX_POST: usize = 1024 * 1024;
/// What asks a client that sent `Expect: 100-continue` for its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Headers a request may have.
const MAX_HEADERS: usize = 64;

/// An HTTP status this server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16, pub &'static str);

pub const OK: Status = Status(200, "OK");
pub const BAD_REQUEST: Status = Status(400, "Bad Request");
pub const FORBIDDEN: Status = Status(403, "Forbidden");
pub const NOT_FOUND: Status = Status(404, "Not Found");
pub const METHOD_NOT_ALLOWED: Status = Status(405, "Method Not Allowed");
pub const LENGTH_REQUIRED: Status = Status(411, "Length Required");
pub const PAYLOAD_TOO_LARGE: Status = Status(413, "Content Too Large");
pub const UPGRADE_REQUIRED: Status = Status(426, "Upgrade Required");
pub const TOO_MANY_REQUESTS: Status = Status(429, "Too Many Requests");
pub const HEAD_TOO_LARGE: Status = Status(431, "Request Header Fields Too Large");
pub const SERVICE_UNAVAILABLE: Status = Status(503, "Service Unavailable");

/// What a well-formed request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the live page.
    Page,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /healthz`.
    Health,
    /// `GET /ws` with a valid WebSocket upgrade: its `Sec-WebSocket-Key`, and its `Origin`
    /// and `Host` (for the origin check, which the caller makes).
    WebSocket {
        key: String,
        origin: Option<String>,
        host: Option<String>,
        /// `/ws/NAME`: the room to join, for `--rooms` (as asked: the caller checks it).
        room: Option<String>,
    },
    /// `GET /events`: the broadcast as Server-Sent Events; `/events/NAME`: room NAME's (as
    /// asked: the caller checks it). `since`: the id of the last event its reader saw (its
    /// `Last-Event-ID`, else its `?since=`), as sent.
    Events {
        room: Option<String>,
        since: Option<String>,
    },
    /// `GET /lines`: the broadcast as a streamed body; `/lines/NAME`: room NAME's (as
    /// asked: the caller checks it). `chunked` unless the request is HTTP/1.0 (which knows
    /// no chunks: its body ends with the connection).
    Lines { room: Option<String>, chunked: bool },
    /// `POST /lines` (`/lines/NAME`): a body of lines to broadcast, `length` bytes, the
    /// first of them after the head's `head_len` bytes; once the caller has checked the
    /// room, the exchange reads it into `body` (asking for it first if an HTTP/1.1 client
    /// `expect`s a `100 Continue`). `None` until then.
    Publish {
        room: Option<String>,
        length: usize,
        head_len: usize,
        expect_continue: bool,
        body: Option<Vec<u8>>,
    },
}

/// A routed request: what it asks for, and whether the body should be left out (`HEAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    pub head_only: bool,
}

/// Why a request is answered with an error: the one-line reason in its body and log, and
/// what the client asked for, for the log only (an answer never echoes request data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    /// Our words only: no byte of the request.
    pub reason: String,
    /// The request's part at fault, escaped and bounded (`logger::quote`), for the log.
    pub detail: Option<String>,
    /// A `HEAD` request: the answer has no body.
    pub head_only: bool,
}

/// The refusal of a `/ws` request that is not a GET.
const WS_TAKES_GET: &str = "/ws takes GET only";

pub fn refusal(status: Status, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        detail: None,
        head_only: false,
    }
}

/// How much of a request's path or method a log line quotes.
const QUOTED: usize = 120;

/// Parses and routes a request head. `Ok(None)`: incomplete (more bytes needed).
pub fn parse_request(bytes: &[u8]) -> Result<Option<Request>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refusal(
                HEAD_TOO_LARGE,
                format!("over {MAX_HEADERS} headers"),
            ));
        }
        Err(e) => return Err(refusal(BAD_REQUEST, format!("malformed request: {e}"))),
    };
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default();
    // `/ws/NAME` is `/ws` into room NAME, and `/lines/NAME`, `/events/NAME` out of it.
    let (path, room) = ["/ws", "/lines", "/events"]
        .into_iter()
        .find_map(|base| {
            let name = path.strip_prefix(base)?.strip_prefix('/')?;
            Some((base, Some(name)))
        })
        .unwrap_or((path, None));
    let head_only = method == "HEAD";
    let refuse = |status, reason: &str| {
        Err(Refusal {
            status,
            reason: reason.into(),
            detail: Some(format!(
                "{} {}",
                logger::quote(method, QUOTED),
                logger::quote(target, QUOTED)
            )),
            head_only,
        })
    };
    match path {
        "/ws" if method != "GET" => return refuse(METHOD_NOT_ALLOWED, WS_TAKES_GET),
        "/ws" => {}
        "/lines" if method == "POST" => {
            let room = room.map(str::to_string);
            let route = publish_route(&request, room, length)?;
            return Ok(Some(Request { route, head_only }));
        }
        _ if method != "GET" && !head_only => {
            return refuse(
                METHOD_NOT_ALLOWED,
                "only GET and HEAD are served (and POST on /lines)",
            );
        }
        _ => {}
    }
    if length < bytes.len() {
        // A client must wait for our answer (and a WebSocket client for the upgrade)
        // before sending more: bytes after the head have no place here.
        return refuse(BAD_REQUEST, "bytes after the request head");
    }
    let route = match path {
        "/" => Route::Page,
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Health,
        "/ws" => websocket_upgrade(&request, room.map(str::to_string))?,
        "/events" => Route::Events {
            room: room.map(str::to_string),
            since: header_values(&request, "Last-Event-ID")
                .next()
                .or_else(|| query_value(target, "since")),
        },
        "/lines" => Route::Lines {
            room: room.map(str::to_string),
            chunked: request.version != Some(0),
        },
        _ => return refuse(NOT_FOUND, "no such page (try /, /ws, /lines or /events)"),
    };
    Ok(Some(Request { route, head_only }))
}

/// The value of parameter `name` in the query of `target` (`/path?a=1&name=value`), as
/// sent (no percent-decoding: the values asked for here need none).
fn query_value(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1.split('#').next()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

/// The values of every header `name` (any case) of `request`, trimmed, in order.
fn header_values<'a>(
    request: &'a httparse::Request<'_, '_>,
    name: &'a str,
) -> impl Iterator<Item = String> + 'a {
    request
        .headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
}

/// Checks a `POST /lines` head of `head_len` bytes and returns its route: a
/// `Content-Length` is needed (no chunked uploads), at most [`MAX_POST`]. (Bytes after the
/// body are another request, which is not served: every answer closes its connection.)
fn publish_route(
    request: &httparse::Request<'_, '_>,
    room: Option<String>,
    head_len: usize,
) -> Result<Route, Refusal> {
    let header = |name: &str| header_values(request, name).next();
    let length_required = || {
        refusal(
            LENGTH_REQUIRED,
            "POST /lines needs a Content-Length (no chunked uploads): curl --data-binary @FILE",
        )
    };
    if header("Transfer-Encoding").is_some() {
        return Err(length_required());
    }
    // Digits only, and every Content-Length the same (two that differ could be read
    // differently by a proxy in front: request smuggling).
    let lengths: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        .map(|h| h.value.trim_ascii())
        .collect();
    let Some(&first) = lengths.first() else {
        return Err(length_required());
    };
    let digits = |value: &[u8]| !value.is_empty() && value.iter().all(u8::is_ascii_digit);
    if !lengths.iter().all(|&value| digits(value) && value == first) {
        return Err(refusal(
            BAD_REQUEST,
            "a malformed or repeated Content-Length",
        ));
    }
    // Digits that do not fit are certainly too many.
    let length = std::str::from_utf8(first)
        .ok()
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    if length > MAX_POST {
        return Err(refusal(
            PAYLOAD_TOO_LARGE,
            format!("a body over {MAX_POST} bytes: none of it was broadcast"),
        ));
    }
    // HTTP/1.0 knows no `100 Continue`: its client sends the body without waiting.
    let expect_continue = request.version == Some(1)
        && header("Expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    Ok(Route::Publish {
        room,
        length,
        head_len,
        expect_continue,
        body: None,
    })
}

/// Checks a `/ws` request for an RFC 6455 upgrade and returns its route.
fn websocket_upgrade(
    request: &httparse::Request<'_, '_>,
    room: Option<String>,
) -> Result<Route, Refusal> {
    let header = |name: &str| header_values(request, name).collect::<Vec<_>>().join(",");
    let has_token = |value: String, token: &str| {
        value
            .split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    };
    if request.version != Some(1)
        || !has_token(header("Upgrade"), "websocket")
        || !has_token(header("Connection"), "upgrade")
    {
        return Err(refusal(
            UPGRADE_REQUIRED,
            "/ws is a WebSocket endpoint: it needs an HTTP/1.1 upgrade to websocket",
        ));
    }
    if header("Sec-WebSocket-Version") != "13" {
        return Err(refusal(
            UPGRADE_REQUIRED,
            "only WebSocket version 13 is spoken",
        ));
    }
    let key = header("Sec-WebSocket-Key");
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &key);
    if decoded.map(|k| k.len()) != Ok(16) {
        return Err(refusal(
            BAD_REQUEST,
            "missing or malformed Sec-WebSocket-Key",
        ));
    }
    let present = |name: &str| Some(header(name)).filter(|value| !value.is_empty());
    Ok(Route::WebSocket {
        key,
        origin: present("Origin"),
        host: present("Host"),
        room,
    })
}

/// A complete response that closes the connection after it.
pub fn response(
    status: Status,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        status.0,
        status.1,
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// The answer to a refused request: its status, and its reason as a one-line text body.
pub fn refusal_response(refusal: &Refusal) -> Vec<u8> {
    let extra: &[(&str, &str)] = match refusal.status {
        UPGRADE_REQUIRED => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
        METHOD_NOT_ALLOWED if refusal.reason == WS_TAKES_GET => &[("Allow", "GET")],
        METHOD_NOT_ALLOWED => &[("Allow", "GET, HEAD")],
        _ => &[],
    };
    let body = format!(
        "{} {}: {}\n",
        refusal.status.0, refusal.status.1, refusal.reason
    );
    response(
        refusal.status,
        "text/plain; charset=utf-8",
        extra,
        body.as_bytes(),
        refusal.head_only,
    )
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade with `key`.
/// The head of `GET /lines`'s answer: a body of lines, chunked, without end until the
/// server stops (or the reader goes).
pub const LINES_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Transfer-Encoding: chunked\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
    Connection: close\r\n\r\n";

/// The head of `GET /lines`'s answer to an HTTP/1.0 request: the lines as they are, until
/// the connection's end.
pub const LINES_HEAD_HTTP10: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; \
    charset=utf-8\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
    Connection: close\r\n\r\n";

/// The head of `GET /events`'s answer: events until the connection's end (no length, no
/// chunks; `X-Accel-Buffering: no` asks a proxy in front not to hold them back).
pub const EVENTS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
    Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Accel-Buffering: no\r\n\
    Connection: close\r\n\r\n";

pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        crate::wire::websocket::accept_key(key)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                           Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    fn status(request: &str) -> u16 {
        match parse_request(request.as_bytes()) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(refused) => refused.status.0,
        }
    }

    #[test]
    fn routes_and_refusals() {
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Ok(Some(Request {
                route: Route::Metrics,
                head_only: false
            }))
        );
        assert_eq!(
            parse_request(UPGRADE.as_bytes()).unwrap().unwrap().route,
            Route::WebSocket {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                origin: None,
                host: Some("x".into()),
                room: None,
            }
        );
        let into_room = UPGRADE.replacen("GET /ws ", "GET /ws/ops_1-b?x=1 ", 1);
        let Ok(Some(Request {
            route: Route::WebSocket { room, .. },
            ..
        })) = parse_request(into_room.as_bytes())
        else {
            panic!("/ws/NAME is an upgrade");
        };
        assert_eq!(room.as_deref(), Some("ops_1-b"));
        let post = |lengths: &[&str]| {
            let headers: String = lengths
                .iter()
                .map(|l| format!("Content-Length: {l}\r\n"))
                .collect();
            status(&format!("POST /lines HTTP/1.1\r\nHost: x\r\n{headers}\r\n"))
        };
        assert_eq!(post(&["4"]), 200, "a POST head is routed");
        assert_eq!(post(&[]), 411);
        for bad in [
            &["-5"][..],
            &["+4"],
            &["0x4"],
            &["4, 4"],
            &[""],
            &["2", "4"],
        ] {
            assert_eq!(post(bad), 400, "{bad:?}");
        }
        assert_eq!(post(&["4", "4"]), 200, "repeated, but the same");
        assert_eq!(post(&["99999999999999999999999"]), 413);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n"), 0, "incomplete");
        assert_eq!(status("HEAD /healthz HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST / HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("GET /ws HTTP/1.1\r\n\r\n"), 426);
        assert_eq!(status(&UPGRADE.replace("13", "8")), 426);
        assert_eq!(
            status(&UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            400
        );
        assert_eq!(status(&format!("{UPGRADE}early frame")), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"),
            405
        );
        assert_eq!(status("HEAD /ws HTTP/1.1\r\n\r\n"), 405);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status(&many), 431);
        let head_refused = parse_request(b"HEAD /nope HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(
            refusal_response(&head_refused).ends_with(b"\r\n\r\n"),
            "no body"
        );
        let ws_post = parse_request(b"POST /ws HTTP/1.1\r\n\r\n").unwrap_err();
        let answer = String::from_utf8(refusal_response(&ws_post)).unwrap();
        assert!(answer.contains("Allow: GET\r\n"), "{answer}");
    }

    #[test]
    fn responses_close_and_head_leaves_the_body_out() {
        let full = String::from_utf8(response(OK, "text/plain", &[], b"ok\n", false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 3\r\n") && full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\nok\n"));
        let head = response(OK, "text/plain", &[], b"ok\n", true);
        assert!(head.ends_with(b"\r\n\r\n"));
        let upgrade = String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(upgrade.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }
}
