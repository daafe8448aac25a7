//! Rooms (`--rooms`), as more `impl EventLoop`: the lines a member's read framed are
//! looked at for commands, and the commands obeyed in order between them: `/join NAME`
//! moves the member (after the lines of its old room it is owed, before those of its new
//! one), `/rooms` lists the rooms, `//text` is the line `/text`. Replies are queued like
//! any output. Without `--rooms` none of this runs: the read's lines go to the batch as
//! they are.

use std::io::IoSlice;

use log::debug;
use mio::Token;

use super::EventLoop;
use super::hand_out::HandOut;
use crate::broadcast::batch::Sender;
use crate::broadcast::rooms::{RoomId, TooManyRooms};
use crate::broadcast::{self, Form};
use crate::conn::connection::Member;
use crate::wire::commands::{self, Command};
use crate::wire::websocket;

/// What one client's commands may cost in a turn, in commands: each counts one, and one
/// more for each `BYTES_PER_COMMAND` it has sent to the client (the lines a join owes it, a
/// room's history). So a client that sends nothing but commands costs the others no more
/// than one that sends lines, whatever the commands. Its lines after the budget wait for
/// its next turn (it is carried, and not read until they are done).
const COMMANDS_PER_TURN: usize = 64;

/// Bytes sent to a client that cost as much as one more command (see `COMMANDS_PER_TURN`).
const BYTES_PER_COMMAND: usize = 4096;

/// What obeying a read's lines came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Obeyed {
    /// Commands obeyed (each gets a reply to flush).
    pub(super) commands: usize,
    /// Lines are left for the member's next turn (its command budget ran out).
    pub(super) deferred: bool,
}

/// Whether `lines` (complete lines, starting at a line's start) hold a line that starts
/// with `/`: one scan, and the lines go to the batch untouched when they do not.
fn has_command(lines: &[u8]) -> bool {
    lines.first() == Some(&b'/') || memchr::memmem::find(lines, b"\n/").is_some()
}

impl EventLoop {
    /// Records what a member's read framed into room `id`'s batch from `start` (`lines`
    /// lines): as they are, or, with `--rooms` and a line starting with `/` among them,
    /// taken out again and obeyed line by line.
    pub(super) fn take_framed_lines(
        &mut self,
        token: Token,
        id: RoomId,
        start: usize,
        lines: usize,
    ) -> Obeyed {
        let named = self.rooms.is_named();
        let Some(room) = self.rooms.get_mut(id) else {
            return Obeyed::default();
        };
        let batch = &mut room.broadcast.batch;
        if named && has_command(&batch.whole()[start..]) {
            let framed = batch.take_unrecorded(start);
            if self.shutdown.is_some() {
                // Its last lines (the finales): routed, not answered (see `route_lines`).
                self.route_lines(token, id, &framed);
                return Obeyed::default();
            }
            return self.obey_lines(token, id, framed);
        }
        batch.record(Sender::Client(token.0), start, lines);
        self.observe.stats.lines_in += lines as u64;
        if lines > 0 {
            self.rooms.mark_pending(id);
        }
        Obeyed::default()
    }

    /// Obeys the lines a member's last turn left (see `COMMANDS_PER_TURN`), if any; `None`
    /// if there were none.
    pub(super) fn obey_deferred_lines(&mut self, token: Token) -> Option<Obeyed> {
        if self.turn.deferred_lines.is_empty() {
            return None; // the common case: one branch
        }
        let lines = self.turn.deferred_lines.remove(&token)?;
        let room = self.connections.member(token)?.room()?;
        Some(self.obey_lines(token, room, lines))
    }

    /// Sends the lines an open member's last turn left (see `COMMANDS_PER_TURN`), when it
    /// is about to be sent away or closed, or the server is stopping: each goes to the room
    /// the `/join`s before it name (made if need be and `--max-rooms` allows; else its
    /// lines stay in the room before). No answers, no owed lines, no history: nobody waits
    /// for them, so this is a room lookup a command, with no budget needed, and the member
    /// itself stays where it was.
    pub(super) fn route_deferred_lines(&mut self, token: Token) {
        if self.turn.deferred_lines.is_empty() {
            return;
        }
        let Some(lines) = self.turn.deferred_lines.remove(&token) else {
            return;
        };
        let Some(room) = self.connections.member(token).and_then(Member::room) else {
            return; // leaving already: it has no room for lines (it had none waiting)
        };
        self.route_lines(token, room, &lines);
    }

    /// Sends `lines` of the member under `token`, in room `room`, each to the room the
    /// `/join`s before it name, without obeying anything else (see `route_deferred_lines`).
    fn route_lines(&mut self, token: Token, mut room: RoomId, lines: &[u8]) {
        for line in lines.split_inclusive(|&b| b == b'\n') {
            match commands::parse(line) {
                None => self.append_client_line(token, room, line),
                Some(Command::Escaped(text)) => self.append_client_line(token, room, text),
                Some(Command::Join(name)) => room = self.rooms.open(name).unwrap_or(room),
                Some(_) => {}
            }
        }
    }

    /// Sends each of `framed`'s lines from `token` to its room, obeying the commands among
    /// them in order, as far as `COMMANDS_PER_TURN` goes; the lines after that are kept for
    /// the member's next turn. Clients a hand-out finds failing meanwhile are closed only at
    /// the end, so that the member stays (and its lines keep going out) until its lines are
    /// done.
    fn obey_lines(&mut self, token: Token, mut room: RoomId, framed: Vec<u8>) -> Obeyed {
        self.turn.closes_held = true;
        let mut obeyed = Obeyed::default();
        let mut spent = 0;
        let mut at = 0;
        for line in framed.split_inclusive(|&b| b == b'\n') {
            match commands::parse(line) {
                None => self.append_client_line(token, room, line),
                Some(Command::Escaped(text)) => self.append_client_line(token, room, text),
                Some(_) if spent >= COMMANDS_PER_TURN => {
                    debug!(
                        "token {}: its commands' budget for this turn is spent; the rest of \
                         its lines wait for its next turn",
                        token.0
                    );
                    let rest = framed[at..].to_vec();
                    self.turn.deferred_lines.insert(token, rest);
                    obeyed.deferred = true;
                    break;
                }
                Some(command) => {
                    obeyed.commands += 1;
                    let sent;
                    (room, sent) = self.obey(token, room, command);
                    spent = spent.saturating_add(1 + sent / BYTES_PER_COMMAND);
                }
            }
            at += line.len();
        }
        self.turn.closes_held = false;
        self.close_doomed();
        obeyed
    }

    /// Appends one line from the member under `token` to room `room`'s batch, counted.
    fn append_client_line(&mut self, token: Token, room: RoomId, line: &[u8]) {
        if self.append_line(room, Sender::Client(token.0), line) {
            self.observe.stats.lines_in += 1;
        }
    }

    /// Obeys one command from the member under `token`, in room `room`; returns the room it
    /// is in afterwards, and the bytes of lines it was given (by a join).
    fn obey(&mut self, token: Token, room: RoomId, command: Command<'_>) -> (RoomId, usize) {
        match command {
            Command::Join(name) => return self.join(token, room, name),
            Command::Rooms => {
                let listing = self.rooms.listing().to_vec();
                self.reply(token, &listing);
            }
            Command::BadName => self.reply(token, commands::BAD_NAME),
            Command::Unknown => self.reply(token, commands::UNKNOWN),
            Command::Escaped(_) => {} // a line, sent by `obey_lines`
        }
        (room, 0)
    }

    /// Moves the member under `token` from room `from` to the room `name` (created if
    /// `--max-rooms` allows): the old room's batch is handed out first (the lines it is
    /// owed), then `OK joined NAME`, then the new room's history; its next lines and the
    /// new room's go to it from then on. Returns the room it is in afterwards, and the bytes
    /// of lines it was given (owed ones, history).
    fn join(&mut self, token: Token, from: RoomId, name: &str) -> (RoomId, usize) {
        if self.rooms.get(from).is_some_and(|room| room.name() == name) {
            self.reply(token, format!("OK joined {name}\n").as_bytes());
            return (from, 0);
        }
        if let Err(TooManyRooms { max }) = self.rooms.may_enter(name, token.0, Some(from)) {
            let refusal = commands::too_many_rooms(max);
            self.reply(token, refusal.as_bytes());
            return (from, 0);
        }
        let owed = self.give_owed_lines(token, from);
        let form = self
            .connections
            .member(token)
            .map_or(Form::Lines, Member::form);
        let Ok(to) = self.rooms.move_member(token.0, from, name, form) else {
            return (from, owed); // it may (checked above, and nothing since made a room)
        };
        if let Some(member) = self.connections.member_mut(token) {
            member.move_to(Some(to));
        }
        debug!("token {} joined room {name}", token.0);
        self.reply(token, format!("OK joined {name}\n").as_bytes());
        let history = self.replay_history(token, None);
        (to, owed + history)
    }

    /// Gives the member under `token`, about to leave room `from`, what the room framed so
    /// far and it is owed; returns the bytes. Alone there, by handing the room's batch out
    /// (to it: as cheap), so that the room is idle and goes as it leaves (it may have let
    /// the move make one room more than `--max-rooms`); else to it alone (see
    /// `hand_owed_lines`).
    fn give_owed_lines(&mut self, token: Token, from: RoomId) -> usize {
        let Some(room) = self.rooms.get(from) else {
            return 0;
        };
        if room.member_count() > 1 {
            return self.hand_owed_lines(token, from);
        }
        let broadcast = &room.broadcast;
        let kept: usize = broadcast
            .kept_lines
            .iter()
            .map(|(_, line)| line.len())
            .sum();
        let bytes = broadcast.batch.len() + kept;
        self.hand_out_with_kept_lines(from);
        bytes
    }

    /// Gives the member under `token`, about to leave room `from`, the lines it is owed
    /// there and has not had: its share of the batch framed so far (everyone else's lines,
    /// or all of them with `--echo`) and the room's kept lines, in one send within
    /// `--max-queue`. Not a hand-out: the batch stays for the room's other members, so a
    /// client joining to and fro costs the room nothing. Returns the bytes given.
    fn hand_owed_lines(&mut self, token: Token, from: RoomId) -> usize {
        let echo = self.config.echo;
        let Some(room) = self.rooms.get_mut(from) else {
            return 0;
        };
        let Some(connection) = self.connections.member_mut(token) else {
            return 0;
        };
        if !echo {
            room.broadcast.batch.index_senders();
        }
        let (batch, kept) = (&room.broadcast.batch, &room.broadcast.kept_lines);
        let own = (!echo)
            .then(|| {
                batch
                    .senders()
                    .find(|s| s.sender() == Sender::Client(token.0))
            })
            .flatten();
        let mut parts: Vec<&[u8]> = match &own {
            Some(share) => share.parts().collect(),
            None => vec![batch.whole()],
        };
        parts.extend(kept.iter().map(|(_, line)| line.as_slice()));
        let lines = own
            .as_ref()
            .map_or(batch.lines(), |share| share.lines_for_sender());
        let lines = lines + kept.len();
        let mut frames = Vec::new();
        let mut slices: Vec<IoSlice<'_>> = match connection.form() {
            Form::Lines => parts.iter().map(|part| IoSlice::new(part)).collect(),
            Form::Frames => {
                for part in &parts {
                    for line in part.split_inclusive(|&b| b == b'\n') {
                        websocket::encode_line(line, &mut frames);
                    }
                }
                vec![IoSlice::new(&frames)]
            }
            Form::Chunks => {
                broadcast::chunk_into(&parts, &mut frames);
                vec![IoSlice::new(&frames)]
            }
            // Readers of `/events` send no commands: they never move.
            Form::Events => Vec::new(),
        };
        let mut hand_out = HandOut {
            registry: self.poll.registry(),
            max_queue: self.config.max_queue,
            stats: &mut self.observe.stats,
            doomed: &mut self.turn.doomed,
        };
        let bytes = slices.iter().map(|slice| slice.len()).sum();
        hand_out.deliver(token, connection, &mut slices, lines);
        bytes
    }

    /// Queues a reply line (`OK ...` or `ERR ...`, with its `\n`) for the member under
    /// `token`, framed for its wire, within `--max-queue` like any output (a member over
    /// it is a slow consumer); it is flushed after the read, with any other replies. A
    /// reply is not a line of the broadcast: not counted as one.
    pub(super) fn reply(&mut self, token: Token, line: &[u8]) {
        let Some(connection) = self.connections.member_mut(token) else {
            return;
        };
        let mut frame = Vec::new();
        let bytes = match connection.form() {
            Form::Lines => line,
            Form::Frames => {
                websocket::encode_line(line, &mut frame);
                &frame
            }
            Form::Chunks => {
                broadcast::chunk_into(&[line], &mut frame);
                &frame
            }
            // Readers of `/events` send no commands: nothing to answer.
            Form::Events => return,
        };
        if let Err(reason) = connection.queue_reply(bytes, self.config.max_queue) {
            self.turn.doomed.push((token, reason));
        }
    }

    /// Takes the member under `token` out of its room: it is leaving, and gets no more
    /// lines. The room goes if it was the last.
    pub(super) fn leave_room(&mut self, token: Token) {
        let Some(member) = self.connections.member_mut(token) else {
            return;
        };
        let form = member.form();
        if let Some(id) = member.move_to(None) {
            self.rooms.leave(id, token.0, form);
        }
    }
}
