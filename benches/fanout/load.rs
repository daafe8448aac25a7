//! The load generator: one thread, one mio `Poll`, every client of a scenario.
//!
//! Senders write fixed-length lines at an offered rate, each starting with its send time
//! (nanoseconds since the swarm's epoch, 16 hex digits). Readers count bytes (every line has
//! the same length, so lines = bytes / length) and take one latency sample per read: the first
//! complete line of the chunk, which is the oldest line in it, so the reported latencies lean
//! pessimistic. Parsing every line would make the generator, not the server, the bottleneck.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::histogram::Histogram;
use crate::target::{Target, thread_cpu_time};

/// What a client of the swarm does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends lines and reads everyone else's.
    Sender,
    /// Only reads.
    Reader,
    /// Never reads: a slow consumer on purpose.
    Stuck,
}

struct Peer {
    stream: TcpStream,
    role: Role,
    /// Bytes read since the last reset.
    bytes_in: u64,
    /// Total bytes read mod the line length: where the next line starts.
    phase: usize,
    /// Set when the server closed or reset the connection.
    closed_at: Option<Instant>,
    /// Lines generated but not yet taken by the kernel.
    out: Vec<u8>,
    out_sent: usize,
    lines_sent: u64,
}

/// The result of one measured run.
#[derive(Clone, Default)]
pub struct Outcome {
    pub offered_rate: f64,
    pub expected: u64,
    pub delivered: u64,
    pub latency: Histogram,
    /// Readers and senders the server disconnected.
    pub disconnected: usize,
    /// When (since the run started) each stuck client was disconnected.
    pub stuck_dropped_after: Vec<Duration>,
    pub send_phase: Duration,
    /// The whole run: send phase plus drain (the span the CPU times cover).
    pub wall: Duration,
    pub loadgen_cpu: Duration,
    pub server_cpu: Duration,
    pub rss_start: u64,
    pub rss_max: u64,
    pub rss_end: u64,
    /// The generator could not hand its lines to the server (its send backlog grew).
    pub backlogged: bool,
    /// Lines found where the stream should have had a line boundary.
    pub misaligned: u64,
}

impl Outcome {
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.delivered) as f64 / self.expected as f64
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.send_phase.as_secs_f64().max(1e-9)
    }
}

/// A generator backlog past this means the server is not keeping up with the offered rate.
const MAX_BACKLOG: usize = 4 << 20;

/// All clients of a scenario.
pub struct Swarm {
    poll: Poll,
    events: Events,
    peers: Vec<Peer>,
    /// Indices of the senders in `peers`: the per-pass work touches only them.
    senders: Vec<usize>,
    /// Reused list of (peer, hung up) from the last poll.
    ready: Vec<(usize, bool)>,
    epoch: Instant,
    line_len: usize,
    template: Vec<u8>,
    read_buf: Vec<u8>,
    latency: Histogram,
    misaligned: u64,
}

impl Swarm {
    pub fn new(line_len: usize) -> Swarm {
        assert!(line_len >= 32, "lines carry a 26-byte header");
        let mut template = vec![b'x'; line_len];
        template[line_len - 1] = b'\n';
        Swarm {
            poll: Poll::new().expect("create poll"),
            events: Events::with_capacity(4096),
            peers: Vec::new(),
            senders: Vec::new(),
            ready: Vec::new(),
            epoch: Instant::now(),
            line_len,
            template,
            read_buf: vec![0; 256 * 1024],
            latency: Histogram::default(),
            misaligned: 0,
        }
    }

    /// Connects `count` clients with `role`; fails if the server stops accepting.
    pub fn connect(&mut self, addr: SocketAddr, role: Role, count: usize) -> Result<(), String> {
        for _ in 0..count {
            let std_stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connection {} failed: {e}", self.peers.len() + 1))?;
            std_stream.set_nodelay(true).map_err(|e| e.to_string())?;
            std_stream
                .set_nonblocking(true)
                .map_err(|e| e.to_string())?;
            let mut stream = TcpStream::from_std(std_stream);
            let token = Token(self.peers.len());
            let interest = match role {
                Role::Sender => Interest::READABLE | Interest::WRITABLE,
                Role::Reader | Role::Stuck => Interest::READABLE,
            };
            self.poll
                .registry()
                .register(&mut stream, token, interest)
                .map_err(|e| e.to_string())?;
            if role == Role::Sender {
                self.senders.push(self.peers.len());
            }
            self.peers.push(Peer {
                stream,
                role,
                bytes_in: 0,
                phase: 0,
                closed_at: None,
                out: Vec::new(),
                out_sent: 0,
                lines_sent: 0,
            });
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Makes sure the server has registered every client: the first sender repeats a line
    /// until every reader has one, then the swarm waits for quiet and forgets the counts.
    pub fn warm_up(&mut self) -> Result<(), String> {
        let sender = *self.senders.first().ok_or("no sender")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next_probe = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_probe {
                self.queue_lines(sender, 1, now);
                next_probe = now + Duration::from_millis(50);
            }
            self.flush_senders();
            self.poll_once(Duration::from_millis(5));
            if let Some(p) = self.peers.iter().find(|p| p.closed_at.is_some()) {
                return Err(format!("the server closed a {:?} during warm-up", p.role));
            }
            let everyone = self
                .peers
                .iter()
                .enumerate()
                .all(|(i, p)| i == sender || p.role == Role::Stuck || p.bytes_in > 0);
            if everyone {
                break;
            }
            if now > deadline {
                return Err("warm-up: not every client received a line in 30 s".into());
            }
        }
        // Quiet: nothing arrives for 100 ms.
        let mut last_total = u64::MAX;
        while last_total != self.total_bytes_in() {
            last_total = self.total_bytes_in();
            let until = Instant::now() + Duration::from_millis(100);
            while Instant::now() < until {
                self.poll_once(Duration::from_millis(10));
            }
        }
        for peer in &mut self.peers {
            peer.bytes_in = 0;
            peer.lines_sent = 0;
        }
        Ok(())
    }

    /// Offers `rate` lines/s (spread over the senders) for `duration`, then reads for up to
    /// `drain` until everything expected arrived.
    pub fn run(
        &mut self,
        target: &Target,
        rate: f64,
        duration: Duration,
        drain: Duration,
    ) -> Outcome {
        let senders = self.senders.clone();
        let mut outcome = Outcome {
            offered_rate: rate,
            rss_start: target.rss_bytes(),
            ..Outcome::default()
        };
        self.latency = Histogram::default();
        self.misaligned = 0;
        let cpu_server = target.cpu_time();
        let cpu_self = thread_cpu_time();
        let start = Instant::now();
        let mut next_rss = start;
        let mut generated = 0u64;
        let mut turn = 0usize;
        loop {
            let now = Instant::now();
            let elapsed = now - start;
            if now >= next_rss {
                let rss = target.rss_bytes();
                outcome.rss_max = outcome.rss_max.max(rss);
                next_rss = now + Duration::from_millis(100);
            }
            let sending = elapsed < duration;
            if sending {
                let due = (rate * elapsed.as_secs_f64()) as u64;
                // At most 1,000 lines per sender per pass, so reading is never starved.
                let batch = (due - generated.min(due)).min(1000 * senders.len() as u64);
                for _ in 0..batch {
                    let sender = senders[turn % senders.len()];
                    turn += 1;
                    self.queue_lines(sender, 1, now);
                }
                generated += batch;
            } else if outcome.send_phase.is_zero() {
                outcome.send_phase = elapsed;
            }
            self.flush_senders();
            if self
                .peers
                .iter()
                .any(|p| p.out.len() - p.out_sent > MAX_BACKLOG)
            {
                outcome.backlogged = true;
            }
            let wait = if sending {
                let next_due = Duration::from_secs_f64((generated + 1) as f64 / rate);
                next_due
                    .saturating_sub(elapsed)
                    .min(Duration::from_millis(1))
            } else {
                Duration::from_millis(1)
            };
            let stuck_closed = self.poll_once(wait);
            for _ in 0..stuck_closed {
                outcome.stuck_dropped_after.push(now - start);
            }
            if !sending {
                let expected = self.expected_deliveries();
                if self.delivered() >= expected || elapsed >= duration + drain {
                    break;
                }
            }
        }
        outcome.wall = start.elapsed();
        outcome.expected = self.expected_deliveries();
        outcome.delivered = self.delivered();
        outcome.latency = std::mem::take(&mut self.latency);
        outcome.misaligned = self.misaligned;
        outcome.disconnected = self
            .peers
            .iter()
            .filter(|p| p.role != Role::Stuck && p.closed_at.is_some())
            .count();
        outcome.loadgen_cpu = thread_cpu_time() - cpu_self;
        outcome.server_cpu = target.cpu_time().saturating_sub(cpu_server);
        outcome.rss_end = target.rss_bytes();
        outcome.rss_max = outcome.rss_max.max(outcome.rss_end);
        outcome
    }

    /// Appends `count` lines stamped with `now` to a sender's output.
    fn queue_lines(&mut self, sender: usize, count: usize, now: Instant) {
        let stamp = now.duration_since(self.epoch).as_nanos() as u64;
        let peer = &mut self.peers[sender];
        if peer.out_sent == peer.out.len() {
            peer.out.clear();
            peer.out_sent = 0;
        }
        for _ in 0..count {
            let start = peer.out.len();
            peer.out.extend_from_slice(&self.template);
            let line = &mut peer.out[start..];
            write_hex(&mut line[..16], stamp);
            line[16] = b' ';
            write_hex(&mut line[17..25], peer.lines_sent);
            line[25] = b' ';
            peer.lines_sent += 1;
        }
    }

    /// Hands each sender's pending lines to the kernel, as far as it takes them.
    fn flush_senders(&mut self) {
        for &index in &self.senders {
            let peer = &mut self.peers[index];
            while peer.out_sent < peer.out.len() && peer.closed_at.is_none() {
                match peer.stream.write(&peer.out[peer.out_sent..]) {
                    Ok(n) => peer.out_sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => peer.closed_at = Some(Instant::now()),
                }
            }
        }
    }

    /// Waits up to `timeout` for events and reads every readable client; returns how many
    /// stuck clients the server closed in this pass.
    fn poll_once(&mut self, timeout: Duration) -> usize {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll failed: {e}");
            return 0;
        }
        let mut stuck_closed = 0;
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(
            self.events
                .iter()
                .map(|e| (e.token().0, e.is_read_closed() || e.is_error())),
        );
        for &(index, hung_up) in &ready {
            let peer = &mut self.peers[index];
            if peer.closed_at.is_some() {
                continue;
            }
            if peer.role == Role::Stuck {
                if hung_up {
                    peer.closed_at = Some(Instant::now());
                    stuck_closed += 1;
                }
                continue;
            }
            self.read_peer(index, hung_up);
        }
        self.ready = ready;
        stuck_closed
    }

    /// Reads one client until the kernel has nothing more, sampling one latency per read.
    /// A read shorter than the buffer drained the socket (new data will raise a new edge),
    /// unless the peer also hung up, when reading on finds the end of the stream.
    fn read_peer(&mut self, index: usize, hung_up: bool) {
        let line_len = self.line_len;
        loop {
            let peer = &mut self.peers[index];
            let n = match peer.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    peer.closed_at = Some(Instant::now());
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    peer.closed_at = Some(Instant::now());
                    return;
                }
            };
            let first = (line_len - peer.phase) % line_len;
            peer.bytes_in += n as u64;
            peer.phase = (peer.phase + n) % line_len;
            let chunk = &self.read_buf[..n];
            if first + line_len <= n {
                let line = &chunk[first..first + line_len];
                match parse_hex(&line[..16]) {
                    Some(stamp) if line[line_len - 1] == b'\n' => {
                        let sent = self.epoch + Duration::from_nanos(stamp);
                        self.latency
                            .record(Instant::now().saturating_duration_since(sent));
                    }
                    _ => self.misaligned += 1,
                }
            }
            if n < self.read_buf.len() && !hung_up {
                return;
            }
        }
    }

    fn total_bytes_in(&self) -> u64 {
        self.peers.iter().map(|p| p.bytes_in).sum()
    }

    /// Lines the readers should have: each sender's lines, once per other non-stuck client.
    fn expected_deliveries(&self) -> u64 {
        let readers = self.peers.iter().filter(|p| p.role != Role::Stuck).count() as u64;
        self.peers
            .iter()
            .filter(|p| p.role == Role::Sender)
            .map(|p| p.lines_sent * (readers - 1))
            .sum()
    }

    fn delivered(&self) -> u64 {
        self.peers
            .iter()
            .filter(|p| p.role != Role::Stuck)
            .map(|p| p.bytes_in / self.line_len as u64)
            .sum()
    }
}

fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16)?;
        Some(acc << 4 | u64::from(v))
    })
}
