//! The front door of the web listener (`--http`): connections in their HTTP stage, the
//! page's Content-Security-Policy, and when WebSocket clients are next checked for life.

use std::time::{Duration, Instant};

use crate::observe::stats::Stats;
use crate::web::page;
use crate::web::requests::WebRequests;

/// The web listener's state between turns (see the module header).
pub struct WebFront {
    /// What the web connections that have not become WebSocket clients share (their
    /// deadlines, counters, refusal log); each is an entry of the loop's map.
    pub requests: WebRequests,
    /// The page's Content-Security-Policy (see [`crate::web::page`]).
    pub page_policy: String,
    /// When WebSocket clients are next checked for silence (with `--ws-ping`).
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
            "web: websocket={} protocol_error={} ping_timeout={} foreign_origin={} requests: \
             answered={} refused={} timed_out={}",
            stats.websocket_active,
            stats.protocol_errors,
            stats.ping_timeouts,
            stats.refused_origin,
            http.answered,
            http.refused,
            http.timed_out
        )
    }
}
