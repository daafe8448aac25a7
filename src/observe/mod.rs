//! What an operator sees: counters, the one logger, rate-limited log lines.

pub mod log_limit;
pub mod logger;
pub mod stats;

use std::time::{Duration, Instant};

use log::warn;

use log_limit::RateLimit;
use stats::Stats;

/// What the loop keeps for the operator: the counters, when the next stats line is due,
/// and the rate limit of warnings about misbehaving clients.
pub struct Observer {
    pub stats: Stats,
    /// When the periodic stats line is next due (`--stats-interval`; `None`: never).
    pub next_stats_at: Option<Instant>,
    /// Warnings about misbehaving clients (slow consumers, over-long lines, protocol
    /// errors): a line a second, then summed.
    pub warning_log: RateLimit,
}

impl Observer {
    /// Counters from zero; a stats line every `stats_interval`, if given. With `history`
    /// on, its gauges show from the start (0 lines, 0 bytes), not from the first hand-out.
    pub fn new(stats_interval: Option<Duration>, history: bool) -> Observer {
        Observer {
            stats: Stats {
                history: history.then_some((0, 0)),
                ..Stats::default()
            },
            next_stats_at: stats_interval.map(|every| Instant::now() + every),
            warning_log: RateLimit::default(),
        }
    }

    /// When the observer next needs the loop: a stats line or a warnings summary.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_stats_at, self.warning_log.summary_due_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the stats line is due; if so, the next one is scheduled `every` later.
    pub fn stats_line_due(&mut self, now: Instant, every: Option<Duration>) -> bool {
        match (self.next_stats_at, every) {
            (Some(at), Some(every)) if at <= now => {
                self.next_stats_at = Some(now + every);
                true
            }
            _ => false,
        }
    }

    /// Logs the summary of warnings that is due.
    pub fn log_summaries(&mut self, now: Instant) {
        if let Some(count) = self.warning_log.take_summary(now) {
            warn!(
                "{count} more clients were disconnected as slow consumers, for over-long \
                 lines, WebSocket protocol errors or HTTP on the line port in the last \
                 second (each has its own disconnect line)"
            );
        }
    }
}
