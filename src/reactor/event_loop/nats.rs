//! The loop's side of the NATS bridge, as more `impl EventLoop`: local lines gathered at
//! each hand-out and given to the bridge once a turn; lines from other instances taken into
//! the batch within a budget, under a sender of their own, and never published again.

use std::time::Duration;

use log::trace;

use super::{EventLoop, READ_BUDGET};
use crate::bridge::Bridge;
use crate::broadcast::batch::Sender;

/// The loop's side of the NATS bridge (`--nats`): the bridge thread's handle, whether
/// lines from NATS wait beyond this turn's intake, and local lines gathered for the next
/// publish.
pub(super) struct NatsLink {
    /// The NATS bridge, with `--nats`.
    pub(super) bridge: Option<Bridge>,
    /// Messages from NATS may be waiting (the waker fired, or the last turn's budget ran out).
    pub(super) waiting: bool,
    /// This turn's local lines for NATS, handed to the bridge once at the end of the turn.
    pub(super) outgoing: Vec<u8>,
    pub(super) outgoing_lines: usize,
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
            outgoing_lines: 0,
        }
    }
}

impl EventLoop {
    /// Copies this hand-out's local lines (not those that came from NATS) into the turn's
    /// buffer for NATS. Call after `Batch::index_senders`.
    pub(super) fn publish_local_lines(&mut self) {
        if self.nats.bridge.is_none() {
            return;
        }
        match self
            .broadcast
            .batch
            .senders()
            .find(|share| share.sender() == Sender::Remote)
        {
            None => {
                self.nats
                    .outgoing
                    .extend_from_slice(self.broadcast.batch.whole());
                self.nats.outgoing_lines += self.broadcast.batch.lines();
            }
            Some(remote) => {
                for part in remote.parts() {
                    self.nats.outgoing.extend_from_slice(part);
                }
                self.nats.outgoing_lines += remote.lines_for_sender();
            }
        }
        // Many hand-outs in one turn: hand over a batch's worth at a time, so that one send
        // (and the bridge's queue of them) stays bounded in bytes.
        if self.nats.outgoing.len() >= self.broadcast.batch.limit() {
            self.hand_lines_to_nats();
        }
    }

    /// Hands the turn's local lines to the bridge: one non-blocking send per turn.
    pub(super) fn hand_lines_to_nats(&mut self) {
        if let Some(bridge) = &self.nats.bridge
            && !self.nats.outgoing.is_empty()
        {
            bridge.publish(
                std::mem::take(&mut self.nats.outgoing),
                self.nats.outgoing_lines,
            );
            self.nats.outgoing_lines = 0;
        }
    }

    /// Appends lines other instances published (through the bridge) to the batch, as from
    /// no client: every client gets them. At most `NATS_BYTES_PER_TURN` a turn, as one
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
            taken += message.len();
            let (mut received, mut dropped) = (0, 0);
            for line in message.split_inclusive(|&b| b == b'\n') {
                if line.len() > max_line + 1 {
                    dropped += 1;
                    continue;
                }
                if self.broadcast.batch.free_space() < line.len() {
                    self.hand_out();
                }
                self.broadcast.batch.append(Sender::Remote, line, 1);
                received += 1;
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
