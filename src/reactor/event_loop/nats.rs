//! The loop's side of the NATS bridge, as more `impl EventLoop`: local lines gathered at
//! each hand-out and given to the bridge once a turn; lines from other instances taken into
//! the batch within a budget, under a sender of their own, and never published again.

use std::time::Duration;

use log::trace;

use super::{EventLoop, READ_BUDGET};
use bytes::Bytes;

use crate::bridge::{Bridge, Outbound};
use crate::broadcast::batch::{Batch, Sender};
use crate::broadcast::rooms::{MAIN, ONLY_ROOM};

/// The loop's side of the NATS bridge (`--nats`): the bridge thread's handle, whether
/// lines from NATS wait beyond this turn's intake, and local lines gathered for the next
/// publish.
pub(super) struct NatsLink {
    /// The NATS bridge, with `--nats`.
    pub(super) bridge: Option<Bridge>,
    /// Messages from NATS may be waiting (the waker fired, or the last turn's budget ran out).
    pub(super) waiting: bool,
    /// This turn's local lines for NATS, handed to the bridge once at the end of the turn.
    outgoing: LocalLines,
}

/// A turn's local lines for NATS by room (`None`: the one broadcast), consecutive
/// hand-outs of one room together.
#[derive(Debug, Default)]
struct LocalLines {
    by_room: Vec<(Option<Box<str>>, Vec<u8>)>,
    bytes: usize,
    lines: usize,
}

impl LocalLines {
    /// Adds `parts` (`lines` whole lines) of room `room`; a room with none adds no entry.
    fn add<'a>(&mut self, room: Option<&str>, parts: impl Iterator<Item = &'a [u8]>, lines: usize) {
        if lines == 0 {
            return;
        }
        if self
            .by_room
            .last()
            .is_none_or(|(last, _)| last.as_deref() != room)
        {
            self.by_room.push((room.map(Box::from), Vec::new()));
        }
        if let Some((_, bytes)) = self.by_room.last_mut() {
            let before = bytes.len();
            parts.for_each(|part| bytes.extend_from_slice(part));
            self.bytes += bytes.len() - before;
        }
        self.lines += lines;
    }

    /// Everything added, by room, and how many lines; `None` if nothing was.
    fn take(&mut self) -> Option<(Outbound, usize)> {
        if self.bytes == 0 {
            return None;
        }
        let by_room = std::mem::take(&mut self.by_room)
            .into_iter()
            .map(|(room, lines)| (room, Bytes::from(lines)))
            .collect();
        let lines = std::mem::take(&mut self.lines);
        self.bytes = 0;
        Some((by_room, lines))
    }
}

/// Most messages from NATS taken per turn, so that a flooding instance cannot starve this
/// one's clients, timers or signals; the rest wait in the bridge's bounded queue.
const NATS_BYTES_PER_TURN: usize = READ_BUDGET;

/// How long the exit waits for the bridge to hand its last lines to NATS (its own deadline
/// for that, and a little more).
pub(super) const NATS_FINAL_FLUSH: Duration =
    crate::bridge::FINAL_FLUSH.saturating_add(Duration::from_millis(200));

impl NatsLink {
    /// The loop's side of `bridge` (`None`: no `--nats`).
    pub(super) fn new(bridge: Option<Bridge>) -> NatsLink {
        NatsLink {
            bridge,
            waiting: false,
            outgoing: LocalLines::default(),
        }
    }

    /// Copies a hand-out's local lines (not those that came from NATS) of room `room`
    /// (`None` without `--rooms`) into the turn's lines for NATS. Call after
    /// `Batch::index_senders`.
    pub(super) fn gather(&mut self, batch: &Batch, room: Option<&str>) {
        if self.bridge.is_none() {
            return;
        }
        match batch
            .senders()
            .find(|share| share.sender() == Sender::Remote)
        {
            None => {
                let whole = std::iter::once(batch.whole());
                self.outgoing.add(room, whole, batch.lines());
            }
            Some(remote) => {
                let lines = remote.lines_for_sender();
                self.outgoing.add(room, remote.parts(), lines);
            }
        }
        // Many hand-outs in one turn: hand over a batch's worth at a time, so that one send
        // (and the bridge's queue of them) stays bounded in bytes.
        if self.outgoing.bytes >= batch.limit() {
            self.hand_over();
        }
    }

    /// Hands the turn's local lines to the bridge: one non-blocking send per turn.
    pub(super) fn hand_over(&mut self) {
        if let Some(bridge) = &self.bridge
            && let Some((by_room, lines)) = self.outgoing.take()
        {
            bridge.publish(by_room, lines);
        }
    }
}

impl EventLoop {
    /// Appends lines other instances published (through the bridge) to their room's batch,
    /// as from no client: every member gets them; lines for a room that has no members here
    /// go nowhere (counted as received). At most `NATS_BYTES_PER_TURN` a turn, as one
    /// client's read budget (a message of a million empty lines is spread over turns like a
    /// client's input); none once shutdown began (its final batches are paced for the
    /// clients' queues). A line longer than our `--max-line` is dropped (counted), so the
    /// batch keeps its bound.
    pub(super) fn take_lines_from_nats(&mut self) {
        let max_line = self.config.max_line;
        self.nats.waiting = false;
        if self.shutdown.is_some() {
            return;
        }
        let mut taken = 0;
        while taken < NATS_BYTES_PER_TURN {
            let budget = NATS_BYTES_PER_TURN - taken;
            let Some(message) = self.nats.bridge.as_mut().and_then(|b| b.take_lines(budget)) else {
                break;
            };
            taken += message.lines.len();
            let room = match self.rooms.is_named() {
                false => Some(ONLY_ROOM),
                true => self.rooms.find(message.room.as_deref().unwrap_or(MAIN)),
            };
            let (mut received, mut dropped) = (0, 0);
            for line in message.lines.split_inclusive(|&b| b == b'\n') {
                if line.len() > max_line + 1 {
                    dropped += 1;
                    continue;
                }
                received += 1;
                if let Some(id) = room {
                    self.append_line(id, Sender::Remote, line);
                }
            }
            // Counted once a message, not once a line (the counters are shared atomics).
            if let Some(bridge) = &self.nats.bridge {
                bridge.count_received(received);
                bridge.counters().count_inbound_drop(dropped);
            }
        }
        trace!("nats: took {taken} bytes");
        // The budget ran out before the inbox did: more may be waiting.
        self.nats.waiting = taken >= NATS_BYTES_PER_TURN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_lines_keep_rooms_apart_and_rooms_without_lines_leave_no_trace() {
        let mut local = LocalLines::default();
        for _ in 0..1000 {
            local.add(Some("a"), std::iter::empty(), 0); // a hand-out of NATS lines only
            local.add(Some("b"), std::iter::empty(), 0);
        }
        assert!(local.by_room.is_empty());
        assert!(local.take().is_none());
        local.add(Some("a"), [&b"1\n"[..]].into_iter(), 1);
        local.add(Some("a"), [&b"2\n"[..], &b"3\n"[..]].into_iter(), 2);
        local.add(None, [&b"m\n"[..]].into_iter(), 1);
        let (by_room, lines) = local.take().unwrap();
        assert_eq!(lines, 4);
        assert_eq!(
            by_room,
            [
                (Some("a".into()), Bytes::from_static(b"1\n2\n3\n")),
                (None, Bytes::from_static(b"m\n"))
            ]
        );
        assert!(local.take().is_none());
    }
}
