//! The loop's side of the NATS bridge, as more `impl EventLoop`: local lines gathered at
//! each hand-out and given to the bridge once a turn; lines from other instances taken into
//! the batch within a budget, under a sender of their own, and never published again.

use std::time::Duration;

use log::trace;

use super::{EventLoop, READ_BUDGET};
use bytes::Bytes;

use crate::bridge::Bridge;
use crate::broadcast::batch::{Batch, Sender};
use crate::broadcast::rooms::MAIN;

/// The loop's side of the NATS bridge (`--nats`): the bridge thread's handle, whether
/// lines from NATS wait beyond this turn's intake, and local lines gathered for the next
/// publish.
pub(super) struct NatsLink {
    /// The NATS bridge, with `--nats`.
    pub(super) bridge: Option<Bridge>,
    /// Messages from NATS may be waiting (the waker fired, or the last turn's budget ran out).
    pub(super) waiting: bool,
    /// This turn's local lines for NATS by room (`None`: the one broadcast), consecutive
    /// hand-outs of a room together; handed to the bridge once at the end of the turn.
    outgoing: Vec<(Option<Box<str>>, Vec<u8>)>,
    outgoing_bytes: usize,
    outgoing_lines: usize,
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
            outgoing: Vec::new(),
            outgoing_bytes: 0,
            outgoing_lines: 0,
        }
    }

    /// Copies a hand-out's local lines (not those that came from NATS) of room `room`
    /// (`None` without `--rooms`) into the turn's lines for NATS. Call after
    /// `Batch::index_senders`.
    pub(super) fn gather(&mut self, batch: &Batch, room: Option<&str>) {
        if self.bridge.is_none() {
            return;
        }
        if self
            .outgoing
            .last()
            .is_none_or(|(last, _)| last.as_deref() != room)
        {
            self.outgoing.push((room.map(Box::from), Vec::new()));
        }
        let Some((_, lines)) = self.outgoing.last_mut() else {
            return;
        };
        let before = lines.len();
        match batch
            .senders()
            .find(|share| share.sender() == Sender::Remote)
        {
            None => {
                lines.extend_from_slice(batch.whole());
                self.outgoing_lines += batch.lines();
            }
            Some(remote) => {
                for part in remote.parts() {
                    lines.extend_from_slice(part);
                }
                self.outgoing_lines += remote.lines_for_sender();
            }
        }
        self.outgoing_bytes += lines.len() - before;
        // Many hand-outs in one turn: hand over a batch's worth at a time, so that one send
        // (and the bridge's queue of them) stays bounded in bytes.
        if self.outgoing_bytes >= batch.limit() {
            self.hand_over();
        }
    }

    /// Hands the turn's local lines to the bridge: one non-blocking send per turn.
    pub(super) fn hand_over(&mut self) {
        if let Some(bridge) = &self.bridge
            && self.outgoing_bytes > 0
        {
            let outbound = std::mem::take(&mut self.outgoing)
                .into_iter()
                .filter(|(_, lines)| !lines.is_empty())
                .map(|(room, lines)| (room, Bytes::from(lines)))
                .collect();
            bridge.publish(outbound, self.outgoing_lines);
            self.outgoing_lines = 0;
            self.outgoing_bytes = 0;
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
            let room = match (self.rooms.is_named(), message.room.as_deref()) {
                (false, _) => Some(0),
                (true, name) => self.rooms.find(name.unwrap_or(MAIN)),
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
