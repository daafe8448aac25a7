//! The NATS bridge: instances that join the same NATS subject behave as one broadcast.
//!
//! The event loop stays single-threaded mio and never waits on NATS. The bridge is one thread
//! running a tokio current-thread runtime with a small NATS core client of our own
//! ([`connection`], [`protocol`]); the loop and the bridge meet through two bounded channels
//! and a `mio::Waker`:
//!
//! - outbound: once per hand-out the loop copies the batch's *local* lines (never lines that
//!   came from NATS) into one buffer and `try_send`s it. A full channel drops that batch for
//!   NATS only (counted): the local broadcast never waits.
//! - inbound: each NATS message (whole lines from another instance, its envelope
//!   ([`envelope`]) checked and taken off) is `try_send`t to the loop, then the waker is
//!   woken; the loop drains what is there. A full channel drops the message (counted).
//!
//! Delivery across instances is at most once: what is published while NATS is unreachable
//! is dropped, not queued (counted); NATS's own buffers may lose a message in flight when a
//! connection breaks. Our own publications never come back (`echo: false`, plus the origin
//! checked on receipt). This module knows nothing of clients or framing.

mod connection;
pub mod envelope;
mod inbox;
mod link;
mod outgoing;
pub mod protocol;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use log::warn;
use tokio::sync::mpsc;

use crate::broadcast::rooms;
use crate::wire::commands;
pub use connection::{Credentials, ServerUrl};
use envelope::MessageKey;
pub use inbox::Inbound;
use inbox::InboxReceiver;
use link::Link;

/// Batches waiting to be published; past this the loop drops batches for NATS.
const OUTBOX_CAPACITY: usize = 64;
/// At exit, how long the last lines may take to leave (the loop waits a little longer).
pub const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Where the bridge connects and what it shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    /// Servers of one NATS cluster (credentials already split off).
    pub servers: Vec<ServerUrl>,
    /// `user:password` or a token given in the URLs.
    pub credentials: Option<Credentials>,
    /// Instances with the same subject form one broadcast.
    pub subject: String,
    /// The shared key (`--nats-key`) that authenticates every message, if any.
    pub key: Option<MessageKey>,
    /// `--rooms`: room NAME is published on `SUBJECT.NAME` (room `main` on `SUBJECT`
    /// itself), and both are subscribed to.
    pub rooms: bool,
}

impl BridgeSettings {
    /// What the bridge subscribes to: the subject, and with `--rooms` every room's.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut subjects = vec![self.subject.clone()];
        if self.rooms {
            subjects.push(format!("{}.*", self.subject));
        }
        subjects
    }

    /// The subject room `room`'s lines go out on (`None`: the one broadcast).
    pub fn subject_for(&self, room: Option<&str>) -> std::borrow::Cow<'_, str> {
        match room {
            None | Some(rooms::MAIN) => self.subject.as_str().into(),
            Some(name) => format!("{}.{name}", self.subject).into(),
        }
    }

    /// The room name a signed message of room `room` is signed for (see
    /// [`envelope::seal_into`]): none for the subject itself.
    pub fn signed_room<'a>(&self, room: Option<&'a str>) -> &'a [u8] {
        match room {
            None | Some(rooms::MAIN) => b"",
            Some(name) => name.as_bytes(),
        }
    }

    /// The room a message on `subject` is for: `None` for the subject itself, a room's
    /// name for `SUBJECT.NAME` (with `--rooms`); `Err` for any other subject.
    pub fn room_of(&self, subject: &[u8]) -> Result<Option<Box<str>>, NotARoom> {
        if subject == self.subject.as_bytes() {
            return Ok(None);
        }
        let name = subject
            .strip_prefix(self.subject.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"."))
            .filter(|_| self.rooms)
            .and_then(commands::room_name)
            .ok_or(NotARoom)?;
        Ok(Some(name.into()))
    }
}

/// A subject that names no room of ours (see [`BridgeSettings::room_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotARoom;

/// Local lines for NATS, by room (see [`BridgeSettings::subject_for`]), handed over once
/// a turn.
pub type Outbound = Vec<(Option<Box<str>>, Bytes)>;

/// Parses `--nats`: comma-separated `nats://[user:pass@|token@]host:port` URLs.
pub fn parse_servers(text: &str) -> Result<(Vec<ServerUrl>, Option<Credentials>), String> {
    let mut servers = Vec::new();
    let mut credentials = None;
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (server, given) = ServerUrl::parse(url)?;
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
    /// Lines not published because NATS was unreachable or not taking them (stalled).
    pub dropped_offline: AtomicU64,
    /// Lines not published because one line is larger than NATS's max payload.
    pub dropped_too_large: AtomicU64,
    /// Lines (or messages) from NATS dropped: the queue to the loop was full, a line was
    /// over this instance's `--max-line`, or a message did not end in a line end.
    pub dropped_inbound: AtomicU64,
    /// Lines from NATS dropped because they came after newer ones from the same instance.
    pub dropped_stale: AtomicU64,
    /// Messages (not lines) from NATS dropped because no instance sent them: a bad
    /// envelope, or with `--nats-key` a missing or wrong tag.
    pub dropped_forged: AtomicU64,
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
    pub fn each(&self) -> [(&'static str, u64); 8] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("published", get(&self.published)),
            ("received", get(&self.received)),
            ("backlog", get(&self.dropped_backlog)),
            ("offline", get(&self.dropped_offline)),
            ("too_large", get(&self.dropped_too_large)),
            ("inbound", get(&self.dropped_inbound)),
            ("stale", get(&self.dropped_stale)),
            ("forged", get(&self.dropped_forged)),
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
    outbox: mpsc::Sender<Outbound>,
    inbox: InboxReceiver,
    counters: Arc<BridgeCounters>,
    /// Says when the bridge thread has handed its last lines to NATS and ended.
    done: std_mpsc::Receiver<()>,
    /// Set once the bridge thread is found gone (said once).
    gone: std::cell::Cell<bool>,
    /// The rest of a message the loop took only part of (its budget ran out).
    carry: Option<Inbound>,
}

impl Bridge {
    /// Starts the bridge thread; it connects (and reconnects) on its own and wakes the loop
    /// through `waker` when lines arrive.
    pub fn start(settings: BridgeSettings, waker: mio::Waker) -> io::Result<Bridge> {
        let (outbox, outbound) = mpsc::channel(OUTBOX_CAPACITY);
        let (inbound, inbox) = inbox::inbox();
        let (done_tx, done) = std_mpsc::channel();
        let counters = Arc::new(BridgeCounters::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let link = Link::new(settings, waker, inbound, Arc::clone(&counters));
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
            carry: None,
        })
    }

    /// Hands local lines (`lines` of them, whole) to the bridge: one non-blocking send,
    /// never a wait. A full queue drops them for NATS only (counted).
    pub fn publish(&self, batch: Outbound, lines: usize) {
        match self.outbox.try_send(batch) {
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
        let _ = self.done.recv_timeout(wait);
        // Messages from NATS the loop never took (shutdown takes none), and those that came
        // while the bridge finished, are dropped here.
        let waiting = self
            .carry
            .into_iter()
            .chain(std::iter::from_fn(|| self.inbox.try_recv()));
        for message in waiting {
            self.counters
                .count_inbound_drop(count_lines(&message.lines));
        }
        self.counters
    }

    /// Counts `n` lines from NATS that reached the batch.
    pub fn count_received(&self, n: usize) {
        BridgeCounters::add(&self.counters.received, n);
    }

    /// Whole lines from other instances, at most about `budget` bytes (a single longer line
    /// comes whole), if any are waiting; the rest of a message waits for the next call.
    pub fn take_lines(&mut self, budget: usize) -> Option<Inbound> {
        let message = self.carry.take().or_else(|| self.inbox.try_recv())?;
        let (now, rest) = split_within(message.lines, budget);
        self.carry = rest.map(|lines| Inbound {
            room: message.room.clone(),
            lines,
        });
        Some(Inbound {
            room: message.room,
            lines: now,
        })
    }

    pub fn counters(&self) -> &BridgeCounters {
        &self.counters
    }
}

pub(crate) fn count_lines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

/// Cuts whole lines at a line end within `budget` bytes (a first line longer than that
/// comes whole): the part to take now, and the rest, if any.
fn split_within(mut lines: Bytes, budget: usize) -> (Bytes, Option<Bytes>) {
    if lines.len() <= budget {
        return (lines, None);
    }
    let cut = match memchr::memrchr(b'\n', &lines[..budget]) {
        Some(at) => at + 1,
        None => memchr::memchr(b'\n', &lines).map_or(lines.len(), |at| at + 1),
    };
    let rest = lines.split_off(cut);
    (lines, Some(rest).filter(|rest| !rest.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_servers_and_one_set_of_credentials() {
        let (servers, credentials) =
            parse_servers("nats://u:pw@127.0.0.2:4222, nats://u:pw@127.0.0.3:4223").unwrap();
        let shown: Vec<String> = servers.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["nats://127.0.0.2:4222", "nats://127.0.0.3:4223"]);
        assert_eq!(
            credentials,
            Some(Credentials::UserPassword("u".into(), "pw".into()))
        );
        assert!(parse_servers("").is_err());
        assert!(parse_servers("nats://host:notaport").is_err());
        assert!(parse_servers("nats://a:b@h1:4222,nats://c:d@h2:4222").is_err());
        assert!(parse_servers("nats://a:b@h1:4222,nats://h2:4222").is_ok());
        // A bare HOST:PORT means nats://; a bare port is a mistake, not host "4222".
        let (bare, _) = parse_servers("127.0.0.2:4222").unwrap();
        assert_eq!(bare[0].to_string(), "nats://127.0.0.2:4222");
        assert_eq!(
            parse_servers("4222").unwrap_err(),
            "'4222' is not a NATS URL (a port without a host); try nats://127.0.0.1:4222"
        );
    }

    #[test]
    fn rooms_map_to_subjects_and_back() {
        let mut settings = BridgeSettings {
            servers: Vec::new(),
            credentials: None,
            subject: "chat.prod".into(),
            key: None,
            rooms: false,
        };
        assert_eq!(settings.subscriptions(), ["chat.prod"]);
        assert_eq!(settings.room_of(b"chat.prod"), Ok(None));
        assert_eq!(
            settings.room_of(b"chat.prod.x"),
            Err(NotARoom),
            "no rooms, no room subjects"
        );
        settings.rooms = true;
        assert_eq!(settings.subscriptions(), ["chat.prod", "chat.prod.*"]);
        assert_eq!(settings.subject_for(None), "chat.prod");
        assert_eq!(
            settings.subject_for(Some("main")),
            "chat.prod",
            "main is the subject"
        );
        assert_eq!(settings.subject_for(Some("ops-1")), "chat.prod.ops-1");
        assert_eq!(
            settings.room_of(b"chat.prod.ops-1"),
            Ok(Some("ops-1".into()))
        );
        assert_eq!(settings.room_of(b"chat.prod.bad!"), Err(NotARoom));
        assert_eq!(settings.room_of(b"chat.production"), Err(NotARoom));
        assert_eq!(settings.room_of(b"chat.prod."), Err(NotARoom));
        assert_eq!(settings.room_of(b"other"), Err(NotARoom));
    }

    #[test]
    fn a_stopped_bridge_thread_leaves_lines_local_counted_offline_and_is_said_once() {
        // The thread's end of the outbox is gone, as after a panic on the bridge thread.
        let (outbox, outbound) = mpsc::channel(OUTBOX_CAPACITY);
        drop(outbound);
        let (_inbound, inbox) = inbox::inbox();
        let (_done_tx, done) = std_mpsc::channel();
        let bridge = Bridge {
            outbox,
            inbox,
            counters: Arc::new(BridgeCounters::default()),
            done,
            gone: std::cell::Cell::new(false),
            carry: None,
        };
        bridge.publish(vec![(None, Bytes::from_static(b"a\nb\n"))], 2);
        assert!(bridge.gone.get(), "the stop is noticed (and said)");
        bridge.publish(vec![(Some("x".into()), Bytes::from_static(b"c\n"))], 1);
        let offline = bridge.counters().dropped_offline.load(Ordering::Relaxed);
        assert_eq!(offline, 3);
    }

    #[test]
    fn the_loop_takes_whole_lines_within_its_budget() {
        let lines = Bytes::from_static(b"aa\nbbbb\nc\n");
        assert_eq!(
            split_within(lines.clone(), 8),
            (
                Bytes::from_static(b"aa\nbbbb\n"),
                Some(Bytes::from_static(b"c\n"))
            )
        );
        assert_eq!(split_within(lines.clone(), 100), (lines.clone(), None));
        assert_eq!(
            split_within(lines, 2),
            (
                Bytes::from_static(b"aa\n"),
                Some(Bytes::from_static(b"bbbb\nc\n"))
            ),
            "a line longer than the budget comes whole"
        );
    }
}
