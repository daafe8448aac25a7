//! The bridge thread's side: one NATS connection at a time (connect, reconnect with
//! backoff, fail over across the cluster), publishing the loop's lines in envelopes and
//! handing checked messages from other instances to the loop.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::connection::{self, Connection, ServerUrl};
use super::envelope::{self, Opened, Sequences, Verdict};
use super::inbox::{Inbound, InboxSender};
use super::outgoing::Outgoing;
use super::protocol::{self, ServerOp};

use crate::observe::log_limit::RateLimit;
use crate::observe::logger;

use super::{BridgeCounters, BridgeSettings, FINAL_FLUSH, Outbound, count_lines};

/// Most bytes of messages not yet taken by the socket. What is there when NATS stalls still
/// goes out after it recovers, late: small, so that little can; past it, lines are dropped
/// for NATS (counted as `offline`).
const OUT_LIMIT: usize = 1024 * 1024;
/// Most bytes of our protocol lines (PONGs to the server's PINGs) waiting for the socket:
/// past it, the server asks without reading, and the connection is given up.
const CONTROL_LIMIT: usize = 64 * 1024;
/// How often the bridge pings the server: a stalled connection is noticed after two
/// unanswered pings (only a PONG answers: a server that trickles bytes is stalled too).
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// Reconnect delays back off to this.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Servers remembered, given and discovered from the cluster.
const MAX_SERVERS: usize = 64;
/// How much of a server's `-ERR` text a log line quotes.
const QUOTED: usize = 200;

/// A random-enough id for this instance: its messages are recognised if they ever come back.
fn origin_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Why a connection's service ended.
enum Ended {
    /// The loop dropped its handle: the bridge is done.
    Done,
    /// The connection was lost (the reason, for the log); reconnect.
    Lost(String),
}

/// Log lines a storm could repeat, each limited.
struct LinkLogs {
    /// Connection changes (connected, disconnected): a server that drops us at once must not
    /// fill the log.
    state: RateLimit,
    too_large: RateLimit,
    forged: RateLimit,
    unfresh: RateLimit,
    server_errors: RateLimit,
}

/// The bridge thread's side.
pub(super) struct Link {
    settings: BridgeSettings,
    waker: mio::Waker,
    inbound: InboxSender,
    counters: Arc<BridgeCounters>,
    origin: u64,
    /// The number of this instance's last published message.
    sequence: u64,
    /// With a key: the last message number delivered from each other instance (without
    /// one, numbers cannot be verified and decide nothing).
    sequences: Option<Sequences>,
    /// Servers to try in turn: the given ones, then those the cluster told of.
    servers: Vec<ServerUrl>,
    next_server: usize,
    /// The connected server's max payload.
    max_payload: usize,
    /// Where a message's envelope and PUB line are written before they are queued.
    scratch: Vec<u8>,
    logs: LinkLogs,
    /// Whether NATS was ever reached, and whether we already said it could not be.
    ever_connected: bool,
    said_unreachable: bool,
}

impl Link {
    pub(super) fn new(
        settings: BridgeSettings,
        waker: mio::Waker,
        inbound: InboxSender,
        counters: Arc<BridgeCounters>,
    ) -> Link {
        Link {
            sequences: settings.key.as_ref().map(|_| Sequences::default()),
            servers: settings.servers.clone(),
            settings,
            waker,
            inbound,
            counters,
            origin: origin_id(),
            sequence: 0,
            next_server: 0,
            max_payload: protocol::DEFAULT_MAX_PAYLOAD,
            scratch: Vec::new(),
            logs: LinkLogs {
                state: RateLimit::with_burst(4),
                too_large: RateLimit::default(),
                forged: RateLimit::default(),
                unfresh: RateLimit::default(),
                server_errors: RateLimit::with_burst(4),
            },
            ever_connected: false,
            said_unreachable: false,
        }
    }

    /// Connects (retrying for ever, server after server, backing off), and moves lines both
    /// ways until the loop drops its handle.
    pub(super) async fn run(mut self, mut outbound: mpsc::Receiver<Outbound>) {
        info!(
            "nats: bridging subject {} through {} as instance {:016x}{} (connecting)",
            self.settings.subject,
            self.server_list(),
            self.origin,
            if self.settings.key.is_some() {
                ", messages signed with --nats-key"
            } else {
                ""
            }
        );
        if self.settings.key.is_none() {
            warn!(
                "nats: messages are not signed (no --nats-key): any client of the NATS server \
                 can publish lines into the broadcast, under any instance's name; give every \
                 instance the same --nats-key FILE to refuse them"
            );
        }
        // Failed attempts in this round of the servers, and rounds failed in a row.
        let (mut failed, mut rounds) = (0usize, 0u32);
        let subscriptions = self.settings.subscriptions();
        loop {
            let server = self.servers[self.next_server % self.servers.len()].clone();
            self.next_server = (self.next_server + 1) % self.servers.len();
            let open =
                Connection::open(&server, self.settings.credentials.as_ref(), &subscriptions);
            let Some(opened) = self.while_offline(open, &mut outbound).await else {
                return;
            };
            let lasted = match opened {
                Ok(connection) => {
                    self.on_connected(&server, &connection);
                    let since = Instant::now();
                    match self.serve(connection, &mut outbound).await {
                        Ended::Done => return,
                        Ended::Lost(why) => self.log_state(|| {
                            warn!(
                                "nats: disconnected from {server} ({why}); lines stay local \
                                 until it is back"
                            )
                        }),
                    }
                    since.elapsed() >= PING_INTERVAL
                }
                Err(e) => {
                    self.on_failed_attempt(&server, &e);
                    false
                }
            };
            // A connection that lasted is a success; one dropped at once counts as a failure,
            // so a server that takes us and drops us again is not retried in a tight loop.
            if lasted {
                (failed, rounds) = (0, 0);
                continue;
            }
            failed += 1;
            if failed >= self.servers.len() {
                (failed, rounds) = (0, rounds + 1);
                let pause = tokio::time::sleep(backoff(rounds));
                if self.while_offline(pause, &mut outbound).await.is_none() {
                    return;
                }
            }
        }
    }

    /// Runs `future` while NATS is unreachable: lines handed over meanwhile are dropped for
    /// NATS (counted). `None` once the loop is done.
    async fn while_offline<F: Future>(
        &self,
        future: F,
        outbound: &mut mpsc::Receiver<Outbound>,
    ) -> Option<F::Output> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Some(output),
                batch = outbound.recv() => match batch {
                    Some(batch) => {
                        let lines = batch.iter().map(|(_, lines)| count_lines(lines)).sum();
                        BridgeCounters::add(&self.counters.dropped_offline, lines);
                    }
                    None => return None,
                },
            }
        }
    }

    fn on_connected(&mut self, server: &ServerUrl, connection: &Connection) {
        self.ever_connected = true;
        self.learn(&connection.info);
        self.log_state(|| info!("nats: connected to {server}; bridging"));
        self.counters.count_inbound_drop(connection.dropped_early);
    }

    /// The servers it tries, as a log line shows them.
    fn server_list(&self) -> String {
        let shown: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        shown.join(",")
    }

    fn on_failed_attempt(&mut self, server: &ServerUrl, error: &io::Error) {
        if !self.ever_connected && !self.said_unreachable {
            self.said_unreachable = true;
            warn!(
                "nats: cannot reach {} yet ({}); serving locally and retrying",
                self.server_list(),
                logger::quote(&error.to_string(), QUOTED)
            );
        } else {
            debug!("nats: {server}: {error}");
        }
    }

    /// What a server's INFO teaches: its max payload, the cluster's other servers.
    fn learn(&mut self, info: &protocol::ServerInfo) {
        self.max_payload = info.max_payload;
        let Some(seed) = self.servers.first().cloned() else {
            return;
        };
        for hostport in &info.connect_urls {
            if self.servers.len() >= MAX_SERVERS {
                break;
            }
            if let Some(server) = seed.discovered(hostport)
                && !self.servers.contains(&server)
            {
                self.servers.push(server);
            }
        }
    }

    /// Logs a connection change, at most a few a second (then a summary).
    fn log_state(&mut self, log: impl FnOnce()) {
        let now = Instant::now();
        if let Some(more) = self.logs.state.take_summary(now) {
            warn!("nats: {more} more connection changes in the last second");
        }
        if self.logs.state.admit(now) {
            log();
        }
    }

    /// Serves one connection: reads the server's operations, writes what is queued, takes
    /// the loop's batches and pings, until the connection is lost or the loop is done.
    async fn serve(
        &mut self,
        mut connection: Connection,
        outbound: &mut mpsc::Receiver<Outbound>,
    ) -> Ended {
        for (subject, payload) in std::mem::take(&mut connection.early) {
            self.deliver(&subject, payload);
        }
        let mut out = Outgoing::default();
        let end = self
            .serve_until_lost(&mut connection, &mut out, outbound)
            .await;
        match end {
            Ended::Done => {
                // The loop is done: what was handed over goes out before we end, all of it
                // within one deadline.
                let (rest, lines) = out.take_all();
                let last_write = async {
                    connection.writer.write_all(&rest).await?;
                    connection.writer.flush().await
                };
                match tokio::time::timeout(FINAL_FLUSH, last_write).await {
                    Ok(Ok(())) => BridgeCounters::add(&self.counters.published, lines),
                    _ => BridgeCounters::add(&self.counters.dropped_offline, lines),
                }
            }
            // Lines the socket never took are not published: dropped with the connection.
            Ended::Lost(_) => BridgeCounters::add(&self.counters.dropped_offline, out.abandon()),
        }
        end
    }

    async fn serve_until_lost(
        &mut self,
        connection: &mut Connection,
        out: &mut Outgoing,
        outbound: &mut mpsc::Receiver<Outbound>,
    ) -> Ended {
        let start = tokio::time::Instant::now() + PING_INTERVAL;
        let mut ping = tokio::time::interval_at(start, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = 0;
        // Set once a write finishes: TLS may still hold its records until flushed.
        let mut unflushed = false;
        loop {
            let writing = out.next().clone();
            tokio::select! {
                read = connection.reader.read_buf(&mut connection.input) => {
                    match read {
                        Ok(0) => return Ended::Lost("closed by the server".into()),
                        Ok(_) => {}
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                    loop {
                        match connection.decode() {
                            Ok(Some(ServerOp::Pong)) => unanswered = 0,
                            Ok(Some(op)) => self.on_operation(op, out),
                            Ok(None) => break,
                            Err(e) => return Ended::Lost(e.to_string()),
                        }
                    }
                    if out.control_len() > CONTROL_LIMIT {
                        // Our answers (PONGs) pile up: the server sends but does not read.
                        return Ended::Lost("the server does not read what we send".into());
                    }
                }
                // One branch writes, or (when all is written) flushes what TLS still holds.
                done = write_or_flush(&mut connection.writer, &writing), if !writing.is_empty() || unflushed => {
                    match done {
                        Ok(0) if !writing.is_empty() => {
                            return Ended::Lost("the socket took nothing".into());
                        }
                        Ok(n) => {
                            BridgeCounters::add(&self.counters.published, out.written(n));
                            unflushed = n > 0;
                        }
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                }
                batch = outbound.recv() => match batch {
                    Some(batch) => {
                        for (room, lines) in batch {
                            self.publish(room.as_deref(), lines, out);
                        }
                    }
                    None => return Ended::Done,
                },
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        return Ended::Lost("no answer to two pings: the server stalled".into());
                    }
                    unanswered += 1;
                    out.push(&[protocol::PING], 0);
                    self.log_summaries();
                }
            }
        }
    }

    fn on_operation(&mut self, op: ServerOp, out: &mut Outgoing) {
        match op {
            ServerOp::Msg { subject, payload } => self.deliver(&subject, payload),
            ServerOp::Ping => out.push(&[protocol::PONG], 0),
            ServerOp::Pong | ServerOp::Ok => {}
            ServerOp::Info(info) => self.learn(&info),
            ServerOp::Err(why) => {
                if self.logs.server_errors.admit(Instant::now()) {
                    warn!("nats: the server says: {}", logger::quote(&why, QUOTED));
                }
            }
        }
    }

    /// Summaries of rate-limited lines whose window has closed.
    fn log_summaries(&mut self) {
        let now = Instant::now();
        if let Some(more) = self.logs.state.take_summary(now) {
            warn!("nats: {more} more connection changes in the last second");
        }
        if let Some(more) = self.logs.forged.take_summary(now) {
            warn!("nats: {more} more messages that no instance sent were dropped");
        }
        if let Some(more) = self.logs.unfresh.take_summary(now) {
            warn!("nats: {more} more signed messages dropped as replays");
        }
        if let Some(more) = self.logs.server_errors.take_summary(now) {
            warn!("nats: {more} more errors from the server");
        }
        if let Some(more) = self.logs.too_large.take_summary(now) {
            warn!("nats: {more} more lines over NATS's max payload stayed local");
        }
    }

    /// Queues a batch of local lines, split at line ends into messages within NATS's max
    /// payload, each with its envelope and its own sequence number. Past [`OUT_LIMIT`] not
    /// yet taken by the socket (NATS stalled) lines are dropped, not queued.
    fn publish(&mut self, room: Option<&str>, batch: Bytes, out: &mut Outgoing) {
        let limit = self
            .max_payload
            .saturating_sub(envelope::MAX_ENVELOPE)
            .max(1);
        let now_ms = unix_millis();
        for chunk in split_at_lines(batch, limit) {
            let n = count_lines(&chunk);
            if chunk.len() > limit {
                BridgeCounters::add(&self.counters.dropped_too_large, n);
                if self.logs.too_large.admit(Instant::now()) {
                    warn!(
                        "nats: a line of {} bytes is over NATS's max payload ({limit}): \
                         delivered here only",
                        chunk.len()
                    );
                }
                continue;
            }
            // Within the limit, whole messages (one over it only into an empty queue).
            if !out.is_empty() && out.len() + chunk.len() > OUT_LIMIT {
                BridgeCounters::add(&self.counters.dropped_offline, n);
                continue;
            }
            self.sequence += 1;
            // The envelope, then the PUB line (it needs the envelope's length), into one
            // reused buffer: no allocation per message.
            self.scratch.clear();
            let key = self.settings.key.as_ref();
            let (origin, sequence) = (self.origin, self.sequence);
            let signed_room = self.settings.signed_room(room);
            let scratch = &mut self.scratch;
            envelope::seal_into(scratch, origin, sequence, now_ms, key, signed_room, &chunk);
            let head = self.scratch.len();
            let len = head + chunk.len();
            let subject = self.settings.subject_for(room);
            protocol::publish_line_into(&mut self.scratch, &subject, len);
            let (envelope, pub_line) = self.scratch.split_at(head);
            out.push(&[pub_line, envelope, &chunk, b"\r\n"], n);
        }
    }

    /// Passes a message from another instance (or a plain publisher, without a key) to the
    /// loop, its envelope checked and taken off, with the room its subject names.
    fn deliver(&mut self, subject: &[u8], payload: Bytes) {
        let Ok(room) = self.settings.room_of(subject) else {
            // A subject matched by `SUBJECT.*` that names no room: nothing to deliver it to.
            return self.counters.count_inbound_drop(1);
        };
        let signed_room = room.as_deref().map_or(&b""[..], str::as_bytes);
        let lines = match envelope::open(&payload, self.settings.key.as_ref(), signed_room) {
            Opened::Forged => {
                return self.drop_forged("no valid envelope");
            }
            Opened::Foreign(lines) => lines,
            // Our own, back: `echo: false` holds per connection, so what an earlier connection
            // published can reach this one's subscription. Dropped quietly (a stranger using
            // our name loses nothing but its own lines, here).
            Opened::Instance { origin, .. } if origin == self.origin => return,
            Opened::Instance { lines, .. } if !lines.ends_with(b"\n") => {
                return self.counters.count_inbound_drop(1);
            }
            Opened::Instance {
                origin,
                sequence,
                sent_ms,
                lines,
            } => match self.judge(origin, sequence, sent_ms) {
                Verdict::Deliver => lines,
                Verdict::Late => {
                    return BridgeCounters::add(&self.counters.dropped_stale, count_lines(lines));
                }
                Verdict::Unfresh => {
                    BridgeCounters::add(&self.counters.dropped_stale, count_lines(lines));
                    return self.warn_unfresh(origin, sent_ms);
                }
            },
        };
        if !lines.ends_with(b"\n") {
            // Not whole lines (no instance publishes that): nothing to deliver it as.
            return self.counters.count_inbound_drop(1);
        }
        let n = count_lines(lines);
        // A copy, not a slice: a slice would keep the whole read buffer it came from alive
        // (up to a 64 MiB message's), and the inbox's byte bound would not be what it holds.
        let message = Inbound {
            room,
            lines: Bytes::copy_from_slice(lines),
        };
        if !self.inbound.try_send(message) {
            return BridgeCounters::add(&self.counters.dropped_inbound, n);
        }
        // `received` is counted by the loop, as the lines reach the batch.
        if let Err(e) = self.waker.wake() {
            warn!("nats: cannot wake the event loop: {e}");
        }
    }

    /// With a key, numbers are verified and keep each instance's lines in order; without
    /// one, they decide nothing (a forger could steer any drop they decided).
    fn judge(&mut self, origin: u64, sequence: u64, sent_ms: u64) -> Verdict {
        match &mut self.sequences {
            Some(sequences) => sequences.judge(origin, sequence, sent_ms, unix_millis()),
            None => Verdict::Deliver,
        }
    }

    fn warn_unfresh(&mut self, origin: u64, sent_ms: u64) {
        let now = Instant::now();
        if let Some(more) = self.logs.unfresh.take_summary(now) {
            warn!("nats: {more} more signed messages dropped as replays");
        }
        if self.logs.unfresh.admit(now) {
            let off = (i128::from(sent_ms) - i128::from(unix_millis())) / 1000;
            warn!(
                "nats: dropped a signed message from instance {origin:016x} sent {off} s from \
                 now by our clock, the first heard from it: a replay, or clocks that differ by \
                 more than {} s (check NTP)",
                envelope::FRESH.as_secs()
            );
        }
    }

    /// Drops a message no instance sent: counted by message (a forger chooses how many
    /// lines it carries).
    fn drop_forged(&mut self, why: &str) {
        BridgeCounters::add(&self.counters.dropped_forged, 1);
        let now = Instant::now();
        if let Some(more) = self.logs.forged.take_summary(now) {
            warn!("nats: {more} more messages that no instance sent were dropped");
        }
        if self.logs.forged.admit(now) {
            warn!("nats: dropped a message that no instance sent ({why})");
        }
    }
}

/// Writes some of `bytes`, or, with nothing to write, flushes (TLS records held back);
/// returns how many bytes were written (0 for a flush).
async fn write_or_flush(
    writer: &mut tokio::io::WriteHalf<Box<dyn connection::Io>>,
    bytes: &[u8],
) -> io::Result<usize> {
    if bytes.is_empty() {
        writer.flush().await.map(|()| 0)
    } else {
        writer.write(bytes).await
    }
}

/// Milliseconds since 1970 by this host's clock.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The pause after the `round`th round of failed attempts at every server.
fn backoff(round: u32) -> Duration {
    let millis = 250u64.saturating_mul(1 << round.min(5).saturating_sub(1));
    Duration::from_millis(millis).min(MAX_BACKOFF)
}

/// Splits whole lines into chunks of at most `limit` bytes where possible; a single line
/// longer than `limit` comes as a chunk of its own (the caller drops it).
fn split_at_lines(batch: Bytes, limit: usize) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < batch.len() {
        let window_end = (start + limit).min(batch.len());
        let end = if window_end == batch.len() {
            window_end
        } else {
            match memchr::memrchr(b'\n', &batch[start..window_end]) {
                Some(at) => start + at + 1,
                // One line longer than the limit: up to its end.
                None => {
                    memchr::memchr(b'\n', &batch[start..]).map_or(batch.len(), |at| start + at + 1)
                }
            }
        };
        chunks.push(batch.slice(start..end));
        start = end;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_four_seconds() {
        let delays: Vec<u64> = (1..8).map(|r| backoff(r).as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[test]
    fn batches_split_at_line_ends_within_the_limit() {
        let batch = Bytes::from_static(b"aaa\nbb\ncccccc\nd\n");
        let chunks: Vec<Bytes> = split_at_lines(batch.clone(), 7);
        assert_eq!(
            chunks,
            [
                Bytes::from_static(b"aaa\nbb\n"),
                Bytes::from_static(b"cccccc\n"),
                Bytes::from_static(b"d\n")
            ]
        );
        // A line over the limit is a chunk of its own.
        let chunks = split_at_lines(batch, 4);
        assert_eq!(chunks[2], Bytes::from_static(b"cccccc\n"));
        assert_eq!(chunks.concat(), b"aaa\nbb\ncccccc\nd\n");
    }
}
