//! One client's socket and buffers: reading until the kernel has no more, queueing output,
//! flushing it with vectored writes and keeping the mio interest in step with the queue.
//!
//! A connection knows nothing about other clients: the event loop hands it bytes to send and
//! takes the complete lines it read. Every way a client can misbehave or vanish comes back
//! as a [`DisconnectReason`], never as a panic.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::framing::LineFramer;

/// Why a connection ended; logged once and counted in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed (or half-closed) its side.
    ClientClosed,
    /// A read or write failed (reset by peer, broken pipe, ...).
    Error(io::ErrorKind),
    /// More than `--max-queue` bytes were waiting for the client.
    SlowConsumer { queued: usize },
    /// The client sent a line longer than `--max-line`.
    LineTooLong,
    /// The server shut down; the client got everything that was queued for it.
    Shutdown,
    /// The server shut down, and the drain deadline passed before the client took its output.
    ShutdownTimeout { unsent: usize },
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
            DisconnectReason::SlowConsumer { queued } => {
                write!(f, "slow consumer: {queued} bytes queued")
            }
            DisconnectReason::LineTooLong => write!(f, "line too long"),
            DisconnectReason::Shutdown => write!(f, "server shutdown"),
            DisconnectReason::ShutdownTimeout { unsent } => {
                write!(f, "server shutdown timed out with {unsent} bytes unsent")
            }
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
    pub bytes: usize,
    pub lines: usize,
    pub end: ReadEnd,
}

/// A connected client: its socket, its unfinished input line and its pending output.
#[derive(Debug)]
pub struct ClientConnection {
    stream: TcpStream,
    peer: SocketAddr,
    framer: LineFramer,
    /// Output the kernel would not take yet, oldest first. Empty (and unallocated) unless the
    /// client's socket buffer is full.
    write_buf: VecDeque<u8>,
    /// The interest currently registered with the poller, to skip needless `epoll_ctl`s.
    interest: Interest,
    phase: Phase,
}

impl ClientConnection {
    /// Wraps an accepted stream and registers it for reading.
    pub fn register(
        mut stream: TcpStream,
        peer: SocketAddr,
        registry: &Registry,
        token: Token,
    ) -> io::Result<ClientConnection> {
        registry.register(&mut stream, token, Interest::READABLE)?;
        Ok(ClientConnection {
            stream,
            peer,
            framer: LineFramer::default(),
            write_buf: VecDeque::new(),
            interest: Interest::READABLE,
            phase: Phase::Open,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
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
            bytes: 0,
            lines: 0,
            end: ReadEnd::BudgetSpent,
        };
        let budget = scratch.len();
        while report.bytes < budget {
            match self.stream.read(&mut scratch[..budget - report.bytes]) {
                Ok(0) => return self.ended(report, DisconnectReason::ClientClosed, lines_out),
                Ok(n) => {
                    report.bytes += n;
                    if !self.is_open() {
                        continue;
                    }
                    match self.framer.push(&scratch[..n], max_line, lines_out) {
                        Ok(lines) => report.lines += lines,
                        Err(too_long) => {
                            report.lines += too_long.lines_before;
                            report.end = ReadEnd::Closed(DisconnectReason::LineTooLong);
                            return report;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    report.end = ReadEnd::WouldBlock;
                    return report;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.ended(report, DisconnectReason::Error(e.kind()), lines_out),
            }
        }
        report
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
            report.lines += self.framer.finish(lines_out);
        }
        report.end = ReadEnd::Closed(reason);
        report
    }

    /// Sends `parts` after anything already queued, writing straight from the caller's
    /// buffers when nothing is queued (the common case: no copy at all), and queueing what
    /// the kernel would not take. Fails with `SlowConsumer`, queueing nothing, when more than
    /// `max_queue` bytes would be left waiting: the queue never outgrows the limit. Returns
    /// the bytes the kernel took.
    pub fn send<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a [u8]> + Clone,
        max_queue: usize,
    ) -> Result<usize, DisconnectReason> {
        let incoming: usize = parts.clone().map(<[u8]>::len).sum();
        let written = if self.write_buf.is_empty() {
            self.write_direct(parts.clone())?
        } else {
            0
        };
        let queued = self.write_buf.len() + (incoming - written);
        if queued > max_queue {
            return Err(DisconnectReason::SlowConsumer { queued });
        }
        self.reserve_within(queued, max_queue);
        let mut skip = written;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            self.write_buf.extend(&part[skip..]);
            skip = 0;
        }
        Ok(written)
    }

    /// Writes `parts` with as few `writev` calls as possible until all are sent or the
    /// socket is full; returns the bytes written.
    fn write_direct<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Result<usize, DisconnectReason> {
        // A batch has one run per sender that spoke this turn; 16 covers nearly every turn
        // in one call, and a small array is cheap to set up per recipient.
        const MAX_IOVECS: usize = 16;
        let mut done_parts = 0;
        let mut written = 0;
        loop {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut len = 0;
            for part in parts.clone().skip(done_parts).take(MAX_IOVECS) {
                iov[count] = IoSlice::new(part);
                len += part.len();
                count += 1;
            }
            if count == 0 {
                return Ok(written);
            }
            match self.stream.write_vectored(&iov[..count]) {
                Ok(n) => {
                    written += n;
                    if n < len {
                        return Ok(written);
                    }
                    done_parts += count;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::Error(e.kind())),
            }
        }
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

    /// Queues `bytes` without trying to write; `flush` sends them.
    fn queue(&mut self, bytes: &[u8]) {
        self.write_buf.extend(bytes);
    }

    /// Writes queued output until it is all sent or the socket is full. Both halves of the
    /// ring buffer go out in one `writev`, so a wrapped queue needs no `make_contiguous`.
    pub fn flush(&mut self) -> Result<usize, DisconnectReason> {
        let mut written = 0;
        while !self.write_buf.is_empty() {
            let (front, back) = self.write_buf.as_slices();
            let iov = [IoSlice::new(front), IoSlice::new(back)];
            match self.stream.write_vectored(&iov) {
                Ok(0) => return Err(DisconnectReason::Error(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.write_buf.drain(..n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::Error(e.kind())),
            }
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
        let wanted = if self.write_buf.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        if wanted != self.interest {
            registry.reregister(&mut self.stream, token, wanted)?;
            self.interest = wanted;
        }
        Ok(())
    }

    /// Makes the coming close a reset (SO_LINGER 0) instead of a FIN after the unsent data.
    pub fn reset_on_close(&self) -> io::Result<()> {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads one `linger` of the given size from a live local; the fd
        // is owned by `self.stream` for the whole call.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Removes the socket from the poller (closing it happens when the connection drops).
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.stream)
    }

    /// Starts leaving for `reason`: after `farewell` and everything already queued is sent,
    /// the socket is shut down for writing and closed once the client has it all, or at
    /// `deadline`.
    pub fn begin_drain(&mut self, reason: DisconnectReason, farewell: &[u8], deadline: Instant) {
        self.queue(farewell);
        self.phase = Phase::Draining {
            reason,
            deadline,
            write_shut: false,
        };
    }

    /// Takes the unfinished line out (with a `\n`) into `lines_out`; used at shutdown so that
    /// nothing a client sent is lost. Returns how many lines it added.
    pub fn finish_partial_line(&mut self, lines_out: &mut Vec<u8>) -> usize {
        self.framer.finish(lines_out)
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
        if !self.write_buf.is_empty() {
            return false;
        }
        if !write_shut {
            // An error means the peer is gone already; the close that follows is all we need.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.phase = Phase::Draining {
                reason,
                deadline,
                write_shut: true,
            };
        }
        self.unacknowledged_bytes() == 0
    }

    /// Bytes the kernel still holds for the client, sent or not, but not yet acknowledged.
    fn unacknowledged_bytes(&self) -> usize {
        let mut outq: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one c_int through the pointer, which
        // points at a live local; the fd is owned by `self.stream` for the whole call.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut outq) };
        if rc == 0 { outq.max(0) as usize } else { 0 }
    }
}
