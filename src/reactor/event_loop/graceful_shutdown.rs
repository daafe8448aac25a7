//! The event loop's graceful shutdown, step by step: what happens between the first stop
//! signal and the exit.
//!
//! 1. At the signal: stop accepting, and note for each open client how many bytes of its
//!    input are already in the kernel (`FIONREAD`); input that arrives later is not taken.
//! 2. Finales: that input, and each client's unfinished line (ended with a `\n`, after
//!    reading what the kernel already holds of its end), is framed and handed out one batch
//!    at a time, each batch once every client has space for it in its `--max-queue`; a
//!    client that has had no space for `SHUTDOWN_PATIENCE` is not waited for again (it gets
//!    the batches like everyone else, and is a slow consumer if it overflows). So a reader
//!    that keeps up gets every line, and memory stays within the same bounds as in normal
//!    running.
//! 3. Drain: every client is flushed, shut down for writing and closed once it has
//!    acknowledged everything, or reset at the deadline.
//!
//! Finales may use three quarters of `--shutdown-timeout`; what they have not handed out by
//! then is dropped with a warning, so the drain always has time left.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::Token;

use super::{EventLoop, READ_BUDGET};
use crate::conn::connection::{Member, ReadEnd, ReadReport};
use crate::conn::reason::DisconnectReason;
use crate::reactor::connections::{ClientConnection, Stage};
use crate::reactor::shutdown::{Finale, Shutdown};

/// How long the next batch of final lines waits for a client that has no space for it.
pub(super) const SHUTDOWN_PATIENCE: Duration = Duration::from_millis(500);

impl EventLoop {
    /// Step 1: stops accepting and plans the finales (see the module doc).
    pub(super) fn begin_shutdown(&mut self, signal: &str) {
        let now = Instant::now();
        let timeout = self.config.shutdown_timeout;
        for mut listener in [self.listeners.lines.take(), self.listeners.web.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = self.poll.registry().deregister(&mut listener) {
                debug!("deregister listener: {e}");
            }
        }
        self.close_handshakes_and_requests();
        self.admission.pause = None;
        self.listeners.more_to_accept = [false; 2];
        // From now on open clients are read only through their finales; leaving clients
        // still need their reads (to discard input and notice a close).
        let connections = &self.connections;
        self.turn
            .carried
            .retain(|&token| connections.member(token).is_some_and(|c| !c.is_open()));
        let mut finales: Vec<Finale> = self
            .connections
            .members_mut()
            .filter(|(_, connection)| connection.is_open())
            .map(|(token, connection)| Finale {
                token,
                unread: connection.unread_input(),
            })
            .collect();
        finales.sort_unstable_by_key(|finale| finale.token);
        let unread: usize = finales.iter().map(|finale| finale.unread).sum();
        let unfinished: usize = self
            .connections
            .members()
            .filter(|(_, connection)| connection.is_open())
            .map(|(_, connection)| connection.unfinished_line_len())
            .sum();
        let queued: usize = self.connections.members().map(|(_, c)| c.queued()).sum();
        info!(
            "received {signal}: shutting down, flushing {queued} bytes to {} clients and \
             delivering {} bytes already received ({unfinished} in unfinished lines), for up \
             to {:.1} s",
            self.connections.count(Stage::Member),
            unread + unfinished + self.rooms.framed_bytes(),
            timeout.as_secs_f64()
        );
        self.shutdown = Some(Shutdown {
            deadline: now + timeout,
            finales_deadline: now + timeout.mul_f64(0.75),
            finales: finales.into(),
            blocked_since: None,
            not_waited_for: HashSet::new(),
            draining: false,
        });
        // Lines a member's last turn left (`--rooms`) came before the signal: obeyed now,
        // before its finale's input, so that its lines keep their order.
        for token in self.connections.tokens_in(Stage::Member) {
            self.route_deferred_lines(token);
        }
    }

    /// Moves a shutdown on, once per turn: hands out batches of final lines while every
    /// client has space for them, then (finales done, or out of time) starts the drain.
    pub(super) fn continue_shutdown(&mut self, now: Instant) {
        let Some(shutdown) = &self.shutdown else {
            return;
        };
        if shutdown.draining {
            return;
        }
        let (finales_deadline, deadline) = (shutdown.finales_deadline, shutdown.deadline);
        while self.finales_pending() {
            if now >= finales_deadline {
                self.drop_finales();
                break;
            }
            if !self.may_hand_out_next_batch(now) {
                return;
            }
            self.hand_out_finales();
        }
        self.begin_draining_everyone(deadline);
    }

    /// Whether input received before the stop signal still waits to be handed out.
    pub(super) fn finales_pending(&self) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|s| !s.finales.is_empty())
            || self.rooms.kept_lines_waiting()
    }

    /// When a batch of final lines waits for a client to make space: the end of its patience.
    pub(super) fn finales_wake_at(&self) -> Option<Instant> {
        let shutdown = self.shutdown.as_ref().filter(|s| !s.draining)?;
        let blocked_since = shutdown.blocked_since?;
        Some((blocked_since + SHUTDOWN_PATIENCE).min(shutdown.finales_deadline))
    }

    /// Whether every open client has space in its queue for one more batch (with the line
    /// that may complete it). A client without space is waited for `SHUTDOWN_PATIENCE`, once:
    /// after that it is not waited for again.
    fn may_hand_out_next_batch(&mut self, now: Instant) -> bool {
        let need = self.config.batch_limit() + self.config.max_line + 1;
        let max_queue = self.config.max_queue;
        let Some(shutdown) = &mut self.shutdown else {
            return false;
        };
        let blocking: Vec<Token> = self
            .connections
            .members()
            .filter(|(token, c)| {
                c.is_open()
                    && c.queued().saturating_add(need) > max_queue
                    && !shutdown.not_waited_for.contains(token)
            })
            .map(|(token, _)| token)
            .collect();
        if blocking.is_empty() {
            shutdown.blocked_since = None;
            return true;
        }
        let since = *shutdown.blocked_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= SHUTDOWN_PATIENCE {
            shutdown.not_waited_for.extend(blocking);
            shutdown.blocked_since = None;
            return true;
        }
        false
    }

    /// Frames finales into their rooms' batches until the next one's is full or they are
    /// done, then hands every batch out: each client's input received before the signal,
    /// then the rest of its unfinished line if the kernel already has it, then what is
    /// still unfinished, with a `\n`. Each client is in one room, so it receives at most one
    /// batch a step.
    fn hand_out_finales(&mut self) {
        for id in self.rooms.pending_now() {
            self.take_kept_lines(id);
        }
        while let Some(&finale) = self.shutdown.as_ref().and_then(|s| s.finales.front()) {
            let space = self.free_space_for(finale.token);
            if space == 0 {
                break;
            }
            let open = self
                .connections
                .member(finale.token)
                .is_some_and(Member::is_open);
            if !open && finale.unread > 0 {
                warn!(
                    "{} bytes of input from token {} were not delivered: the client was \
                     disconnected before its turn at shutdown",
                    finale.unread, finale.token.0
                );
            }
            let budget = finale.unread.min(space).min(READ_BUDGET);
            let report = match budget {
                _ if !open => None,
                0 => Some(ReadReport {
                    read: 0,
                    framed: 0,
                    lines: 0,
                    end: ReadEnd::WouldBlock,
                    wants_flush: false,
                }),
                _ => self.read_into_batch(finale.token, budget),
            };
            let unread = finale.unread - report.map_or(0, |r| r.read).min(finale.unread);
            let finished = match report.map(|r| r.end) {
                None => true,
                Some(ReadEnd::BudgetSpent) if unread > 0 => false,
                // The read filled the batch: the line's end goes in the next one, so that
                // the batch stays within its bound.
                Some(ReadEnd::WouldBlock | ReadEnd::BudgetSpent)
                    if self.free_space_for(finale.token) == 0 =>
                {
                    false
                }
                Some(ReadEnd::WouldBlock | ReadEnd::BudgetSpent) => {
                    self.finish_unfinished_line(finale.token);
                    true
                }
                Some(ReadEnd::Closed(
                    reason @ (DisconnectReason::LineTooLong | DisconnectReason::HttpRequest),
                )) => {
                    self.reject_line(finale.token, reason);
                    true
                }
                Some(ReadEnd::Closed(
                    reason @ (DisconnectReason::WebSocketClosed { .. }
                    | DisconnectReason::WebSocketViolation { .. }),
                )) => {
                    self.send_away(finale.token, reason);
                    true
                }
                Some(ReadEnd::Closed(reason)) => {
                    self.close(finale.token, reason);
                    true
                }
            };
            if let Some(shutdown) = &mut self.shutdown {
                if finished {
                    shutdown.finales.pop_front();
                } else if let Some(front) = shutdown.finales.front_mut() {
                    front.unread = unread;
                }
            }
        }
        self.hand_out_all();
    }

    /// Space left in the batch of the room `token` is in (any, if it is in none: it is
    /// leaving, and its input goes nowhere).
    fn free_space_for(&self, token: Token) -> usize {
        self.connections
            .member(token)
            .and_then(Member::room)
            .and_then(|id| self.rooms.get(id))
            .map_or(usize::MAX, |room| room.broadcast.batch.free_space())
    }

    /// Appends a client's unfinished line to its room's batch: first what the kernel
    /// already holds of its end, then, if it is still unfinished, with a `\n` (with
    /// `--rooms`, a command among them is obeyed as any).
    fn finish_unfinished_line(&mut self, token: Token) {
        let max_line = self.config.max_line;
        let Some(connection) = self.connections.member_mut(token) else {
            return;
        };
        let Some(id) = connection.room() else {
            return;
        };
        let Some(room) = self.rooms.get_mut(id) else {
            return;
        };
        let batch = &mut room.broadcast.batch;
        let start = batch.len();
        let out = batch.bytes_for(connection.unfinished_line_len() + 1);
        let mut lines = connection.read_rest_of_line(&mut self.turn.scratch, max_line, out);
        lines += connection.end_unfinished_line(out);
        self.observe.stats.bytes_in += (out.len() - start) as u64;
        self.take_framed_lines(token, id, start, lines);
    }

    /// Finales ran out of time: says what is lost, if anything.
    fn drop_finales(&mut self) {
        let Some(shutdown) = &mut self.shutdown else {
            return;
        };
        let finales = std::mem::take(&mut shutdown.finales);
        shutdown.blocked_since = None;
        let mut clients = 0;
        let mut bytes = self.rooms.drop_kept_lines();
        for finale in &finales {
            let held = finale.unread
                + self
                    .connections
                    .member(finale.token)
                    .map_or(0, Member::unfinished_line_len);
            if held > 0 {
                clients += 1;
                bytes += held;
            }
        }
        if bytes > 0 {
            warn!(
                "shutdown ran out of time before delivering everything already received: \
                 {bytes} bytes from {clients} clients dropped"
            );
        }
    }

    /// Closes every connection still in its TLS handshake or HTTP request: they are not
    /// members, and nothing is owed to them; but a `POST /lines` whose body was all read
    /// (waiting for its turn to be published) is published and answered first.
    fn close_handshakes_and_requests(&mut self) {
        for token in self.connections.tokens_in(Stage::Request) {
            if let Some(request) = self
                .connections
                .exchange_mut(token)
                .and_then(|exchange| exchange.take_complete_body())
            {
                self.answer_web(token, request);
            }
        }
        for stage in [Stage::Handshake, Stage::Request] {
            for token in self.connections.tokens_in(stage) {
                match self.connections.remove(token) {
                    Some(ClientConnection::Handshake(mut handshake)) => {
                        handshake.deregister(self.poll.registry())
                    }
                    Some(ClientConnection::Request(mut exchange)) => {
                        exchange.deregister(self.poll.registry())
                    }
                    Some(ClientConnection::Member(_)) | None => {}
                }
            }
        }
        self.admission.deadlines.clear();
    }

    /// Step 3: every client drains until `deadline`.
    fn begin_draining_everyone(&mut self, deadline: Instant) {
        self.hand_out_all();
        if let Some(shutdown) = &mut self.shutdown {
            shutdown.draining = true;
        }
        for token in self.connections.tokens_in(Stage::Member) {
            self.begin_drain(token, DisconnectReason::Shutdown, deadline);
            self.on_writable(token);
            // Input that came after the signal is read (next turn) and discarded, so that
            // the close is a FIN: unread input would make it a reset, which can destroy
            // output in flight.
            self.turn.carried.push(token);
        }
    }
}
