//! One client's socket and buffers: reading until the kernel has no more, queueing output,
//! flushing it with vectored writes and keeping the mio interest in step with the queue.
//!
//! A connection knows nothing about other clients: the event loop hands it bytes to send and
//! takes the complete lines it read. Every way a client can misbehave or vanish comes back
//! as a [`DisconnectReason`], never as a panic.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use socket2::SockRef;

use crate::admission::access::AddressPlace;
use crate::broadcast::Form;
use crate::broadcast::rooms::RoomId;
use crate::conn::reason::{DisconnectReason, failure};
use crate::conn::socket_queues;
use crate::conn::wire::{Liveness, Wire};
use crate::observe::stats::MemberKind;
use crate::transport::Transport;
use crate::wire::websocket;

/// Most iovecs one `writev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading lines and receiving broadcasts.
    Open,
    /// Leaving: no more broadcasts, input is discarded, queued output is still flushed; then
    /// our side is shut down and the socket closed once the client has everything.
    Draining {
        reason: DisconnectReason,
        deadline: Instant,
        write_shut: bool,
    },
}

/// How a call to [`Member::read_until_would_block`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The kernel has no more data: wait for the next readable event.
    WouldBlock,
    /// The per-turn budget ran out with data possibly still waiting; no new edge will come for
    /// it, so the caller must come back.
    BudgetSpent,
    /// The connection is finished.
    Closed(DisconnectReason),
}

/// What one read turn produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReport {
    /// Bytes taken from the socket.
    pub read: usize,
    /// Bytes that left as (parts of) lines: input discarded while leaving, and the bytes of
    /// a rejected over-long line, are not counted.
    pub framed: usize,
    pub lines: usize,
    pub end: ReadEnd,
    /// The read produced output of its own (WebSocket pongs, TLS records): the caller
    /// flushes it.
    pub wants_flush: bool,
}

/// What [`Member::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Bytes the kernel took, even when the client then failed.
    pub written: usize,
    /// Set when the client must go: a slow consumer (nothing was queued) or a dead socket.
    pub failure: Option<DisconnectReason>,
}

/// A connected client: its socket, its unfinished input and its pending output.
#[derive(Debug)]
pub struct Member {
    transport: Transport,
    peer: SocketAddr,
    /// Its place in its address's count (`--max-clients-per-ip`): held, never read, and
    /// given back when the connection is dropped.
    _place: AddressPlace,
    /// How lines look on its wire: decoding, farewells, liveness.
    wire: Wire,
    /// Output the kernel would not take yet, oldest first. Empty (and unallocated) unless the
    /// client's socket buffer is full.
    write_buf: VecDeque<u8>,
    /// The interest currently registered with the poller, to skip needless `epoll_ctl`s.
    interest: Interest,
    phase: Phase,
    /// The last loop turn this client was read in: one read budget per turn.
    read_turn: u64,
    /// The last hand-out that served this client as a sender (its own lines left out).
    served_as_sender: u64,
    /// The room it is in; `None` once it is leaving (it receives no more lines). Rooms are
    /// numbered by slot, far below 2^32 (a room needs members or lines in memory): four
    /// bytes, so that a member without `--rooms` is hardly bigger.
    room: Option<u32>,
}

impl Member {
    /// Wraps an accepted transport, registered for reading under `token` (and through its
    /// TLS handshake, if any).
    pub fn new(transport: Transport, peer: SocketAddr, place: AddressPlace) -> Member {
        Member {
            peer,
            _place: place,
            wire: Wire::lines(),
            write_buf: VecDeque::new(),
            // A TLS handshake hands its socket over registered READABLE | WRITABLE: say so,
            // so that the first `update_interest` sets the registration right.
            interest: if transport.is_tls() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            },
            phase: Phase::Open,
            read_turn: 0,
            served_as_sender: 0,
            room: None,
            transport,
        }
    }

    /// Wraps a transport whose WebSocket upgrade was accepted (registered as for
    /// [`Member::new`]), and queues the `101` answer `handshake` (the caller
    /// flushes it).
    pub fn new_websocket(
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        handshake: &[u8],
    ) -> Member {
        let mut connection = Member::new(transport, peer, place);
        connection.wire = Wire::websocket();
        connection.queue(handshake, handshake.len());
        connection
    }

    /// Wraps a transport whose `GET /lines` was accepted (registered as for
    /// [`Member::new`]): its body `chunked`, or not (HTTP/1.0); queues the response `head`
    /// (the caller flushes it).
    pub fn new_http_stream(
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        chunked: bool,
        head: &[u8],
    ) -> Member {
        let mut connection = Member::new(transport, peer, place);
        connection.wire = Wire::HttpStream { chunked };
        connection.queue(head, head.len());
        connection
    }

    /// A reader of `GET /events` on an upgraded web connection: `head` (the answer's head)
    /// is queued, its events follow.
    pub fn new_event_stream(
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        head: &[u8],
    ) -> Member {
        let mut connection = Member::new(transport, peer, place);
        connection.wire = Wire::EventStream;
        connection.queue(head, head.len());
        connection
    }

    /// What it is, for the gauges by transport.
    pub fn kind(&self) -> MemberKind {
        match self.wire {
            Wire::Lines(_) => MemberKind::Line,
            Wire::WebSocket(_) => MemberKind::WebSocket,
            Wire::HttpStream { .. } => MemberKind::HttpStream,
            Wire::EventStream => MemberKind::EventStream,
        }
    }

    /// The room it is in, unless it is leaving.
    pub fn room(&self) -> Option<RoomId> {
        self.room.map(|id| id as RoomId)
    }

    /// Puts it in `room` (`None`: it is leaving); returns the room it was in.
    pub fn move_to(&mut self, room: Option<RoomId>) -> Option<RoomId> {
        let room = room.map(|id| u32::try_from(id).unwrap_or(u32::MAX));
        std::mem::replace(&mut self.room, room).map(|id| id as RoomId)
    }

    /// Queues `reply` (a short answer to a command) without writing: the caller flushes.
    /// A client that would then hold more than `max_queue` bytes is a slow consumer:
    /// nothing is queued, and the error says so.
    pub fn queue_reply(&mut self, reply: &[u8], max_queue: usize) -> Result<(), DisconnectReason> {
        let queued = self.write_buf.len() + reply.len();
        if queued > max_queue {
            return Err(DisconnectReason::SlowConsumer { queued });
        }
        self.queue(reply, max_queue);
        Ok(())
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The form of the batch this client takes (its wire's choice).
    pub fn form(&self) -> Form {
        self.wire.form()
    }

    /// For an open WebSocket client silent for `interval`: pings it (once), or, if it was
    /// pinged and stayed silent for another `interval`, says it is gone (see
    /// [`Wire::check_liveness`]). A client still receiving what it is owed counts as heard.
    pub fn check_liveness(&mut self, now: Instant, interval: Duration) -> Liveness {
        let behind = !self.write_buf.is_empty();
        if !behind && !self.is_open() {
            return Liveness::Fine;
        }
        let liveness = self.wire.check_liveness(now, interval, behind);
        if liveness == Liveness::Ping {
            let ping = websocket::ping_frame();
            let limit = self.write_buf.len() + ping.len();
            self.queue(&ping, limit);
        }
        liveness
    }

    /// What the client is told as it is sent away for `reason`, on its own wire.
    pub fn farewell(&self, reason: DisconnectReason, max_line: usize) -> Vec<u8> {
        self.wire.farewell(reason, max_line)
    }

    /// Whether the client has frames queued: being sent away, it is reset, since where the
    /// frame being sent ends is not known and no farewell frame could follow it.
    pub fn is_behind_in_frames(&self) -> bool {
        self.wire.queues_frames() && !self.write_buf.is_empty()
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Bytes waiting in this server for the client.
    pub fn queued(&self) -> usize {
        self.write_buf.len()
    }

    /// Bytes the client has not received yet: queued here, plus written but not yet
    /// acknowledged by the client's kernel.
    pub fn unsent(&self) -> usize {
        self.queued() + self.unacknowledged_data()
    }

    /// Data bytes written but not acknowledged. The kernel's count includes our FIN once we
    /// shut our side down (it takes one sequence number), which is not data.
    fn unacknowledged_data(&self) -> usize {
        let outq = socket_queues::unacknowledged_output(self.transport.tcp());
        match self.phase {
            Phase::Draining {
                write_shut: true, ..
            } => outq.saturating_sub(1),
            _ => outq,
        }
    }

    /// Bytes the client sent that are waiting, not read yet: in the kernel, and (through
    /// TLS) decrypted inside rustls.
    pub fn unread_input(&mut self) -> usize {
        socket_queues::unread_input(self.transport.tcp()) + self.transport.buffered_plaintext()
    }

    /// Claims this turn's read for the client; false if it was already read in `turn`.
    pub fn claim_read_turn(&mut self, turn: u64) -> bool {
        let first = self.read_turn != turn;
        self.read_turn = turn;
        first
    }

    /// Notes that hand-out `id` served this client as a sender.
    pub fn mark_served_as_sender(&mut self, id: u64) {
        self.served_as_sender = id;
    }

    /// Whether hand-out `id` already served this client as a sender.
    pub fn was_served_as_sender(&self, id: u64) -> bool {
        self.served_as_sender == id
    }

    /// Reads until the kernel has nothing more, or `scratch.len()` bytes were taken this turn.
    ///
    /// While open, complete lines are appended to `lines_out` (the unfinished rest stays in the
    /// framer; at end of stream it is appended with a `\n`). While draining, input is read and
    /// thrown away, only to notice the client's close.
    pub fn read_until_would_block(
        &mut self,
        scratch: &mut [u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
    ) -> ReadReport {
        let mut report = ReadReport {
            read: 0,
            framed: 0,
            lines: 0,
            end: ReadEnd::BudgetSpent,
            wants_flush: false,
        };
        let budget = scratch.len();
        let framed_from = lines_out.len();
        // What the reads cost (through TLS: bytes from the socket plus a charge per record,
        // never less than the plaintext), judged against the budget.
        let mut spent = 0;
        while spent < budget && report.read < budget {
            let (read, cost) = self
                .transport
                .read_metered(&mut scratch[..budget - report.read]);
            spent += cost;
            match read {
                Ok(0) => {
                    report = self.ended(report, DisconnectReason::ClientClosed, lines_out);
                    break;
                }
                Ok(n) => {
                    report.read += n;
                    if !self.is_open() {
                        continue; // leaving: read only to notice the close; input discarded
                    }
                    let queued = self.write_buf.len();
                    let (lines, stop) = self.decode(&scratch[..n], max_line, lines_out);
                    report.lines += lines;
                    report.wants_flush |= self.write_buf.len() > queued;
                    if let Some(reason) = stop {
                        report.end = ReadEnd::Closed(reason);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    report.end = ReadEnd::WouldBlock;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    report = self.ended(report, failure(&e), lines_out);
                    break;
                }
            }
        }
        report.framed = lines_out.len() - framed_from;
        report.wants_flush |= self.transport.wants_write();
        report
    }

    /// Turns one chunk of input into lines on the client's wire; returns how many, and why
    /// the client must stop if it must. Replies the input calls for (a WebSocket client's
    /// pongs) are queued, within `--max-queue` plus themselves: the caller judges the queue
    /// right after the read (a client that pings without reading is a slow consumer).
    fn decode(
        &mut self,
        chunk: &[u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
    ) -> (usize, Option<DisconnectReason>) {
        let mut replies = Vec::new();
        let decoded = self.wire.decode(chunk, max_line, lines_out, &mut replies);
        if !replies.is_empty() {
            let limit = self.write_buf.len() + replies.len();
            self.queue(&replies, limit);
        }
        decoded
    }

    /// Reads what the kernel holds now, up to the end of the unfinished line (its `\n` and
    /// no further; the rest is discarded), so that a line whose end was already on its way
    /// is not cut. Used when the client's input is closing (shutdown, or the client being
    /// dropped); a complete line goes to `lines_out`. Returns how many lines (0 or 1).
    pub fn read_rest_of_line(
        &mut self,
        scratch: &mut [u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
    ) -> usize {
        // A WebSocket message is delivered whole or not at all: an unfinished one is not.
        let open = self.is_open();
        let Some(wire) = self.wire.as_lines() else {
            return 0;
        };
        while wire.unfinished_len() > 0 && open {
            // One byte more than the line may still hold: its newline, or the proof that it
            // is too long. In all, at most --max-line + 1 bytes are read.
            let want = (max_line + 1 - wire.unfinished_len()).min(scratch.len());
            let n = match self.transport.read(&mut scratch[..want]) {
                Ok(0) => return 0, // the client closed: the line ends here
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return 0, // nothing more yet (WouldBlock) or ever: it ends here
            };
            let end = memchr::memchr(b'\n', &scratch[..n]).map_or(n, |newline| newline + 1);
            // Grow exactly: this runs once per closing client, and the caller's buffer has
            // a size bound to keep.
            lines_out.reserve_exact(wire.unfinished_len() + end);
            match wire.push(&scratch[..end], max_line, lines_out) {
                (0, None) => {}
                (lines, None) => return lines,
                // Past --max-line, or an HTTP request: never broadcast, like any such line.
                (_, Some(_)) => return 0,
            }
        }
        0
    }

    /// The input stream ended, cleanly or not: an unfinished line still goes out, with a
    /// `\n`, because those bytes were already accepted.
    fn ended(
        &mut self,
        mut report: ReadReport,
        reason: DisconnectReason,
        lines_out: &mut Vec<u8>,
    ) -> ReadReport {
        if self.is_open() {
            report.lines += self.end_unfinished_line(lines_out);
        }
        report.end = ReadEnd::Closed(reason);
        report
    }

    /// Sends `bufs` after anything already queued, writing straight from the caller's
    /// buffers when nothing is queued (the common case: no copy at all), and queueing what
    /// the kernel would not take. A client that would be left with more than `max_queue`
    /// bytes waiting is a slow consumer: nothing is queued, and `failure` says so. The queue
    /// thus never outgrows the limit.
    pub fn send(&mut self, bufs: &mut [IoSlice<'_>], max_queue: usize) -> Sent {
        let mut rest = bufs;
        let mut sent = Sent {
            written: 0,
            failure: None,
        };
        if !self.write_buf.is_empty() || self.transport.wants_write() {
            // Judge the client on what its socket takes now, not on a queue its writable
            // event (maybe later in this very poll) has not flushed yet.
            match self.flush() {
                Ok(written) => sent.written = written,
                Err(reason) => {
                    sent.failure = Some(reason);
                    return sent;
                }
            }
        }
        if self.write_buf.is_empty() {
            match self.write_direct(&mut rest) {
                Ok(written) => sent.written += written,
                Err((written, reason)) => {
                    sent.written += written;
                    sent.failure = Some(reason);
                    return sent;
                }
            }
        }
        let left: usize = rest.iter().map(|buf| buf.len()).sum();
        if left == 0 {
            return sent;
        }
        let queued = self.write_buf.len() + left;
        if queued > max_queue {
            sent.failure = Some(DisconnectReason::SlowConsumer { queued });
            return sent;
        }
        self.reserve_within(queued, max_queue);
        for buf in rest.iter() {
            self.write_buf.extend(buf.iter());
        }
        sent
    }

    /// Writes `bufs` with as few `writev` calls as possible (up to `IOV_MAX` slices each)
    /// until all are sent or the socket is full, advancing `bufs` past what was written.
    /// Returns the bytes written; on a socket error, also those written before it.
    fn write_direct(
        &mut self,
        bufs: &mut &mut [IoSlice<'_>],
    ) -> Result<usize, (usize, DisconnectReason)> {
        let mut written = 0;
        while !bufs.is_empty() {
            let count = bufs.len().min(IOV_MAX);
            let offered: usize = bufs[..count].iter().map(|buf| buf.len()).sum();
            match self.transport.write_vectored(&bufs[..count]) {
                Ok(0) if offered > 0 => {
                    return Err((written, DisconnectReason::Error(io::ErrorKind::WriteZero)));
                }
                Ok(n) => {
                    written += n;
                    IoSlice::advance_slices(bufs, n);
                    if n < offered {
                        break; // the socket is full: the next call would only say so
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((written, failure(&e))),
            }
        }
        Ok(written)
    }

    /// Makes room for `total` queued bytes, growing by doubling as usual but never past
    /// `max_queue`, so a queue near its limit does not briefly hold twice the memory.
    fn reserve_within(&mut self, total: usize, max_queue: usize) {
        let capacity = self.write_buf.capacity();
        if total > capacity {
            let target = (capacity * 2).clamp(total, max_queue.max(total));
            self.write_buf.reserve_exact(target - self.write_buf.len());
        }
    }

    /// Queues `bytes` without trying to write (`flush` sends them), within `max_queue` plus
    /// `bytes`: used only for the short farewell line, which is never refused.
    fn queue(&mut self, bytes: &[u8], max_queue: usize) {
        self.reserve_within(self.write_buf.len() + bytes.len(), max_queue);
        self.write_buf.extend(bytes);
    }

    /// Writes queued output until it is all sent or the socket is full. Both halves of the
    /// ring buffer go out in one `writev`, so a wrapped queue needs no `make_contiguous`.
    pub fn flush(&mut self) -> Result<usize, DisconnectReason> {
        let mut written = 0;
        while !self.write_buf.is_empty() {
            let (front, back) = self.write_buf.as_slices();
            let iov = [IoSlice::new(front), IoSlice::new(back)];
            match self.transport.write_vectored(&iov) {
                Ok(0) => return Err(DisconnectReason::Error(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.write_buf.drain(..n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failure(&e)),
            }
        }
        // Through TLS, the last records may still be held by rustls.
        if let Err(e) = self.transport.flush_tls() {
            return Err(failure(&e));
        }
        if self.write_buf.is_empty() && self.write_buf.capacity() > 0 {
            // A queue only exists while the client lags; give the memory back once it
            // caught up, so idle clients cost nothing.
            self.write_buf = VecDeque::new();
        }
        Ok(written)
    }

    /// Registers WRITABLE while output is queued and drops back to READABLE once it drained;
    /// the only place that calls `epoll_ctl` after registration.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let wanted = if self.write_buf.is_empty() && !self.transport.wants_write() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        if wanted != self.interest {
            registry.reregister(self.transport.tcp_mut(), token, wanted)?;
            self.interest = wanted;
        }
        Ok(())
    }

    /// Makes the coming close a reset (SO_LINGER 0) instead of a FIN after the unsent data.
    pub fn reset_on_close(&self) -> io::Result<()> {
        SockRef::from(self.transport.tcp()).set_linger(Some(Duration::ZERO))
    }

    /// Removes the socket from the poller (closing it happens when the connection drops).
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(self.transport.tcp_mut())
    }

    /// Starts leaving for `reason`: after `farewell` and everything already queued is sent,
    /// the socket is shut down for writing and closed once the client has it all, or at
    /// `deadline`.
    pub fn begin_drain(
        &mut self,
        reason: DisconnectReason,
        farewell: &[u8],
        deadline: Instant,
        max_queue: usize,
    ) {
        self.queue(farewell, max_queue);
        self.phase = Phase::Draining {
            reason,
            deadline,
            write_shut: false,
        };
    }

    /// Brings a leaving client's deadline forward to `deadline` if that is sooner.
    pub fn shorten_deadline(&mut self, deadline: Instant) {
        if let Phase::Draining {
            deadline: ref mut own,
            ..
        } = self.phase
        {
            *own = (*own).min(deadline);
        }
    }

    /// Bytes of the unfinished line held for the client.
    pub fn unfinished_line_len(&self) -> usize {
        self.wire.unfinished_line_len()
    }

    /// Takes the unfinished line out (with a `\n`) into `lines_out`; used at shutdown so that
    /// nothing a client sent is lost. Returns how many lines it added.
    pub fn end_unfinished_line(&mut self, lines_out: &mut Vec<u8>) -> usize {
        self.wire.end_unfinished_line(lines_out)
    }

    /// While draining with nothing left queued: shuts our side down once, then reports
    /// whether the client has acknowledged every byte (so closing now can lose nothing).
    pub fn drained(&mut self) -> bool {
        let Phase::Draining {
            reason,
            deadline,
            write_shut,
        } = self.phase
        else {
            return false;
        };
        if !self.write_buf.is_empty() || self.transport.wants_write() {
            return false;
        }
        if !write_shut {
            // TLS: close_notify first, and the FIN only once it has left. (An error means
            // the peer is gone already; the close that follows is all we need.)
            if let Ok(false) = self.transport.shutdown_write() {
                return false;
            }
            self.phase = Phase::Draining {
                reason,
                deadline,
                write_shut: true,
            };
        }
        self.unacknowledged_data() == 0
    }

    /// Drops queued output after the end of the line now being sent, so a client that is
    /// sent away for misbehaving holds no more than its farewell (and that line's rest).
    /// A WebSocket client's queue is kept (bounded by `--max-queue`): it holds frames, and
    /// where the one being sent ends is not known here.
    pub fn discard_queued_lines(&mut self) {
        if self.wire.queues_frames() {
            return;
        }
        let (front, back) = self.write_buf.as_slices();
        let keep = match memchr::memchr(b'\n', front) {
            Some(at) => at + 1,
            None => memchr::memchr(b'\n', back)
                .map_or(front.len() + back.len(), |at| front.len() + at + 1),
        };
        self.write_buf.truncate(keep);
        self.write_buf.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests;
