//! The queue of lines from NATS to the loop, bounded in messages and in bytes: the bridge
//! thread sends, the loop takes, and shared counts keep the messages and bytes waiting (so a
//! server that allows 64 MiB messages cannot make many of them wait). The channel itself
//! grows with what waits, so an idle instance holds nothing, while a burst of small
//! messages (the backlog of an instance that was stopped for seconds, or of a route that
//! was cut) fits: the loop takes them at its read budget's pace.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use bytes::Bytes;

/// Lines from NATS for one room: `None` is the subject itself (room `main`, or the one
/// broadcast without `--rooms`), `Some(NAME)` its `SUBJECT.NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub room: Option<Box<str>>,
    pub lines: Bytes,
}

impl Inbound {
    /// Lines for the subject itself.
    pub fn main(lines: Bytes) -> Inbound {
        Inbound { room: None, lines }
    }
}

/// Messages waiting for the loop; past this they are refused. (32 was too few: a 3 s stop
/// of an instance, at 200 one-line messages a second, lost 570 lines on resuming.)
const CAPACITY: usize = 65_536;
/// Bytes waiting for the loop; past this messages are refused (one larger message still
/// fits an empty queue, so that no message is too large to ever pass).
const BYTES: usize = 32 * 1024 * 1024;

/// A new queue: the bridge thread's end and the loop's end.
pub fn inbox() -> (InboxSender, InboxReceiver) {
    let (tx, rx) = mpsc::channel();
    let waiting = Arc::new(Waiting::default());
    let receiver = InboxReceiver {
        rx,
        waiting: Arc::clone(&waiting),
    };
    (InboxSender { tx, waiting }, receiver)
}

/// What waits in the queue.
#[derive(Debug, Default)]
struct Waiting {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

/// The bridge thread's end.
pub struct InboxSender {
    tx: mpsc::Sender<Inbound>,
    waiting: Arc<Waiting>,
}

impl InboxSender {
    /// Queues `lines` if there is room for them; false if they were refused.
    pub fn try_send(&self, lines: Inbound) -> bool {
        let size = lines.lines.len();
        let Waiting { messages, bytes } = &*self.waiting;
        // Counted before it is sent (the loop may take it at once), given back if refused.
        let before = bytes.fetch_add(size, Ordering::Relaxed);
        let queued = messages.fetch_add(1, Ordering::Relaxed);
        let fits = queued < CAPACITY && (before == 0 || before + size <= BYTES);
        if fits && self.tx.send(lines).is_ok() {
            return true;
        }
        bytes.fetch_sub(size, Ordering::Relaxed);
        messages.fetch_sub(1, Ordering::Relaxed);
        false
    }
}

/// The loop's end.
pub struct InboxReceiver {
    rx: mpsc::Receiver<Inbound>,
    waiting: Arc<Waiting>,
}

impl InboxReceiver {
    /// The next message waiting, if any.
    pub fn try_recv(&self) -> Option<Inbound> {
        let lines = self.rx.try_recv().ok()?;
        self.waiting
            .bytes
            .fetch_sub(lines.lines.len(), Ordering::Relaxed);
        self.waiting.messages.fetch_sub(1, Ordering::Relaxed);
        Some(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_in_bytes_but_a_large_message_fits_an_empty_one() {
        let (tx, rx) = inbox();
        let half = Bytes::from(vec![b'\n'; BYTES / 2]);
        assert!(tx.try_send(Inbound::main(half.clone())));
        assert!(tx.try_send(Inbound::main(half.clone())));
        assert!(
            !tx.try_send(Inbound::main(Bytes::from_static(b"x\n"))),
            "full by bytes"
        );
        assert_eq!(rx.try_recv().map(|m| m.lines.len()), Some(BYTES / 2));
        assert!(tx.try_send(Inbound::main(Bytes::from_static(b"x\n"))));
        while rx.try_recv().is_some() {}
        assert!(
            tx.try_send(Inbound::main(Bytes::from(vec![b'\n'; BYTES * 2]))),
            "alone, it fits"
        );
        assert!(!tx.try_send(Inbound::main(Bytes::from_static(b"x\n"))));
    }

    #[test]
    fn the_queue_is_bounded_in_messages() {
        let (tx, rx) = inbox();
        for _ in 0..CAPACITY {
            assert!(tx.try_send(Inbound::main(Bytes::from_static(b"x\n"))));
        }
        assert!(!tx.try_send(Inbound::main(Bytes::from_static(b"x\n"))));
        assert!(rx.try_recv().is_some());
        assert!(
            tx.try_send(Inbound::main(Bytes::from_static(b"x\n"))),
            "and a refusal gave its bytes back"
        );
    }
}
