//! The front door of the web listener (`--http`): what its exchanges share, the routes
//! (which answer a request gets: the page and its Content-Security-Policy, the metrics,
//! the health check, or an upgrade unless another site's page asks), and when WebSocket
//! clients are next checked for life. The loop carries out what it decides.

use std::time::{Duration, Instant};

use crate::bridge::BridgeCounters;
use crate::observe::logger;
use crate::observe::stats::Stats;
use crate::web::origin::{OriginPolicy, Verdict};
use crate::web::requests::WebRequests;
use crate::web::{metrics, page};
use crate::wire::commands;
use crate::wire::http::{self, Refusal, Request, Route};

/// What the front door decided for a routed request; the loop carries it out.
#[derive(Debug)]
pub enum Decision {
    /// Answer with these bytes (a page, the metrics, the health check), then close.
    Answer(Vec<u8>),
    /// Refuse an upgrade from another site's page with this `403`.
    Foreign(Refusal),
    /// Make the connection a WebSocket member (if the server has room), with this key.
    Upgrade { key: String, room: Option<String> },
    /// `GET /lines`: the connection becomes a reader of the room's lines, its body chunked
    /// (or not: HTTP/1.0).
    Stream { room: Option<String>, chunked: bool },
    /// `GET /events`: the connection becomes a reader of the room's events, resuming after
    /// event `since` if given.
    Events {
        room: Option<String>,
        since: Option<String>,
    },
    /// `POST /lines` whose room is served: the exchange reads its body (then it comes back).
    ReadBody(Request),
    /// `POST /lines` with its body read: its lines are broadcast in the room (all, or none).
    Publish { room: Option<String>, body: Vec<u8> },
    /// A request refused for what it asks (counted and logged as any refusal).
    Refuse(Refusal),
}

/// What a decision needs to know of the rest of the server.
pub struct Context<'a> {
    /// `--echo`: the page says whether a sender sees its own lines.
    pub echo: bool,
    pub stats: &'a Stats,
    /// The NATS bridge's counters, with `--nats`.
    pub nats: Option<&'a BridgeCounters>,
    pub origins: &'a OriginPolicy,
    /// Whether the listener speaks TLS (an `https` page's origin).
    pub tls: bool,
    /// `--rooms`: `/ws/NAME` is served, and the page takes `?room=NAME`.
    pub rooms: bool,
}

/// The web listener's state between turns (see the module header).
pub struct WebFront {
    /// What the web connections that have not become WebSocket clients share (counters,
    /// refusal log); each is an entry of the loop's map, its deadline the admission's.
    pub requests: WebRequests,
    /// The page's Content-Security-Policy (see [`crate::web::page`]).
    pub page_policy: String,
    /// When WebSocket clients are next checked for silence (with `--ws-ping-interval`).
    pub next_liveness_check: Option<Instant>,
}

impl WebFront {
    /// The front door; WebSocket clients are checked every half `ws_ping` (`None`: never).
    pub fn new(ws_ping: Option<Duration>) -> WebFront {
        WebFront {
            requests: WebRequests::default(),
            page_policy: page::content_security_policy(),
            next_liveness_check: ws_ping.map(|every| Instant::now() + every / 2),
        }
    }

    /// When the front door next needs the loop: a request's deadline, a summary of its
    /// refusals, or the next liveness check.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_liveness_check, self.requests.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Logs the summary of refusals that is due.
    pub fn log_summaries(&mut self, now: Instant) {
        self.requests.log_summary(now);
    }

    /// Whether WebSocket clients are due for a liveness check (every half `interval`); if
    /// so, the next one is scheduled.
    pub fn liveness_check_due(&mut self, now: Instant, interval: Duration) -> bool {
        match self.next_liveness_check {
            Some(at) if at <= now => {
                self.next_liveness_check = Some(now + interval / 2);
                true
            }
            _ => false,
        }
    }

    /// The web listener's part of the stats line (only with `--http`).
    pub fn summary(&self, stats: &Stats) -> String {
        let http = self.requests.counters();
        format!(
            "web: websocket={} http_readers={} sse_readers={} protocol_error={} \
             ping_timeout={} foreign_origin={} requests: answered={} refused={} timed_out={}",
            stats.websocket_active,
            stats.http_stream_active,
            stats.sse_active,
            stats.protocol_errors,
            stats.ping_timeouts,
            stats.refused_origin,
            http.answered,
            http.refused,
            http.timed_out
        )
    }

    /// Decides the answer to a routed request: the page (with its policy), the metrics,
    /// the health check, or a WebSocket upgrade unless the page's origin is another
    /// site's (cross-site WebSocket hijacking).
    pub fn decide(&self, request: Request, context: &Context<'_>) -> Decision {
        let ok = |content_type: &str, extra: &[(&str, &str)], body: &[u8]| {
            http::response(http::OK, content_type, extra, body, request.head_only)
        };
        let response = match request.route {
            Route::Page => {
                let page = page::page(context.echo, context.rooms);
                let policy = [("Content-Security-Policy", self.page_policy.as_str())];
                ok("text/html; charset=utf-8", &policy, page.as_bytes())
            }
            Route::Metrics => {
                let text = metrics::render(context.stats, self.requests.counters(), context.nats);
                let content_type = "text/plain; version=0.0.4; charset=utf-8";
                ok(content_type, &[], text.as_bytes())
            }
            Route::Health => ok("text/plain; charset=utf-8", &[], b"ok\n"),
            Route::Publish { ref room, .. } => {
                if let Some(refusal) = check_room(room.as_deref(), context) {
                    return Decision::Refuse(refusal);
                }
                return match request.route {
                    Route::Publish {
                        room,
                        body: Some(body),
                        ..
                    } => Decision::Publish { room, body },
                    _ => Decision::ReadBody(request),
                };
            }
            Route::Events { room, since } => {
                if let Some(refusal) = check_room(room.as_deref(), context) {
                    return Decision::Refuse(refusal);
                }
                if request.head_only {
                    return Decision::Answer(http::EVENTS_HEAD.to_vec());
                }
                return Decision::Events { room, since };
            }
            Route::Lines { room, chunked } => {
                if let Some(refusal) = check_room(room.as_deref(), context) {
                    return Decision::Refuse(refusal);
                }
                if request.head_only {
                    let head = if chunked {
                        http::LINES_HEAD
                    } else {
                        http::LINES_HEAD_HTTP10
                    };
                    return Decision::Answer(head.to_vec());
                }
                return Decision::Stream { room, chunked };
            }
            Route::WebSocket {
                key,
                origin,
                host,
                room,
            } => {
                if let Some(refusal) = check_room(room.as_deref(), context) {
                    return Decision::Refuse(refusal);
                }
                let verdict =
                    context
                        .origins
                        .judge(origin.as_deref(), host.as_deref(), context.tls);
                if verdict != Verdict::Admitted {
                    let origin = origin.as_deref().unwrap_or("");
                    return Decision::Foreign(foreign_origin(origin, verdict));
                }
                return Decision::Upgrade { key, room };
            }
        };
        Decision::Answer(response)
    }
}

/// The refusal of a room named in a path (`/ws/NAME`, `/lines/NAME`, `/events/NAME`), if
/// any: `404` without `--rooms`, `400` for a name that is not one.
fn check_room(room: Option<&str>, context: &Context<'_>) -> Option<Refusal> {
    let name = room?;
    if !context.rooms {
        return Some(http::refusal(
            http::NOT_FOUND,
            "no such page: rooms are off (the server runs without --rooms)",
        ));
    }
    if commands::room_name(name.as_bytes()).is_some() {
        return None;
    }
    let mut refusal = http::refusal(http::BAD_REQUEST, commands::BAD_NAME_REASON);
    refusal.detail = Some(format!("room {}", logger::quote(name, 80)));
    Some(refusal)
}

/// The `403` for an upgrade from another site's page: a fixed body; the origin, escaped,
/// only in the log line (with a hint when its Host could be rebound).
fn foreign_origin(origin: &str, verdict: Verdict) -> Refusal {
    let mut refusal = http::refusal(
        http::FORBIDDEN,
        "this page's origin may not open /ws (see --allow-origin)",
    );
    let quoted = logger::quote(origin, 120);
    refusal.detail = Some(match verdict {
        Verdict::Rebindable => format!(
            "Origin {quoted} (its Host is a DNS name over plain HTTP, which could be \
             rebound; if it is this server's name: --allow-origin {quoted})"
        ),
        _ => format!("Origin {quoted}"),
    });
    refusal
}
