//! One client's socket and buffers: reading until the kernel has no more, queueing output,
//! flushing it with vectored writes and keeping the mio interest in step with the queue.
//!
//! A connection knows nothing about other clients: the event loop hands it bytes to send and
//! takes the complete lines it read. Every way a client can misbehave or vanish comes back
//! as a [`DisconnectReason`], never as a panic.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::admission::access::AddressPlace;
use crate::transport::Transport;
use socket2::{SockRef, TcpKeepalive};

use crate::conn::socket_queues;
use crate::wire::framing::{self, LineFramer};
use crate::wire::websocket::{self, CloseCode, Stop};

/// Most iovecs one `writev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;
/// Unanswered keepalive probes before a client's host counts as gone.
const KEEPALIVE_PROBES: u32 = 4;

/// Why a connection ended; logged once and counted in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed (or half-closed) its side.
    ClientClosed,
    /// A read or write failed (reset by peer, broken pipe, ...).
    Error(io::ErrorKind),
    /// The client's host stopped answering: keepalive probes (`--tcp-keepalive`) or the
    /// kernel's retransmissions went unacknowledged until it gave up.
    PeerVanished,
    /// More than `--max-queue` bytes were waiting for the client.
    SlowConsumer { queued: usize },
    /// The client sent a line longer than `--max-line`.
    LineTooLong,
    /// The client's first line was an HTTP request line: a web page's request (a no-cors
    /// `fetch` or a form) sent to the line port, whose lines must not be broadcast.
    HttpRequest,
    /// The server shut down; the client got everything that was queued for it.
    Shutdown,
    /// The server shut down, and the drain deadline passed before the client took its output.
    ShutdownTimeout { unsent: usize },
    /// A WebSocket client sent a Close frame (with this status code, if any).
    WebSocketClosed { code: Option<u16> },
    /// A WebSocket client broke the protocol; it is closed with `code`.
    WebSocketViolation { code: u16, why: &'static str },
    /// A WebSocket client did not answer a ping.
    PingTimeout,
}

impl DisconnectReason {
    /// Whether the client is dropped with output it will never take: then the close is a
    /// reset, so the kernel frees that output at once instead of holding it for minutes
    /// (with zero-window probes) for a peer that is not reading.
    pub fn abandons_output(self) -> bool {
        matches!(
            self,
            DisconnectReason::SlowConsumer { .. } | DisconnectReason::ShutdownTimeout { .. }
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClientClosed => write!(f, "client closed"),
            DisconnectReason::Error(kind) => write!(f, "error: {kind}"),
            DisconnectReason::PeerVanished => {
                write!(
                    f,
                    "peer vanished (no answer to keepalive or retransmissions)"
                )
            }
            DisconnectReason::SlowConsumer { queued } => {
                write!(f, "slow consumer: {queued} bytes queued")
            }
            DisconnectReason::LineTooLong => write!(f, "line too long"),
            DisconnectReason::HttpRequest => write!(f, "sent an HTTP request to the line port"),
            DisconnectReason::Shutdown => write!(f, "server shutdown"),
            DisconnectReason::ShutdownTimeout { unsent } => {
                write!(f, "server shutdown timed out with {unsent} bytes unsent")
            }
            DisconnectReason::WebSocketClosed { code: Some(code) } => {
                write!(f, "client closed (WebSocket close {code})")
            }
            DisconnectReason::WebSocketClosed { code: None } => {
                write!(f, "client closed (WebSocket close)")
            }
            DisconnectReason::WebSocketViolation { code, why } => {
                write!(f, "WebSocket protocol error {code}: {why}")
            }
            DisconnectReason::PingTimeout => write!(f, "no answer to WebSocket pings"),
        }
    }
}

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

/// How a call to [`ClientConnection::read_until_would_block`] ended.
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

/// What [`ClientConnection::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Bytes the kernel took, even when the client then failed.
    pub written: usize,
    /// Set when the client must go: a slow consumer (nothing was queued) or a dead socket.
    pub failure: Option<DisconnectReason>,
}

/// Maps a socket error to why the client is dropped.
fn failure(error: &io::Error) -> DisconnectReason {
    match error.kind() {
        // ETIMEDOUT on a connected socket: keepalive probes or retransmissions went
        // unanswered.
        io::ErrorKind::TimedOut => DisconnectReason::PeerVanished,
        kind => DisconnectReason::Error(kind),
    }
}

/// How lines look on a client's wire.
#[derive(Debug)]
enum Wire {
    /// Plain TCP: newline-terminated lines both ways.
    Lines(LineFramer),
    /// WebSocket: messages in, one frame per line out (boxed: plain clients stay small).
    WebSocket(Box<WebSocketState>),
}

/// A WebSocket client's decoder and liveness.
#[derive(Debug)]
struct WebSocketState {
    decoder: websocket::Decoder,
    /// When the client last sent anything (any frame, a pong included).
    last_heard: Instant,
    /// Whether it was pinged since then.
    pinged: bool,
}

/// What a WebSocket client's silence calls for (see [`ClientConnection::check_liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently enough, or already pinged and still within its time to answer.
    Fine,
    /// Silent for a ping interval: a ping was queued.
    Pinged,
    /// Pinged, and silent for another interval: drop it.
    Gone,
}

/// A connected client: its socket, its unfinished input and its pending output.
#[derive(Debug)]
pub struct ClientConnection {
    transport: Transport,
    peer: SocketAddr,
    /// Its place in its address's count (`--max-clients-per-ip`): held, never read, and
    /// given back when the connection is dropped.
    _place: AddressPlace,
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
    /// Whether its first line was checked for an HTTP request line (see
    /// [`DisconnectReason::HttpRequest`]); WebSocket clients need no check.
    first_line_checked: bool,
}

impl ClientConnection {
    /// Wraps an accepted transport, registered for reading under `token` (and through its
    /// TLS handshake, if any).
    pub fn new(transport: Transport, peer: SocketAddr, place: AddressPlace) -> ClientConnection {
        ClientConnection {
            peer,
            _place: place,
            wire: Wire::Lines(LineFramer::default()),
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
            first_line_checked: false,
            transport,
        }
    }

    /// Wraps a transport whose WebSocket upgrade was accepted (registered as for
    /// [`ClientConnection::new`]), and queues the `101` answer `handshake` (the caller
    /// flushes it).
    pub fn new_websocket(
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        handshake: &[u8],
    ) -> ClientConnection {
        let mut connection = ClientConnection::new(transport, peer, place);
        connection.wire = Wire::WebSocket(Box::new(WebSocketState {
            decoder: websocket::Decoder::default(),
            last_heard: Instant::now(),
            pinged: false,
        }));
        connection.queue(handshake, handshake.len());
        connection
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether this client speaks WebSocket (it receives the batch as frames).
    pub fn is_websocket(&self) -> bool {
        matches!(self.wire, Wire::WebSocket(_))
    }

    /// For an open WebSocket client silent for `interval`: pings it (once), or, if it was
    /// pinged and stayed silent for another `interval`, says it is gone. Plain clients are
    /// always `Fine` (TCP keepalive watches them).
    pub fn check_liveness(&mut self, now: Instant, interval: Duration) -> Liveness {
        let Wire::WebSocket(state) = &mut self.wire else {
            return Liveness::Fine;
        };
        if !self.write_buf.is_empty() {
            // Still receiving what it is owed (a ping would wait behind it): --max-queue,
            // not silence, judges a client that is behind.
            state.last_heard = now;
            state.pinged = false;
            return Liveness::Fine;
        }
        let silent = now.saturating_duration_since(state.last_heard);
        if self.phase != Phase::Open || silent < interval {
            return Liveness::Fine;
        }
        if state.pinged {
            return if silent >= interval * 2 {
                Liveness::Gone
            } else {
                Liveness::Fine
            };
        }
        state.pinged = true;
        let ping = websocket::ping_frame();
        let limit = self.write_buf.len() + ping.len();
        self.queue(&ping, limit);
        Liveness::Pinged
    }

    /// What the client is told as it is sent away for `reason`, on its own wire: an `ERR`
    /// line or a WebSocket Close frame (nothing when there is nothing to say).
    pub fn farewell(&self, reason: DisconnectReason, max_line: usize) -> Vec<u8> {
        match (&self.wire, reason) {
            (Wire::Lines(_), DisconnectReason::LineTooLong) => {
                format!("ERR line too long (max {max_line} bytes)\n").into_bytes()
            }
            (Wire::Lines(_), DisconnectReason::HttpRequest) => {
                b"ERR this port speaks lines, not HTTP (browsers use the --http listener)\n"
                    .to_vec()
            }
            (Wire::Lines(_), _) => Vec::new(),
            (Wire::WebSocket(_), reason) => {
                let (code, why) = match reason {
                    DisconnectReason::LineTooLong => (
                        CloseCode::MessageTooBig.code(),
                        format!("message too long (max {max_line} bytes)"),
                    ),
                    DisconnectReason::WebSocketClosed { code } => {
                        (code.unwrap_or(CloseCode::Normal.code()), String::new())
                    }
                    DisconnectReason::WebSocketViolation { code, why } => (code, why.to_string()),
                    DisconnectReason::Shutdown => (
                        CloseCode::GoingAway.code(),
                        "server shutting down".to_string(),
                    ),
                    _ => return Vec::new(),
                };
                websocket::close_frame(code, &why)
            }
        }
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
    /// the client must stop if it must. A WebSocket client's pongs are queued here.
    fn decode(
        &mut self,
        chunk: &[u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
    ) -> (usize, Option<DisconnectReason>) {
        match &mut self.wire {
            Wire::Lines(framer) => {
                let start = lines_out.len();
                let (lines, stop) = match framer.push(chunk, max_line, lines_out) {
                    Ok(lines) => (lines, None),
                    Err(too_long) => (too_long.lines_before, Some(DisconnectReason::LineTooLong)),
                };
                if self.refuse_http_first_line(lines_out, start, false) {
                    return (0, Some(DisconnectReason::HttpRequest));
                }
                (lines, stop)
            }
            Wire::WebSocket(state) => {
                state.last_heard = Instant::now();
                state.pinged = false;
                let mut pongs = Vec::new();
                let decoded = state.decoder.push(chunk, max_line, lines_out, &mut pongs);
                if !pongs.is_empty() {
                    // Within --max-queue plus this read's pongs: the caller judges the
                    // queue right after the read (a client that pings without reading is
                    // a slow consumer like any other).
                    let limit = self.write_buf.len() + pongs.len();
                    self.queue(&pongs, limit);
                }
                let stop = decoded.stop.map(|stop| match stop {
                    Stop::Closed(code) => DisconnectReason::WebSocketClosed { code },
                    Stop::Fail(CloseCode::MessageTooBig, _) => DisconnectReason::LineTooLong,
                    Stop::Fail(code, why) => DisconnectReason::WebSocketViolation {
                        code: code.code(),
                        why,
                    },
                });
                (decoded.lines, stop)
            }
        }
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
        let Wire::Lines(framer) = &mut self.wire else {
            return 0;
        };
        while framer.pending() > 0 && self.phase == Phase::Open {
            // One byte more than the line may still hold: its newline, or the proof that it
            // is too long. In all, at most --max-line + 1 bytes are read.
            let want = (max_line + 1 - framer.pending()).min(scratch.len());
            let n = match self.transport.read(&mut scratch[..want]) {
                Ok(0) => return 0, // the client closed: the line ends here
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return 0, // nothing more yet (WouldBlock) or ever: it ends here
            };
            let end = memchr::memchr(b'\n', &scratch[..n]).map_or(n, |newline| newline + 1);
            // Grow exactly: this runs once per closing client, and the caller's buffer has
            // a size bound to keep.
            lines_out.reserve_exact(framer.pending() + end);
            let start = lines_out.len();
            match framer.push(&scratch[..end], max_line, lines_out) {
                Ok(0) => {}
                Ok(lines) => {
                    let refused = self.refuse_http_first_line(lines_out, start, false);
                    return if refused { 0 } else { lines };
                }
                Err(_) => return 0, // past --max-line: never broadcast, like any such line
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
        match &self.wire {
            Wire::Lines(framer) => framer.pending(),
            Wire::WebSocket(state) => state.decoder.pending(),
        }
    }

    /// Takes the unfinished line out (with a `\n`) into `lines_out`; used at shutdown so that
    /// nothing a client sent is lost. Returns how many lines it added.
    pub fn end_unfinished_line(&mut self, lines_out: &mut Vec<u8>) -> usize {
        let start = lines_out.len();
        let lines = match &mut self.wire {
            Wire::Lines(framer) => framer.finish(lines_out),
            // A WebSocket message is atomic: one the client never finished is not delivered.
            Wire::WebSocket(_) => 0,
        };
        if self.refuse_http_first_line(lines_out, start, true) {
            return 0;
        }
        lines
    }

    /// Screens a line client's first line (complete, or `unfinished` at its end), appended
    /// to `lines_out` from `start`: a web page's HTTP request (a no-cors POST to the line
    /// port) is taken out again, so none of it reaches anyone. True if it was.
    fn refuse_http_first_line(
        &mut self,
        lines_out: &mut Vec<u8>,
        start: usize,
        unfinished: bool,
    ) -> bool {
        if self.first_line_checked || lines_out.len() == start {
            return false;
        }
        self.first_line_checked = true;
        let first = lines_out[start..]
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default();
        let http = match unfinished {
            false => framing::is_http_request_line(first),
            true => framing::starts_like_http_request(first),
        };
        if http {
            lines_out.truncate(start);
        }
        http
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
        if self.is_websocket() {
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

/// Sets a new client's socket options: no Nagle (lines are batched already; Nagle would only
/// add latency), and keepalive after `keepalive` of silence (`None`: off).
pub fn configure_socket(stream: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    match keepalive {
        Some(idle) => enable_keepalive(stream, idle),
        None => Ok(()),
    }
}

/// Turns on TCP keepalive: probes after `idle` of silence, then every `idle / 4` (at least
/// 1 s), [`KEEPALIVE_PROBES`] of them.
///
/// Not `TCP_USER_TIMEOUT` as well: since Linux 5.11 it also aborts a live client that keeps
/// its window shut (one that is not reading), which would drop a slow reader by time instead
/// of by `--max-queue`. A vanished host with output in flight is caught anyway: it stops
/// acknowledging, so its queue fills and it is a slow consumer, or, with little traffic,
/// the kernel's retransmissions give up on it (`tcp_retries2`, about 15 minutes).
fn enable_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let interval = (idle / 4).max(Duration::from_secs(1));
    SockRef::from(stream).set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(KEEPALIVE_PROBES),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A connected pair on loopback: our side as a client connection, and the peer.
    fn pair() -> (ClientConnection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, addr) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut ours = TcpStream::from_std(ours);
        poll.registry()
            .register(&mut ours, Token(9), Interest::READABLE)
            .unwrap();
        let place = AddressPlace::uncounted(addr.ip());
        (
            ClientConnection::new(Transport::Plain(ours), addr, place),
            peer,
        )
    }

    #[test]
    fn more_slices_than_iov_max_go_out_whole_and_in_order() {
        let (mut connection, mut peer) = pair();
        let bytes: Vec<u8> = (0..3 * IOV_MAX + 7).map(|i| (i % 251) as u8).collect();
        let mut slices: Vec<IoSlice<'_>> = bytes.chunks(1).map(IoSlice::new).collect();
        let sent = connection.send(&mut slices, 1 << 20);
        assert_eq!(sent.failure, None);
        assert_eq!(sent.written + connection.queued(), bytes.len());
        connection.flush().expect("flush");
        let mut got = vec![0; bytes.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, bytes);
    }

    #[test]
    fn a_send_that_would_pass_max_queue_queues_nothing_and_says_slow_consumer() {
        let (mut connection, _peer) = pair();
        let chunk = vec![b'q'; 1 << 20];
        let mut total_queued = 0;
        // Fill the kernel's buffers until output has to wait here.
        for _ in 0..64 {
            let sent = connection.send(&mut [IoSlice::new(&chunk)], 8 << 20);
            assert_eq!(sent.failure, None);
            total_queued = connection.queued();
            if total_queued > 0 {
                break;
            }
        }
        assert!(total_queued > 0, "the kernel took 64 MiB without a reader");
        let sent = connection.send(&mut [IoSlice::new(&chunk)], total_queued + 10);
        assert!(matches!(
            sent.failure,
            Some(DisconnectReason::SlowConsumer { .. })
        ));
        assert_eq!(connection.queued(), total_queued, "nothing was queued");
    }

    #[test]
    fn the_rest_of_a_line_is_read_across_reads_and_no_further() {
        use std::io::Write as _;
        let (mut connection, mut peer) = pair();
        let mut scratch = vec![0; 64 * 1024];
        let mut out = Vec::new();
        peer.write_all(b"start-").unwrap();
        // Wait (bounded) until the bytes are readable, then frame them as an unfinished line.
        for _ in 0..1000 {
            if connection.unread_input() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let report = connection.read_until_would_block(&mut scratch, 1 << 20, &mut out);
        assert_eq!((report.lines, connection.unfinished_line_len()), (0, 6));
        // The rest is longer than one read (but fits the receive window), and more input
        // follows it.
        let rest = vec![b'r'; 90_000];
        peer.write_all(&rest).unwrap();
        peer.write_all(b"\nnext line\n").unwrap();
        for _ in 0..1000 {
            if connection.unread_input() >= rest.len() + 11 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            connection.read_rest_of_line(&mut scratch, 1 << 20, &mut out),
            1
        );
        assert_eq!(out.len(), 6 + rest.len() + 1);
        assert!(out.starts_with(b"start-r") && out.ends_with(b"r\n"));
        assert_eq!(connection.unfinished_line_len(), 0);
        assert_eq!(
            connection.read_rest_of_line(&mut scratch, 1 << 20, &mut out),
            0
        );
    }

    #[test]
    fn discarding_queued_lines_keeps_the_line_being_sent() {
        let (mut connection, _peer) = pair();
        connection
            .write_buf
            .extend(b"rest of a line\nnext\nand more\n");
        connection.discard_queued_lines();
        assert_eq!(connection.write_buf.make_contiguous(), b"rest of a line\n");
    }
}
