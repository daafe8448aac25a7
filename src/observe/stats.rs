//! Counters an operator watches, and their two faces: the stats log line and the
//! Prometheus text of `/metrics`.

use std::fmt;

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
    /// Clients whose host stopped answering (keepalive probes or retransmissions gave up).
    pub peers_vanished: u64,
    pub slow_consumers: u64,
    pub lines_too_long: u64,
    /// Line clients whose first line was an HTTP request (a web page posting to the port).
    pub http_requests: u64,
    pub refused_server_full: u64,
    pub closed_at_shutdown: u64,
    /// WebSocket clients connected now (also counted in `active`).
    pub websocket_active: u64,
    /// Readers of `GET /lines` now.
    pub http_stream_active: u64,
    /// Readers of `GET /events` now.
    pub sse_active: u64,
    /// WebSocket clients closed for breaking the protocol.
    pub protocol_errors: u64,
    /// WebSocket clients that did not answer a ping.
    pub ping_timeouts: u64,
    /// Connections closed at once by `--allow` / `--deny`.
    pub denied: u64,
    /// Connections refused by `--max-clients-per-ip`.
    pub refused_per_address: u64,
    /// WebSocket upgrades refused for their `Origin` (another site's page).
    pub refused_origin: u64,
    /// Lines and bytes `--history` holds now, in every room (`None`: off).
    pub history: Option<(u64, u64)>,
    /// Rooms now and the most at once (`None`: without `--rooms`).
    pub rooms: Option<(u64, u64)>,
}

/// How a member ended, as the counters tell endings apart (the connection layer says which
/// of its reasons is which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It closed (or sent a WebSocket Close).
    ByClient,
    /// A read or write failed.
    Error,
    /// Its host stopped answering.
    PeerVanished,
    SlowConsumer,
    LineTooLong,
    /// Its first line was an HTTP request.
    HttpRequest,
    /// A WebSocket client broke the protocol.
    ProtocolError,
    /// A WebSocket client did not answer a ping.
    PingTimeout,
    /// The server shut down.
    Shutdown,
}

/// What a member is, for the gauges by transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A line client (TCP or TLS).
    Line,
    WebSocket,
    /// A reader of the streamed body of `GET /lines`.
    HttpStream,
    /// A reader of `GET /events` (Server-Sent Events).
    EventStream,
}

impl MemberKind {
    /// Whether it only reads (a reader of `/lines` or `/events`): what it sends after its
    /// request is thrown away, and closing its sending half does not end it.
    pub fn is_reader(self) -> bool {
        matches!(self, MemberKind::HttpStream | MemberKind::EventStream)
    }
}

impl Stats {
    /// Counts a new member of `kind` (in the transport gauges too).
    pub fn connected(&mut self, kind: MemberKind) {
        self.accepted += 1;
        self.active += 1;
        self.websocket_active += u64::from(kind == MemberKind::WebSocket);
        self.http_stream_active += u64::from(kind == MemberKind::HttpStream);
        self.sse_active += u64::from(kind == MemberKind::EventStream);
        self.peak = self.peak.max(self.active);
    }

    /// Counts a member of `kind` that ended so.
    pub fn disconnected(&mut self, ending: Ending, kind: MemberKind) {
        self.active -= 1;
        self.websocket_active -= u64::from(kind == MemberKind::WebSocket);
        self.http_stream_active -= u64::from(kind == MemberKind::HttpStream);
        self.sse_active -= u64::from(kind == MemberKind::EventStream);
        let counter = match ending {
            Ending::ByClient => &mut self.closed_by_client,
            Ending::ProtocolError => &mut self.protocol_errors,
            Ending::PingTimeout => &mut self.ping_timeouts,
            Ending::Error => &mut self.errors,
            Ending::PeerVanished => &mut self.peers_vanished,
            Ending::SlowConsumer => &mut self.slow_consumers,
            Ending::LineTooLong => &mut self.lines_too_long,
            Ending::HttpRequest => &mut self.http_requests,
            Ending::Shutdown => &mut self.closed_at_shutdown,
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
             slow_consumer={} line_too_long={} http_request={} server_full={} shutdown={}",
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
            self.http_requests,
            self.refused_server_full,
            self.closed_at_shutdown,
        )
    }
}

impl Stats {
    /// The access rules' part of the stats line (only with `--allow`, `--deny` or
    /// `--max-clients-per-ip`).
    pub fn access_summary(&self) -> String {
        format!(
            "access: denied={} per_address={}",
            self.denied, self.refused_per_address
        )
    }

    /// The rooms' part of the stats line (only with `--rooms`).
    pub fn rooms_summary(&self) -> Option<String> {
        let (now, peak) = self.rooms?;
        Some(format!("rooms: now={now} peak={peak}"))
    }

    /// The history's part of the stats line (only with `--history`).
    pub fn history_summary(&self) -> Option<String> {
        let (lines, bytes) = self.history?;
        Some(format!("history: lines={lines} bytes={bytes}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_reasons_are_tracked() {
        let mut stats = Stats::default();
        stats.connected(MemberKind::Line);
        stats.connected(MemberKind::WebSocket);
        stats.disconnected(Ending::SlowConsumer, MemberKind::Line);
        stats.connected(MemberKind::HttpStream);
        stats.disconnected(Ending::ByClient, MemberKind::HttpStream);
        assert_eq!((stats.accepted, stats.active, stats.peak), (3, 1, 2));
        assert_eq!((stats.websocket_active, stats.http_stream_active), (1, 0));
        assert_eq!((stats.slow_consumers, stats.closed_by_client), (1, 1));
        assert!(
            stats
                .to_string()
                .starts_with("stats: accepted=3 active=1 peak=2 ")
        );
    }
}
