//! A client connection's side of the turn, as more `impl EventLoop`: its readiness, its
//! read into the batch, its flushes, how it is sent away (a farewell, then draining) and
//! the one place it is closed, logged and counted.

use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::Token;
use mio::event::Event;

use super::{EventLoop, READ_BUDGET};
use crate::conn::connection::{Member, Phase, ReadEnd, ReadReport};
use crate::conn::reason::DisconnectReason;
use crate::conn::wire::Liveness;
use crate::reactor::connections::Stage;

/// How long a client that broke the line limit has to read its `ERR` line.
const REJECT_LINGER: Duration = Duration::from_secs(2);

/// How often leaving clients are checked for having received everything.
pub(super) const DRAIN_TICK: Duration = Duration::from_millis(10);

impl EventLoop {
    /// Readiness for a connection, dispatched by its stage. The token may belong to a
    /// connection closed earlier in this same batch of events: that is normal, and the event
    /// is ignored.
    pub(super) fn on_client_event(&mut self, token: Token, event: &Event) {
        match self.connections.stage_of(token) {
            Some(Stage::Member) => {}
            Some(stage) => return self.move_on(token, stage),
            None => return trace!("event for closed token {} ignored", token.0),
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.on_readable(token);
        }
        if event.is_writable() || event.is_write_closed() {
            self.on_writable(token);
        }
    }

    /// Reads one turn's worth from a client into the batch (once per turn). A leaving
    /// client's input is read only to be discarded; after a stop signal an open client's
    /// input is taken only through the shutdown's finales.
    pub(super) fn on_readable(&mut self, token: Token) {
        let Some(connection) = self.connections.member_mut(token) else {
            return;
        };
        let open = connection.is_open();
        if open && self.shutdown.is_some() {
            return;
        }
        if !connection.claim_read_turn(self.turn.number) {
            return; // already read this turn; if its budget ran out it is queued for the next
        }
        // A leaving client's input is discarded: its reads need no room in a batch.
        let room = connection.room();
        let budget = match room.and_then(|id| self.rooms.get(id)) {
            Some(room) => READ_BUDGET.min(room.broadcast.batch.limit()),
            None => READ_BUDGET,
        };
        if let Some(id) = room
            && self
                .rooms
                .get(id)
                .is_some_and(|room| room.broadcast.batch.free_space() < budget)
        {
            self.hand_out(id);
        }
        let Some(report) = self.read_into_batch(token, budget) else {
            return;
        };
        if report.wants_flush {
            self.flush_after_read(token);
        }
        match report.end {
            ReadEnd::WouldBlock => {}
            ReadEnd::BudgetSpent => self.turn.carried.push(token),
            ReadEnd::Closed(
                reason @ (DisconnectReason::LineTooLong | DisconnectReason::HttpRequest),
            ) => self.reject_line(token, reason),
            ReadEnd::Closed(
                reason @ (DisconnectReason::WebSocketClosed { .. }
                | DisconnectReason::WebSocketViolation { .. }),
            ) if open => self.send_away(token, reason),
            // A leaving client that half-closes may still be reading what it is owed: keep
            // flushing until it has everything or its deadline (its writes fail if it is
            // really gone).
            ReadEnd::Closed(DisconnectReason::ClientClosed) if !open => {}
            ReadEnd::Closed(reason) => self.close(token, reason),
        }
    }

    /// Reads up to `budget` bytes from a client, appending the lines it completes to its
    /// room's batch (with `--rooms`, obeying the commands among them). The caller made sure
    /// the batch has room for `budget` more bytes.
    pub(super) fn read_into_batch(&mut self, token: Token, budget: usize) -> Option<ReadReport> {
        if let Some(obeyed) = self.obey_deferred_lines(token) {
            // Its turn goes to the lines its last one left; the socket is read on the next
            // (it is carried: no event would come for input already waiting).
            return Some(ReadReport {
                read: 0,
                framed: 0,
                lines: 0,
                end: ReadEnd::BudgetSpent,
                wants_flush: obeyed.commands > 0,
            });
        }
        let max_line = self.config.max_line;
        let connection = self.connections.member_mut(token)?;
        let id = connection.room();
        let incoming = if connection.is_open() {
            budget + connection.unfinished_line_len()
        } else {
            0
        };
        let mut discarded = Vec::new(); // a leaving client's: nothing is framed
        let (start, lines_out) = match id.and_then(|id| self.rooms.get_mut(id)) {
            Some(room) => {
                let batch = &mut room.broadcast.batch;
                (batch.len(), batch.bytes_for(incoming))
            }
            None => (0, &mut discarded),
        };
        let mut report = connection.read_until_would_block(
            &mut self.turn.scratch[..budget],
            max_line,
            lines_out,
        );
        self.observe.stats.bytes_in += report.framed as u64;
        if let Some(id) = id {
            let obeyed = self.take_framed_lines(token, id, start, report.lines);
            report.wants_flush |= obeyed.commands > 0; // replies to send
            if obeyed.deferred && report.end == ReadEnd::WouldBlock {
                report.end = ReadEnd::BudgetSpent;
            }
        }
        trace!(
            "token {}: read {} bytes, {} lines",
            token.0, report.read, report.lines
        );
        Some(report)
    }

    /// Moves on the connections carried from the last turn (a read, a handshake step or
    /// a request's reading stopped at its budget with input waiting: no event will say
    /// so), those of the stages `now` picks, each once, by its stage.
    pub(super) fn serve_carried(&mut self, carried: &[Token], now: impl Fn(Stage) -> bool) {
        for &token in carried {
            if let Some(stage) = self.connections.stage_of(token).filter(|&stage| now(stage)) {
                self.move_on(token, stage);
            }
        }
    }

    /// Moves a connection in `stage` on, as an event would (a member: its read).
    fn move_on(&mut self, token: Token, stage: Stage) {
        match stage {
            Stage::Handshake => self.on_handshake_event(token),
            Stage::Request => self.on_web_event(token),
            Stage::Member => self.on_readable(token),
        }
    }

    /// Sends what a read produced for the client itself: pongs its pings called for, TLS
    /// records (key updates, session tickets). A client that pings without reading is a
    /// slow consumer like any other.
    pub(super) fn flush_after_read(&mut self, token: Token) {
        let Some(connection) = self.connections.member(token) else {
            return;
        };
        let queued = connection.queued();
        if connection.is_open() && queued > self.config.max_queue {
            self.close(token, DisconnectReason::SlowConsumer { queued });
        } else {
            self.on_writable(token);
        }
    }

    /// Lets a WebSocket client that closed, or broke the protocol, go: it gets its Close
    /// frame after what is queued for it, then the connection is closed.
    pub(super) fn send_away(&mut self, token: Token, reason: DisconnectReason) {
        if let DisconnectReason::WebSocketViolation { .. } = reason
            && let Some(connection) = self.connections.member(token)
            && self.observe.warning_log.admit(Instant::now())
        {
            warn!(
                "client {} (token {}): {reason}; disconnecting it",
                connection.peer(),
                token.0
            );
        }
        self.bid_farewell(token, reason);
    }

    /// Sends an open client away for `reason`: reset at once if it is behind in frames,
    /// else its farewell after its queue, and closed once it has them (or at the linger's
    /// end).
    fn bid_farewell(&mut self, token: Token, reason: DisconnectReason) {
        if self.reset_if_behind(token, reason) {
            return;
        }
        self.begin_drain(token, reason, Instant::now() + REJECT_LINGER);
        self.on_writable(token);
    }

    /// A WebSocket client sent away while output is still queued for it is reset at once
    /// (its queue dropped: where the frame being sent ends is not known, so no Close frame
    /// can follow it), so that a leaving client holds no memory. True if it was.
    pub(super) fn reset_if_behind(&mut self, token: Token, reason: DisconnectReason) -> bool {
        let behind = self
            .connections
            .member(token)
            .is_some_and(Member::is_behind_in_frames);
        if behind {
            self.close(token, reason);
        }
        behind
    }

    /// Sends away a client whose line cannot be broadcast (`reason`: a line over
    /// `--max-line`, or an HTTP request on the line port): a farewell (`ERR` line, or
    /// WebSocket Close 1009), then it drains; the line is never broadcast.
    pub(super) fn reject_line(&mut self, token: Token, reason: DisconnectReason) {
        let max_line = self.config.max_line;
        let Some(connection) = self.connections.member_mut(token) else {
            return;
        };
        if self.observe.warning_log.admit(Instant::now()) {
            let what = match reason {
                DisconnectReason::HttpRequest => {
                    "sent an HTTP request (a web page posting to the line port?)".to_string()
                }
                _ => format!("sent a line longer than {max_line} bytes"),
            };
            warn!(
                "client {} (token {}) {what}; disconnecting it",
                connection.peer(),
                token.0
            );
        }
        // It is being sent away: it keeps no more than its farewell and the rest of the line
        // it is receiving, not a whole queue, now that it no longer counts as a client.
        connection.discard_queued_lines();
        self.bid_farewell(token, reason);
    }

    /// Moves an open client to leaving: after its queue and its farewell (an `ERR` line or a
    /// WebSocket Close frame, by reason) are flushed it is shut down and closed, or reset at
    /// `deadline`.
    pub(super) fn begin_drain(
        &mut self,
        token: Token,
        reason: DisconnectReason,
        deadline: Instant,
    ) {
        // What it sent before it is sent away goes where it asked (`--rooms`).
        self.route_deferred_lines(token);
        let Some(connection) = self.connections.member_mut(token) else {
            return;
        };
        if !connection.is_open() {
            // Already leaving (e.g. lingering after an ERR): no later than this deadline.
            connection.shorten_deadline(deadline);
            return;
        }
        let farewell = connection.farewell(reason, self.config.max_line);
        connection.begin_drain(reason, &farewell, deadline, self.config.max_queue);
        self.leaving.insert(token);
        self.leave_room(token);
    }

    /// Flushes a client's queue; closes it when it fails or, if leaving, when it is done.
    pub(super) fn on_writable(&mut self, token: Token) {
        let Some(connection) = self.connections.member_mut(token) else {
            return;
        };
        match connection.flush() {
            Ok(written) => self.observe.stats.bytes_out += written as u64,
            Err(reason) => return self.close(token, reason),
        }
        if let Phase::Draining { reason, .. } = connection.phase()
            && connection.drained()
        {
            return self.close(token, reason);
        }
        if let Err(e) = connection.update_interest(self.poll.registry(), token) {
            self.close(token, DisconnectReason::Error(e.kind()));
        }
    }

    /// Removes a client for good; the one place a disconnect is logged and counted.
    pub(super) fn close(&mut self, token: Token, reason: DisconnectReason) {
        // What it sent before it went goes where it asked (`--rooms`); obeying may close it
        // itself (a reply over `--max-queue`), and then it is closed already.
        self.route_deferred_lines(token);
        let Some(mut connection) = self.connections.remove_member(token) else {
            return;
        };
        // A client that was being sent away is counted for why it was sent away, however
        // it then went (a TLS client that leaves our close_notify unread resets). At
        // shutdown a failure (reset, the drain's timeout) is counted as what it is.
        let reason = match connection.phase() {
            Phase::Draining {
                reason: sent_away, ..
            } => {
                self.leaving.remove(&token);
                if reason == DisconnectReason::ClientClosed
                    || sent_away != DisconnectReason::Shutdown
                {
                    sent_away
                } else {
                    reason
                }
            }
            Phase::Open => {
                self.keep_unfinished_line(token, &mut connection);
                reason
            }
        };
        if let Some(room) = connection.move_to(None) {
            self.rooms.leave(room, token.0, connection.form());
        }
        if let Err(e) = connection.deregister(self.poll.registry()) {
            debug!("token {}: deregister: {e}", token.0);
        }
        // Output dropped here makes the close a reset, so the client can tell it was cut
        // (a FIN would look like the clean end of its stream).
        if (reason.abandons_output() || connection.queued() > 0)
            && let Err(e) = connection.reset_on_close()
        {
            debug!("token {}: SO_LINGER: {e}", token.0);
        }
        self.observe
            .stats
            .disconnected(reason.ending(), connection.kind());
        info!(
            "client {} disconnected (token {}): {reason}",
            connection.peer(),
            token.0
        );
        self.admission.descriptor_freed();
    }

    /// Closes leaving clients that have everything, or whose deadline passed.
    pub(super) fn sweep_leaving(&mut self, now: Instant) {
        let leaving: Vec<Token> = self.leaving.iter().copied().collect();
        for token in leaving {
            let Some(connection) = self.connections.member_mut(token) else {
                continue;
            };
            let Phase::Draining {
                reason, deadline, ..
            } = connection.phase()
            else {
                continue;
            };
            if connection.drained() {
                self.close(token, reason);
            } else if deadline <= now {
                let reason = match reason {
                    DisconnectReason::Shutdown => DisconnectReason::ShutdownTimeout {
                        unsent: connection.unsent(),
                    },
                    other => other,
                };
                self.close(token, reason);
            }
        }
    }

    /// Pings WebSocket clients silent for `interval`, and drops those pinged that stayed
    /// silent for another.
    pub(super) fn check_websocket_liveness(&mut self, now: Instant, interval: Duration) {
        if self.observe.stats.websocket_active == 0 {
            return;
        }
        let mut pinged = Vec::new();
        for (token, connection) in self.connections.members_mut() {
            match connection.check_liveness(now, interval) {
                Liveness::Fine => {}
                Liveness::Ping => pinged.push(token),
                Liveness::Gone => self
                    .turn
                    .doomed
                    .push((token, DisconnectReason::PingTimeout)),
            }
        }
        for token in pinged {
            self.on_writable(token);
        }
        self.close_doomed();
    }
}
