//! The NATS bridge: instances that join the same NATS subject behave as one broadcast.
//!
//! The event loop stays single-threaded mio and never waits on NATS. The bridge is one thread
//! running a tokio current-thread runtime with the `async-nats` client; the two meet through
//! two bounded channels and a `mio::Waker`:
//!
//! - outbound: once per hand-out the loop copies the batch's *local* lines (never lines that
//!   came from NATS) into one buffer and `try_send`s it. A full channel drops that batch for
//!   NATS only (counted): the local broadcast never waits.
//! - inbound: each NATS message (whole lines from another instance) is `try_send`t to the
//!   loop, then the waker is woken; the loop drains what is there. A full channel drops the
//!   message (counted).
//!
//! Delivery across instances is at most once: what is published while NATS is unreachable
//! is dropped, not queued (counted); NATS's own buffers may lose a message in flight when a
//! connection breaks. Our own publications never come back (`no_echo`, plus an origin
//! header checked on receipt). This room knows nothing of clients or framing.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, HeaderMap, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use log::{debug, info, warn};

use crate::log_limit::RateLimit;
use tokio::sync::mpsc;

/// Batches waiting to be published; past this the loop drops batches for NATS.
const OUTBOX_CAPACITY: usize = 64;
/// Messages from NATS waiting for the loop; past this they are dropped. The client's own
/// subscription queue has the same size, so messages from NATS hold at most twice this many
/// times NATS's max payload (1 MiB by default: 64 MiB).
const INBOX_CAPACITY: usize = 32;
/// The NATS client's own command queue (messages). What is in it when NATS stalls still
/// goes out after the reconnect, late: small, so that little can (one message per turn of
/// the loop, so a few suffice).
const CLIENT_CAPACITY: usize = 16;
/// How often the client pings the server: a stalled connection is noticed after two
/// unanswered pings, in seconds.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// The longest a publish may wait for room in the client's queue before its lines count as
/// dropped: a stalled NATS must not hold lines back to deliver them late.
const PUBLISH_WAIT: Duration = Duration::from_millis(200);
/// The header naming the instance that published a message.
const ORIGIN_HEADER: &str = "Broadcast-Origin";
/// The header numbering an instance's messages: a receiver drops any message not newer
/// than the last it delivered from that instance (late, after a stalled connection).
const SEQUENCE_HEADER: &str = "Broadcast-Seq";
/// Instances whose last sequence number a receiver remembers; past this it starts over.
const MAX_ORIGINS: usize = 4096;

/// Where the bridge connects and what it shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    /// Server URLs of one NATS cluster (credentials already split off).
    pub servers: Vec<String>,
    /// `user:password` or a token given in the URLs (async-nats ignores URL credentials).
    pub credentials: Option<Credentials>,
    /// Instances with the same subject form one broadcast.
    pub subject: String,
}

/// Credentials taken out of a `--nats` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    UserPassword(String, String),
    Token(String),
}

/// Parses `--nats`: comma-separated `nats://[user:pass@|token@]host:port` URLs.
pub fn parse_servers(text: &str) -> Result<(Vec<String>, Option<Credentials>), String> {
    let mut servers = Vec::new();
    let mut credentials = None;
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let addr: ServerAddr = url
            .parse()
            .map_err(|e| format!("'{url}' is not a NATS URL ({e}); try nats://127.0.0.1:4222"))?;
        let given = match (addr.username(), addr.password()) {
            (Some(user), Some(pass)) => Some(Credentials::UserPassword(user.into(), pass.into())),
            (Some(token), None) => Some(Credentials::Token(token.into())),
            _ => None,
        };
        if given.is_some() {
            if credentials.is_some() && credentials != given {
                return Err(
                    "the URLs carry different credentials; one client logs in once, \
                            so give the same credentials in each URL (or in one)"
                        .into(),
                );
            }
            credentials = given;
        }
        // An IPv6 host keeps its brackets.
        let host = addr.host();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let server = format!("{}://{host}:{}", addr.scheme(), addr.port());
        server
            .parse::<ServerAddr>()
            .map_err(|e| format!("'{url}' is not a usable NATS URL ({e})"))?;
        servers.push(server);
    }
    if servers.is_empty() {
        return Err("--nats needs at least one URL, e.g. nats://127.0.0.1:4222".into());
    }
    Ok((servers, credentials))
}

/// What the bridge did, for the stats line.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Lines published to NATS.
    pub published: AtomicU64,
    /// Lines received from other instances.
    pub received: AtomicU64,
    /// Lines not published because the outbound channel was full (NATS slower than us).
    pub dropped_backlog: AtomicU64,
    /// Lines not published because NATS was unreachable.
    pub dropped_offline: AtomicU64,
    /// Lines not published because one line is larger than NATS's max payload.
    pub dropped_too_large: AtomicU64,
    /// Lines (or, when the client's own queue overflowed, messages) from NATS dropped: the
    /// queues to the loop were full, a line was over this instance's `--max-line`, or a
    /// message did not end in a line end (no instance publishes that).
    pub dropped_inbound: AtomicU64,
    /// Lines from NATS dropped because they came after newer ones from the same instance.
    pub dropped_stale: AtomicU64,
}

impl BridgeCounters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `n` lines from NATS dropped on arrival.
    pub fn count_inbound_drop(&self, n: usize) {
        BridgeCounters::add(&self.dropped_inbound, n);
    }

    /// Every counter with its name: published, received, then the drops by reason.
    pub fn each(&self) -> [(&'static str, u64); 7] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("published", get(&self.published)),
            ("received", get(&self.received)),
            ("backlog", get(&self.dropped_backlog)),
            ("offline", get(&self.dropped_offline)),
            ("too_large", get(&self.dropped_too_large)),
            ("inbound", get(&self.dropped_inbound)),
            ("stale", get(&self.dropped_stale)),
        ]
    }

    /// The bridge's part of the stats line.
    pub fn summary(&self) -> String {
        let [published, received, dropped @ ..] = self.each();
        let dropped: Vec<String> = dropped.iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!(
            "nats: published={} received={} dropped: {}",
            published.1,
            received.1,
            dropped.join(" ")
        )
    }
}

/// The loop's handle on the bridge thread.
pub struct Bridge {
    outbox: mpsc::Sender<Bytes>,
    inbox: std_mpsc::Receiver<Bytes>,
    counters: Arc<BridgeCounters>,
    /// Says when the bridge thread has handed its last lines to NATS and ended.
    done: std_mpsc::Receiver<()>,
    /// Set once the bridge thread is found gone (said once).
    gone: std::cell::Cell<bool>,
}

impl Bridge {
    /// Starts the bridge thread; it connects (and reconnects) on its own and wakes the loop
    /// through `waker` when lines arrive.
    pub fn start(settings: BridgeSettings, waker: mio::Waker) -> io::Result<Bridge> {
        let (outbox, outbound) = mpsc::channel(OUTBOX_CAPACITY);
        let (inbound, inbox) = std_mpsc::sync_channel(INBOX_CAPACITY);
        let (done_tx, done) = std_mpsc::channel();
        let counters = Arc::new(BridgeCounters::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let link = Link {
            settings,
            waker,
            inbound,
            counters: Arc::clone(&counters),
            origin: format!("{:016x}", origin_id()),
            too_large_log: RateLimit::default(),
            ever_connected: false,
            said_unreachable: false,
            sequence: 0,
            last_seen: std::collections::HashMap::new(),
        };
        std::thread::Builder::new()
            .name("nats-bridge".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| runtime.block_on(link.run(outbound)));
                if std::panic::catch_unwind(run).is_err() {
                    // The panic message went to stderr already; say what it means here.
                    warn!("nats: the bridge failed and stopped; lines stay local");
                }
                let _ = done_tx.send(());
            })?;
        Ok(Bridge {
            outbox,
            inbox,
            counters,
            done,
            gone: std::cell::Cell::new(false),
        })
    }

    /// Hands local lines (`lines` of them, whole) to the bridge: one non-blocking send,
    /// never a wait. A full queue drops them for NATS only (counted).
    pub fn publish(&self, batch: Vec<u8>, lines: usize) {
        match self.outbox.try_send(Bytes::from(batch)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                BridgeCounters::add(&self.counters.dropped_backlog, lines);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                BridgeCounters::add(&self.counters.dropped_offline, lines);
                if !self.gone.replace(true) {
                    warn!("nats: the bridge has stopped; lines stay local");
                }
            }
        }
    }

    /// Ends the bridge: it hands what it still holds to NATS, waiting at most `wait`. The
    /// counters are final unless the wait ran out (NATS stalled at exit): lines still
    /// waiting then are in no counter.
    pub fn finish(self, wait: Duration) -> Arc<BridgeCounters> {
        drop(self.outbox);
        // Messages from NATS the loop never took (shutdown takes none) are dropped here.
        while let Ok(message) = self.inbox.try_recv() {
            self.counters.count_inbound_drop(count_lines(&message));
        }
        let _ = self.done.recv_timeout(wait);
        self.counters
    }

    /// Counts `n` lines from NATS that reached the batch.
    pub fn count_received(&self, n: usize) {
        BridgeCounters::add(&self.counters.received, n);
    }

    /// One message of whole lines from another instance, if any is waiting.
    pub fn take_received(&self) -> Option<Bytes> {
        self.inbox.try_recv().ok()
    }

    pub fn counters(&self) -> &BridgeCounters {
        &self.counters
    }
}

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

/// The bridge thread's side.
struct Link {
    settings: BridgeSettings,
    waker: mio::Waker,
    inbound: std_mpsc::SyncSender<Bytes>,
    counters: Arc<BridgeCounters>,
    origin: String,
    /// Lines too large for NATS are logged at most once a second.
    too_large_log: RateLimit,
    /// Whether NATS was ever reached, and whether we already said it could not be.
    ever_connected: bool,
    said_unreachable: bool,
    /// The number of this instance's last published message.
    sequence: u64,
    /// The last message number delivered from each other instance, by its id.
    last_seen: std::collections::HashMap<u64, u64>,
}

impl Link {
    /// Connects (in the background, retrying for ever), subscribes, and moves lines both
    /// ways until the loop drops its handle.
    async fn run(mut self, mut outbound: mpsc::Receiver<Bytes>) {
        let (events_tx, mut events) = mpsc::channel::<Event>(64);
        let mut options = ConnectOptions::new()
            .name("broadcast-server")
            .no_echo()
            .retry_on_initial_connect()
            .ping_interval(PING_INTERVAL)
            .client_capacity(CLIENT_CAPACITY)
            .subscription_capacity(INBOX_CAPACITY)
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.try_send(event);
                }
            });
        options = match &self.settings.credentials {
            Some(Credentials::UserPassword(user, pass)) => {
                options.user_and_password(user.clone(), pass.clone())
            }
            Some(Credentials::Token(token)) => options.token(token.clone()),
            None => options,
        };
        let servers: Vec<&str> = self.settings.servers.iter().map(String::as_str).collect();
        let client = match options.connect(servers).await {
            Ok(client) => client,
            Err(e) => {
                warn!("nats: cannot start the client, bridging is off: {e}");
                return;
            }
        };
        let mut subscriber = match client.subscribe(self.settings.subject.clone()).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                warn!("nats: cannot subscribe, bridging is off: {e}");
                return;
            }
        };
        info!(
            "nats: bridging subject {} through {} as instance {} (connecting)",
            self.settings.subject,
            self.settings.servers.join(","),
            self.origin
        );
        loop {
            tokio::select! {
                batch = outbound.recv() => match batch {
                    Some(batch) => self.publish(&client, batch).await,
                    None => {
                        // The loop is done: what was handed over goes out before we end.
                        let _ = tokio::time::timeout(PUBLISH_WAIT * 5, client.flush()).await;
                        break;
                    }
                },
                Some(message) = subscriber.next() => self.deliver(message),
                Some(event) = events.recv() => self.log_event(&event),
            }
        }
    }

    /// Publishes a batch of local lines, split at line ends into messages within NATS's max
    /// payload. Nothing is published, or queued, while NATS is unreachable.
    async fn publish(&mut self, client: &async_nats::Client, batch: Bytes) {
        let lines = count_lines(&batch);
        if client.connection_state() != State::Connected {
            BridgeCounters::add(&self.counters.dropped_offline, lines);
            return;
        }
        // Room for the headers on the wire.
        let limit = client.max_payload().saturating_sub(128).max(1);
        let mut stalled = false;
        for chunk in split_at_lines(batch, limit) {
            let n = count_lines(&chunk);
            if stalled {
                // NATS stalled on an earlier chunk: the rest would only arrive late.
                BridgeCounters::add(&self.counters.dropped_offline, n);
                continue;
            }
            if chunk.len() > limit {
                BridgeCounters::add(&self.counters.dropped_too_large, n);
                let now = std::time::Instant::now();
                if let Some(more) = self.too_large_log.take_summary(now) {
                    warn!("nats: {more} more lines over NATS's max payload stayed local");
                }
                if self.too_large_log.admit(now) {
                    warn!(
                        "nats: a line of {} bytes is over NATS's max payload ({limit}): \
                         delivered here only",
                        chunk.len()
                    );
                }
                continue;
            }
            self.sequence += 1;
            let mut headers = HeaderMap::new();
            headers.insert(ORIGIN_HEADER, self.origin.as_str());
            headers.insert(SEQUENCE_HEADER, self.sequence.to_string().as_str());
            let publish =
                client.publish_with_headers(self.settings.subject.clone(), headers, chunk);
            match tokio::time::timeout(PUBLISH_WAIT, publish).await {
                Ok(Ok(())) => BridgeCounters::add(&self.counters.published, n),
                Ok(Err(e)) => {
                    BridgeCounters::add(&self.counters.dropped_offline, n);
                    debug!("nats: publish failed: {e}");
                }
                Err(_) => {
                    BridgeCounters::add(&self.counters.dropped_offline, n);
                    debug!("nats: publish timed out (NATS stalled)");
                    stalled = true;
                }
            }
        }
    }

    /// One log line per connection state change; failed (re)connect attempts are debug,
    /// except the first at start, which says NATS cannot be reached yet.
    fn log_event(&mut self, event: &Event) {
        match event {
            Event::Connected => {
                self.ever_connected = true;
                info!("nats: connected; bridging");
            }
            Event::Disconnected => {
                warn!("nats: disconnected; lines stay local until it is back")
            }
            Event::SlowConsumer(_) => {
                // The client's own queue for us overflowed: one message lost.
                self.counters.count_inbound_drop(1);
            }
            Event::ClientError(e) if !self.ever_connected && !self.said_unreachable => {
                self.said_unreachable = true;
                warn!(
                    "nats: cannot reach {} yet ({e}); serving locally and retrying",
                    self.settings.servers.join(",")
                );
            }
            Event::ClientError(e) => debug!("nats: {e}"),
            other => info!("nats: {other}"),
        }
    }

    /// Passes a message from another instance to the loop.
    fn deliver(&mut self, message: async_nats::Message) {
        let header = |name| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let origin = header(ORIGIN_HEADER).unwrap_or_default();
        if origin == self.origin {
            return; // our own: no_echo should prevent it, and a line never loops
        }
        if !message.payload.ends_with(b"\n") {
            // Not whole lines (no instance publishes that): nothing to deliver it as.
            self.counters.count_inbound_drop(1);
            return;
        }
        let lines = count_lines(&message.payload);
        let sequence = header(SEQUENCE_HEADER).and_then(|s| s.parse::<u64>().ok());
        // Only an instance's id (16 hex digits) is remembered: a foreign publisher cannot
        // grow the map with large or endless made-up origins beyond MAX_ORIGINS small keys.
        let origin_id = parse_origin(&origin);
        if let (Some(sequence), Some(origin_id)) = (sequence, origin_id) {
            if self.last_seen.len() >= MAX_ORIGINS
                && !self.last_seen.contains_key(&origin_id)
                && let Some(&evicted) = self.last_seen.keys().next()
            {
                self.last_seen.remove(&evicted);
            }
            let last = self.last_seen.entry(origin_id).or_insert(0);
            if sequence <= *last {
                // Older than what we delivered from that instance: late, after a stall.
                BridgeCounters::add(&self.counters.dropped_stale, lines);
                return;
            }
            *last = sequence;
        }
        match self.inbound.try_send(message.payload) {
            Ok(()) => {
                // `received` is counted by the loop, as the lines reach the batch.
                if let Err(e) = self.waker.wake() {
                    warn!("nats: cannot wake the event loop: {e}");
                }
            }
            Err(_) => BridgeCounters::add(&self.counters.dropped_inbound, lines),
        }
    }
}

/// An instance id: exactly 16 lowercase hex digits, as `origin_id` formats them.
fn parse_origin(origin: &str) -> Option<u64> {
    let hex = origin.len() == 16
        && origin
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| u64::from_str_radix(origin, 16).ok()).flatten()
}

fn count_lines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
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
    fn urls_give_servers_and_credentials() {
        assert_eq!(
            parse_servers("nats://127.0.0.1:4222"),
            Ok((vec!["nats://127.0.0.1:4222".to_string()], None))
        );
        let (servers, credentials) =
            parse_servers("nats://u:pw@127.0.0.2:4222, nats://u:pw@127.0.0.3:4223").unwrap();
        assert_eq!(servers, ["nats://127.0.0.2:4222", "nats://127.0.0.3:4223"]);
        assert_eq!(
            credentials,
            Some(Credentials::UserPassword("u".into(), "pw".into()))
        );
        assert_eq!(
            parse_servers("nats://s3cret@127.0.0.1:4222").unwrap().1,
            Some(Credentials::Token("s3cret".into()))
        );
        assert!(parse_servers("").is_err());
        assert!(parse_servers("nats://host:notaport").is_err());
        assert_eq!(
            parse_servers("nats://[::1]:4222").unwrap().0,
            ["nats://[::1]:4222"]
        );
        assert!(parse_servers("nats://a:b@h1:4222,nats://c:d@h2:4222").is_err());
        assert!(parse_servers("nats://a:b@h1:4222,nats://h2:4222").is_ok());
        assert_eq!(parse_origin("00ff00ff00ff00ff"), Some(0x00ff00ff00ff00ff));
        assert_eq!(parse_origin("00FF00FF00FF00FF"), None);
        assert_eq!(parse_origin("x"), None);
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
