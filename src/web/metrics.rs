//! `/metrics`: the server's counters in Prometheus's text format. The counters are kept by
//! [`Stats`] (and the HTTP stage and the bridge); this only renders them.

use std::fmt::Write as _;

use crate::bridge::BridgeCounters;
use crate::observe::stats::Stats;
use crate::web::requests::HttpCounters;

/// Every counter in Prometheus's text exposition format (version 0.0.4).
pub fn render(stats: &Stats, http: HttpCounters, bridge: Option<&BridgeCounters>) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP broadcast_server_{name} {help}");
        let _ = writeln!(out, "# TYPE broadcast_server_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "broadcast_server_{name}{labels} {value}");
        }
    };
    metric(
        "clients",
        "gauge",
        "Clients connected now, by transport.",
        &[
            (
                "{transport=\"tcp\"}",
                stats.active - stats.websocket_active - stats.http_stream_active - stats.sse_active,
            ),
            ("{transport=\"websocket\"}", stats.websocket_active),
            ("{transport=\"http\"}", stats.http_stream_active),
            ("{transport=\"sse\"}", stats.sse_active),
        ],
    );
    metric(
        "clients_peak",
        "gauge",
        "Most clients connected at once.",
        &[("", stats.peak)],
    );
    let counters: [(&str, &str, u64); 5] = [
        (
            "connections_accepted_total",
            "Clients accepted.",
            stats.accepted,
        ),
        (
            "lines_received_total",
            "Complete lines received from clients.",
            stats.lines_in,
        ),
        (
            "deliveries_total",
            "Line copies handed to recipients.",
            stats.deliveries,
        ),
        (
            "bytes_received_total",
            "Bytes received and framed into lines.",
            stats.bytes_in,
        ),
        (
            "bytes_sent_total",
            "Bytes the kernel took for clients.",
            stats.bytes_out,
        ),
    ];
    for (name, help, value) in counters {
        metric(name, "counter", help, &[("", value)]);
    }
    metric(
        "disconnects_total",
        "counter",
        "Clients disconnected, by reason.",
        &[
            ("{reason=\"client_closed\"}", stats.closed_by_client),
            ("{reason=\"error\"}", stats.errors),
            ("{reason=\"peer_vanished\"}", stats.peers_vanished),
            ("{reason=\"slow_consumer\"}", stats.slow_consumers),
            ("{reason=\"line_too_long\"}", stats.lines_too_long),
            ("{reason=\"http_request\"}", stats.http_requests),
            ("{reason=\"shutdown\"}", stats.closed_at_shutdown),
            ("{reason=\"protocol_error\"}", stats.protocol_errors),
            ("{reason=\"ping_timeout\"}", stats.ping_timeouts),
        ],
    );
    metric(
        "refused_total",
        "counter",
        "Connections refused: the server was full, the address is not allowed, it has \
         --max-clients-per-ip already, or a WebSocket upgrade came from another site's page.",
        &[
            ("{reason=\"server_full\"}", stats.refused_server_full),
            ("{reason=\"denied\"}", stats.denied),
            ("{reason=\"per_address\"}", stats.refused_per_address),
            ("{reason=\"origin\"}", stats.refused_origin),
        ],
    );
    metric(
        "http_requests_total",
        "counter",
        "Web requests other than WebSocket upgrades, by outcome.",
        &[
            ("{outcome=\"answered\"}", http.answered),
            ("{outcome=\"refused\"}", http.refused),
            ("{outcome=\"timed_out\"}", http.timed_out),
        ],
    );
    metric(
        "http_post_bytes_held",
        "gauge",
        "Bytes of POST /lines bodies being read now (at most 64 MiB together).",
        &[("", http.post_bytes_held)],
    );
    if let Some((rooms, _)) = stats.rooms {
        metric(
            "rooms",
            "gauge",
            "Rooms now (--rooms): those with members, and those still handing out lines.",
            &[("", rooms)],
        );
    }
    if let Some((lines, bytes)) = stats.history {
        metric(
            "history_lines",
            "gauge",
            "Lines kept for newcomers (--history).",
            &[("", lines)],
        );
        metric(
            "history_bytes",
            "gauge",
            "Bytes of the lines kept for newcomers.",
            &[("", bytes)],
        );
    }
    if let Some(bridge) = bridge {
        let [published, received, dropped @ ..] = bridge.each();
        metric(
            "nats_lines_total",
            "counter",
            "Lines published to and received from NATS.",
            &[
                ("{direction=\"published\"}", published.1),
                ("{direction=\"received\"}", received.1),
            ],
        );
        let labels: Vec<String> = dropped
            .iter()
            .map(|(why, _)| format!("{{reason=\"{why}\"}}"))
            .collect();
        let samples: Vec<(&str, u64)> = labels
            .iter()
            .map(String::as_str)
            .zip(dropped.iter().map(|d| d.1))
            .collect();
        metric(
            "nats_dropped_total",
            "counter",
            "Lines not bridged, by reason.",
            &samples,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::stats::{Ending, MemberKind};

    #[test]
    fn counters_are_rendered_with_their_types_and_labels() {
        let mut stats = Stats::default();
        stats.connected(MemberKind::Line);
        stats.connected(MemberKind::WebSocket);
        stats.disconnected(
            Ending::SlowConsumer,
            crate::observe::stats::MemberKind::Line,
        );
        let text = render(&stats, HttpCounters::default(), None);
        assert!(text.contains("broadcast_server_clients{transport=\"websocket\"} 1\n"));
        assert!(text.contains("broadcast_server_clients{transport=\"tcp\"} 0\n"));
        assert!(text.contains("# TYPE broadcast_server_deliveries_total counter\n"));
        assert!(text.contains("broadcast_server_disconnects_total{reason=\"slow_consumer\"} 1\n"));
        assert!(!text.contains("nats"), "no bridge, no NATS metrics");
    }
}
