//! Counters an operator watches, and the one log line that reports them.

use std::fmt;

use crate::connection::DisconnectReason;

/// What the server has done since it started.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub active: u64,
    pub peak: u64,
    /// Complete lines received (an unterminated last line counts once it is delivered).
    pub lines_in: u64,
    /// Line copies handed to recipients (written or queued): one line sent to 10 clients is
    /// 10 deliveries.
    pub deliveries: u64,
    /// Bytes read and framed (input read from a leaving client only to discard it is not).
    pub bytes_in: u64,
    /// Bytes the kernel took for clients, including those written to a client just before
    /// it was dropped.
    pub bytes_out: u64,
    pub closed_by_client: u64,
    pub errors: u64,
    /// Clients whose host stopped answering (keepalive or `TCP_USER_TIMEOUT` gave up).
    pub peers_vanished: u64,
    pub slow_consumers: u64,
    pub lines_too_long: u64,
    pub refused_server_full: u64,
    pub closed_at_shutdown: u64,
}

impl Stats {
    pub fn connected(&mut self) {
        self.accepted += 1;
        self.active += 1;
        self.peak = self.peak.max(self.active);
    }

    pub fn disconnected(&mut self, reason: DisconnectReason) {
        self.active -= 1;
        let counter = match reason {
            DisconnectReason::ClientClosed => &mut self.closed_by_client,
            DisconnectReason::Error(_) => &mut self.errors,
            DisconnectReason::PeerVanished => &mut self.peers_vanished,
            DisconnectReason::SlowConsumer { .. } => &mut self.slow_consumers,
            DisconnectReason::LineTooLong => &mut self.lines_too_long,
            DisconnectReason::Shutdown | DisconnectReason::ShutdownTimeout { .. } => {
                &mut self.closed_at_shutdown
            }
        };
        *counter += 1;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stats: accepted={} active={} peak={} lines_in={} deliveries={} bytes_in={} \
             bytes_out={} disconnects: client_closed={} error={} peer_vanished={} \
             slow_consumer={} line_too_long={} server_full={} shutdown={}",
            self.accepted,
            self.active,
            self.peak,
            self.lines_in,
            self.deliveries,
            self.bytes_in,
            self.bytes_out,
            self.closed_by_client,
            self.errors,
            self.peers_vanished,
            self.slow_consumers,
            self.lines_too_long,
            self.refused_server_full,
            self.closed_at_shutdown,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_reasons_are_tracked() {
        let mut stats = Stats::default();
        stats.connected();
        stats.connected();
        stats.disconnected(DisconnectReason::SlowConsumer { queued: 9 });
        stats.connected();
        stats.disconnected(DisconnectReason::ClientClosed);
        assert_eq!((stats.accepted, stats.active, stats.peak), (3, 1, 2));
        assert_eq!((stats.slow_consumers, stats.closed_by_client), (1, 1));
        assert!(
            stats
                .to_string()
                .starts_with("stats: accepted=3 active=1 peak=2 ")
        );
    }
}
