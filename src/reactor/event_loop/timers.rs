//! Time, as more `impl EventLoop`: each component reports its next deadline and runs its
//! own tick; the loop only takes the nearest for the poll's timeout.

use std::time::{Duration, Instant};

use log::info;

use super::EventLoop;
use super::clients::DRAIN_TICK;
use crate::bridge::{Bridge, BridgeCounters};
use crate::reactor::connections::Stage;

impl EventLoop {
    /// Runs whatever is due: each component's tick (accept retry and admission's log
    /// summaries, handshake and request deadlines), the liveness check, the drain sweep,
    /// the stats line.
    pub(super) fn run_timers(&mut self, now: Instant) {
        self.retry_accepting_if_due(now);
        self.admission.log_summaries(now, self.config.max_clients);
        self.expire_admissions(now);
        self.web.log_summaries(now);
        self.tls.handshakes.log_summary(now);
        if let Some(every) = self.config.ws_ping
            && self.web.liveness_check_due(now, every)
        {
            self.check_websocket_liveness(now, every);
        }
        if !self.leaving.is_empty() {
            self.sweep_leaving(now);
        }
        if self.observe.stats_line_due(now, self.config.stats_interval) {
            self.sync_room_gauges();
            let nats = self.nats.bridge.as_ref().map(Bridge::counters);
            info!("{}", self.stats_line(nats));
        }
        self.observe.log_summaries(now);
    }

    /// How long the next poll may sleep: not at all while work was carried to the next
    /// turn (readers, handshakes or requests over their budget, connections beyond the
    /// accept budget, kept lines or NATS messages waiting for the batch), else until the
    /// nearest deadline any component reports. A held batch is not one of them: the hold
    /// timer wakes the poll for it.
    pub(super) fn next_timeout(&self) -> Option<Duration> {
        let stopping = self.shutdown.is_some();
        if !self.turn.carried.is_empty()
            || self.listeners.more_to_accept.contains(&true)
            || (self.rooms.kept_lines_waiting() && !stopping)
            || (self.nats.waiting && !stopping)
        {
            return Some(Duration::ZERO);
        }
        let drain_tick = (!self.leaving.is_empty()).then(|| Instant::now() + DRAIN_TICK);
        [
            self.admission.next_deadline(),
            self.web.next_deadline(),
            self.tls.next_deadline(),
            self.observe.next_deadline(),
            self.finales_wake_at(),
            drain_tick,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Drops the connections that did not become members (or finish their web exchange)
    /// within the admission timeout of their accept.
    fn expire_admissions(&mut self, now: Instant) {
        loop {
            let connections = &self.connections;
            let expired = self
                .admission
                .deadlines
                .next_expired(now, |t| connections.is_admitting(t));
            let Some(token) = expired else {
                return;
            };
            match self.connections.stage_of(token) {
                Some(Stage::Handshake) => self.drop_handshake(token, None),
                Some(Stage::Request) => self.drop_exchange(token, Some(now)),
                Some(Stage::Member) | None => {}
            }
        }
    }

    /// Brings the gauges that rooms keep (rooms, history) into the stats, before they are
    /// shown.
    pub(super) fn sync_room_gauges(&mut self) {
        let stats = &mut self.observe.stats;
        if self.rooms.is_named() {
            stats.rooms = Some((self.rooms.count() as u64, self.rooms.peak() as u64));
        }
        if self.config.history.is_some() {
            stats.history = Some(self.rooms.history_totals());
        }
    }

    /// The stats line, with the web listener's and the bridge's parts when they are on.
    /// Call `sync_room_gauges` first.
    pub(super) fn stats_line(&self, nats: Option<&BridgeCounters>) -> String {
        let stats = &self.observe.stats;
        let mut line = stats.to_string();
        if self.config.http.is_some() {
            line.push(' ');
            line.push_str(&self.web.summary(stats));
        }
        if let Some(rooms) = stats.rooms_summary() {
            line.push(' ');
            line.push_str(&rooms);
        }
        if let Some(history) = stats.history_summary() {
            line.push(' ');
            line.push_str(&history);
        }
        if !self.config.access.is_empty() || self.config.max_clients_per_ip > 0 {
            line.push(' ');
            line.push_str(&stats.access_summary());
        }
        if let Some(counters) = nats {
            line.push(' ');
            line.push_str(&counters.summary());
        }
        line
    }
}
