//! The hand-out, as more `impl EventLoop`: a room's batch goes to each of its open members
//! (one `writev` each, straight from the shared batch or its framing), when it is due or
//! held for coalescing; lines of clients closed meanwhile are kept and follow it.

use std::io::IoSlice;
use std::time::Instant;

use log::{trace, warn};
use mio::{Registry, Token};

use super::EventLoop;
use crate::broadcast::ChunkHead;
use crate::broadcast::batch::Sender;
use crate::broadcast::rooms::{Room, RoomId};
use crate::conn::connection::Member;
use crate::conn::reason::DisconnectReason;
use crate::observe::stats::Stats;
use crate::wire::commands::{self, Command};

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
        if lines > 0 && self.send(token, connection, slices) {
            self.stats.deliveries += lines as u64;
        }
    }

    /// Sends `slices` to an open client within `--max-queue` and keeps its interest in
    /// step; true if it took them. One that fails is doomed.
    pub(super) fn send(
        &mut self,
        token: Token,
        connection: &mut Member,
        slices: &mut [IoSlice<'_>],
    ) -> bool {
        if !connection.is_open() {
            return false;
        }
        let sent = connection.send(slices, self.max_queue);
        self.stats.bytes_out += sent.written as u64;
        if let Some(reason) = sent.failure {
            self.doomed.push((token, reason));
            return false;
        }
        if let Err(e) = connection.update_interest(self.registry, token) {
            self.doomed.push((token, DisconnectReason::Error(e.kind())));
        }
        true
    }
}

impl EventLoop {
    /// Hands out room `id`'s batch and every kept unfinished line (a batch at a time), so
    /// that none reaches a client that comes in after it.
    pub(super) fn hand_out_with_kept_lines(&mut self, id: RoomId) {
        loop {
            self.hand_out(id);
            let kept = self
                .rooms
                .get(id)
                .is_some_and(|room| !room.broadcast.kept_lines.is_empty());
            if !kept || self.shutdown.is_some() {
                return;
            }
            self.take_kept_lines(id);
        }
    }

    /// Sends each room's batch now if it is due (see `Batch::due_at`), else makes sure the
    /// hold timer will wake the loop when the first one is. Only rooms with lines are
    /// looked at (see `Rooms::take_pending`).
    pub(super) fn hand_out_when_due(&mut self, now: Instant) {
        let mut first_due: Option<Instant> = None;
        let pending = self.rooms.take_pending();
        for &id in &pending {
            if self.shutdown.is_none() {
                // At shutdown they go out with the finales, at the finales' pace.
                self.take_kept_lines(id);
            }
            let Some(room) = self.rooms.get_mut(id) else {
                continue;
            };
            match room.broadcast.batch.due_at(now) {
                Some(due) if due <= now => self.hand_out(id),
                Some(due) => first_due = Some(first_due.map_or(due, |first| first.min(due))),
                None => {}
            }
            self.rooms.settle(id);
        }
        self.rooms.give_back(pending);
        // One timer for every room: armed for the first that is due, and left as it is if
        // already armed (a later room then waits at most `--coalesce-us` more).
        if let Some(due) = first_due
            && !self.turn.hold_timer.is_armed()
            && let Err(e) = self.turn.hold_timer.arm(due - now)
        {
            warn!("cannot arm the coalescing timer ({e}); sending at once");
            self.hand_out_all();
        }
    }

    /// Hands out every room with lines now, due or not (shutdown's steps); rooms with kept
    /// lines left stay marked.
    pub(super) fn hand_out_all(&mut self) {
        let pending = self.rooms.take_pending();
        for &id in &pending {
            self.hand_out(id);
            self.rooms.settle(id);
        }
        self.rooms.give_back(pending);
    }

    /// Hands room `id`'s batch to each of its open members: first each sender gets
    /// everyone else's lines (at most its runs + 1 slices), then every other member gets
    /// the whole batch as one slice. Members that keep up get one `writev` straight from
    /// the batch; only what the kernel refuses is copied into a queue. Members over
    /// `--max-queue` are disconnected.
    pub(super) fn hand_out(&mut self, id: RoomId) {
        if self
            .rooms
            .get(id)
            .is_none_or(|room| room.broadcast.batch.is_empty())
        {
            return;
        }
        let number = self.rooms.next_hand_out();
        let named = self.rooms.is_named();
        let Some(room) = self.rooms.get_mut(id) else {
            return;
        };
        if !self.config.echo || self.nats.bridge.is_some() {
            room.broadcast.batch.index_senders();
        }
        self.nats
            .gather(&room.broadcast.batch, named.then_some(room.name()));
        // Framed (and made events) once for all, and only if someone here takes them.
        let (framed_members, event_members) = (room.has_framed_members(), room.has_event_members());
        let broadcast = &mut room.broadcast;
        if framed_members {
            broadcast.framed.build(&broadcast.batch);
        }
        if event_members {
            broadcast.events.build(&broadcast.batch, &broadcast.numbers);
        }
        let room: &Room = room;
        let (batch, framed) = (&room.broadcast.batch, &room.broadcast.framed);
        let head = ChunkHead::new(batch.len());
        let mut hand_out = HandOut {
            registry: self.poll.registry(),
            max_queue: self.config.max_queue,
            stats: &mut self.observe.stats,
            doomed: &mut self.turn.doomed,
        };
        if !self.config.echo {
            let mut slices = Vec::new();
            for share in batch.senders() {
                let Sender::Client(client) = share.sender() else {
                    continue; // lines from NATS: their sender is not here
                };
                let token = Token(client);
                let Some(connection) = self.connections.member_mut(token) else {
                    continue;
                };
                if connection.room() != Some(id) {
                    continue; // it left the room (it is leaving): no more lines for it
                }
                connection.mark_served_as_sender(number);
                slices.clear();
                connection.form().share(&share, framed, &mut slices);
                hand_out.deliver(token, connection, &mut slices, share.lines_for_sender());
            }
        }
        let mut give_whole = |token: Token, connection: &mut Member| {
            if !connection.was_served_as_sender(number) {
                let mut slices = [IoSlice::new(&[]); 3];
                let used = connection.form().whole(&room.broadcast, &head, &mut slices);
                hand_out.deliver(token, connection, &mut slices[..used], batch.lines());
            }
        };
        if named {
            for client in room.members() {
                if let Some(connection) = self.connections.member_mut(Token(client)) {
                    give_whole(Token(client), connection);
                }
            }
        } else {
            for (token, connection) in self.connections.members_mut() {
                give_whole(token, connection);
            }
        }
        trace!(
            "hand-out {number} in room {}: {} bytes, {} lines",
            room.name(),
            batch.len(),
            batch.lines()
        );
        self.rooms.keep_in_history(id);
        if let Some(room) = self.rooms.get_mut(id) {
            let broadcast = &mut room.broadcast;
            broadcast.numbers.handed_out += broadcast.batch.lines() as u64;
            broadcast.batch.clear(Instant::now());
            broadcast.framed.clear();
            broadcast.events.clear();
        }
        self.close_doomed();
    }

    /// Closes the clients a pass over the map found failing (a slow consumer warned about,
    /// rate-limited), now that the pass is over; not while a client's commands are being
    /// obeyed (see `obey_lines`): they are closed once it is done.
    pub(super) fn close_doomed(&mut self) {
        if self.turn.closes_held {
            return;
        }
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

    /// Keeps the unfinished line of a client being closed, to be delivered in its room
    /// with a `\n` like any line it sent: nothing the server read is lost, however the client
    /// goes. What the kernel already holds of the line's end is read first.
    pub(super) fn keep_unfinished_line(&mut self, token: Token, connection: &mut Member) {
        let Some(id) = connection.room() else {
            return;
        };
        if connection.unfinished_line_len() > 0 {
            let mut line = Vec::new();
            connection.read_rest_of_line(&mut self.turn.scratch, self.config.max_line, &mut line);
            connection.end_unfinished_line(&mut line);
            self.keep_leavers_lines(token, id, &line);
        }
    }

    /// Keeps complete `lines` of a client that is going, to follow room `id`'s batch. With
    /// `--rooms` its commands among them are not obeyed (it is going); its escaped lines
    /// are sent.
    pub(super) fn keep_leavers_lines(&mut self, token: Token, id: RoomId, lines: &[u8]) {
        let named = self.rooms.is_named();
        let Some(room) = self.rooms.get_mut(id) else {
            return;
        };
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let line = match named.then(|| commands::parse(line)).flatten() {
                None => line,
                Some(Command::Escaped(text)) => text,
                Some(_) => continue,
            };
            let sender = Sender::Client(token.0);
            room.broadcast.kept_lines.push_back((sender, line.to_vec()));
        }
        self.rooms.mark_pending(id);
    }

    /// Appends one whole line from `sender` to room `id`'s batch, handing the batch out
    /// first if the line would not fit; false if the room is gone.
    pub(super) fn append_line(&mut self, id: RoomId, sender: Sender, line: &[u8]) -> bool {
        if self
            .rooms
            .get(id)
            .is_some_and(|room| room.broadcast.batch.free_space() < line.len())
        {
            self.hand_out(id);
        }
        let Some(room) = self.rooms.get_mut(id) else {
            return false;
        };
        room.broadcast.batch.append(sender, line, 1);
        self.rooms.mark_pending(id);
        true
    }

    /// Moves room `id`'s kept unfinished lines into its batch while it has space.
    pub(super) fn take_kept_lines(&mut self, id: RoomId) {
        let Some(room) = self.rooms.get_mut(id) else {
            return;
        };
        let broadcast = &mut room.broadcast;
        while broadcast.batch.free_space() > 0
            && let Some((sender, line)) = broadcast.kept_lines.pop_front()
        {
            broadcast.batch.append(sender, &line, 1);
            self.observe.stats.lines_in += 1;
        }
    }
}
