//! The hand-out, as more `impl EventLoop`: the broadcast's batch goes to every open client
//! (one `writev` each, straight from the shared batch or its framing), when it is due or
//! held for coalescing; lines of clients closed meanwhile are kept and follow it.

use std::io::IoSlice;
use std::time::Instant;

use log::{trace, warn};
use mio::{Registry, Token};

use super::EventLoop;
use crate::broadcast::batch::Sender;
use crate::conn::connection::Member;
use crate::conn::reason::DisconnectReason;
use crate::observe::stats::Stats;

/// One hand-out of the batch in progress: what delivering to one client needs besides it.
pub(super) struct HandOut<'a> {
    pub(super) registry: &'a Registry,
    pub(super) max_queue: usize,
    pub(super) stats: &'a mut Stats,
    /// Clients that failed, closed once the hand-out is over.
    pub(super) doomed: &'a mut Vec<(Token, DisconnectReason)>,
}

impl HandOut<'_> {
    /// Sends `slices` (`lines` lines) to one open client and keeps its interest in step.
    pub(super) fn deliver(
        &mut self,
        token: Token,
        connection: &mut Member,
        slices: &mut [IoSlice<'_>],
        lines: usize,
    ) {
        if lines == 0 || !connection.is_open() {
            return;
        }
        let sent = connection.send(slices, self.max_queue);
        self.stats.bytes_out += sent.written as u64;
        if let Some(reason) = sent.failure {
            self.doomed.push((token, reason));
            return;
        }
        self.stats.deliveries += lines as u64;
        if let Err(e) = connection.update_interest(self.registry, token) {
            self.doomed.push((token, DisconnectReason::Error(e.kind())));
        }
    }
}

impl EventLoop {
    /// Hands out the batch and every kept unfinished line (a batch at a time), so that none
    /// reaches a client accepted after it.
    pub(super) fn hand_out_everything_framed(&mut self) {
        loop {
            self.hand_out();
            if self.broadcast.kept_lines.is_empty() || self.shutdown.is_some() {
                return;
            }
            self.take_kept_lines();
        }
    }

    /// Sends the batch now if it is due (see `Batch::due_at`), else makes sure the hold
    /// timer will wake the loop when it is.
    pub(super) fn hand_out_when_due(&mut self, now: Instant) {
        if self.shutdown.is_none() {
            // At shutdown they go out with the finales, at the finales' pace.
            self.take_kept_lines();
        }
        let Some(due) = self.broadcast.batch.due_at(now) else {
            return;
        };
        if due <= now {
            self.hand_out();
        } else if !self.turn.hold_timer.is_armed()
            && let Err(e) = self.turn.hold_timer.arm(due - now)
        {
            warn!("cannot arm the coalescing timer ({e}); sending at once");
            self.hand_out();
        }
    }

    /// Hands the batch to every open client: first each sender gets everyone else's lines
    /// (at most its runs + 1 slices), then every other client gets the whole batch as one
    /// slice. Clients that keep up get one `writev` straight from the batch; only what the
    /// kernel refuses is copied into a queue. Clients over `--max-queue` are disconnected.
    pub(super) fn hand_out(&mut self) {
        if self.broadcast.batch.is_empty() {
            return;
        }
        self.broadcast.hand_outs += 1;
        let id = self.broadcast.hand_outs;
        if !self.config.echo || self.nats.bridge.is_some() {
            self.broadcast.batch.index_senders();
        }
        self.publish_local_lines();
        if self.observe.stats.websocket_active > 0 {
            self.broadcast.framed.build(&self.broadcast.batch);
        }
        let mut hand_out = HandOut {
            registry: self.poll.registry(),
            max_queue: self.config.max_queue,
            stats: &mut self.observe.stats,
            doomed: &mut self.turn.doomed,
        };
        if !self.config.echo {
            let mut slices = Vec::new();
            for share in self.broadcast.batch.senders() {
                let Sender::Client(client) = share.sender() else {
                    continue; // lines from NATS: their sender is not here
                };
                let token = Token(client);
                let Some(connection) = self.connections.member_mut(token) else {
                    continue;
                };
                connection.mark_served_as_sender(id);
                slices.clear();
                let framed = &self.broadcast.framed;
                connection.form().share(&share, framed, &mut slices);
                hand_out.deliver(token, connection, &mut slices, share.lines_for_sender());
            }
        }
        let (batch, framed) = (&self.broadcast.batch, &self.broadcast.framed);
        for (token, connection) in self.connections.members_mut() {
            if !connection.was_served_as_sender(id) {
                let bytes = connection.form().whole(batch, framed);
                hand_out.deliver(token, connection, &mut [IoSlice::new(bytes)], batch.lines());
            }
        }
        trace!(
            "hand-out {id}: {} bytes, {} lines",
            self.broadcast.batch.len(),
            self.broadcast.batch.lines()
        );
        if let Some(history) = &mut self.broadcast.history {
            history.keep(self.broadcast.batch.whole());
            self.observe.stats.history = Some((history.lines() as u64, history.len() as u64));
        }
        self.broadcast.batch.clear(Instant::now());
        self.broadcast.framed.clear();
        self.close_doomed();
    }

    /// Closes the clients a pass over the map found failing (a slow consumer warned about,
    /// rate-limited), now that the pass is over.
    pub(super) fn close_doomed(&mut self) {
        for (token, reason) in std::mem::take(&mut self.turn.doomed) {
            if let DisconnectReason::SlowConsumer { queued } = reason
                && let Some(connection) = self.connections.member(token)
                && self.observe.warning_log.admit(Instant::now())
            {
                warn!(
                    "client {} (token {}) is a slow consumer: {queued} bytes queued, over \
                     --max-queue {}; disconnecting it",
                    connection.peer(),
                    token.0,
                    self.config.max_queue
                );
            }
            self.close(token, reason);
        }
    }

    /// Keeps the unfinished line of a client being closed, to be delivered with a `\n` like
    /// any line it sent: nothing the server read is lost, however the client goes.
    /// What the kernel already holds of the line's end is read first.
    pub(super) fn keep_unfinished_line(&mut self, token: Token, connection: &mut Member) {
        if connection.unfinished_line_len() > 0 {
            let mut line = Vec::new();
            connection.read_rest_of_line(&mut self.turn.scratch, self.config.max_line, &mut line);
            connection.end_unfinished_line(&mut line);
            if !line.is_empty() {
                let sender = Sender::Client(token.0);
                self.broadcast.kept_lines.push_back((sender, line));
            }
        }
    }

    /// Moves kept unfinished lines into the batch while it has space.
    pub(super) fn take_kept_lines(&mut self) {
        while self.broadcast.batch.free_space() > 0
            && let Some((sender, line)) = self.broadcast.kept_lines.pop_front()
        {
            self.broadcast.batch.append(sender, &line, 1);
            self.observe.stats.lines_in += 1;
        }
    }
}
