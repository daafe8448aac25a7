//! The load generator: one thread, one mio `Poll`, every client of a scenario.
//!
//! Senders write fixed-length lines (see `line`) at an offered rate, round-robin over the
//! senders so the load is spread evenly, in 1 ms ticks (mio's poll timeout is whole
//! milliseconds): at 5,000 lines/s each tick writes 5 lines. Every reader checks every line it
//! receives (see `receive`) and times it from the kernel's arrival timestamp (see `net`).
//! Readers speak plain TCP, or WebSocket to a server's web listener (see `ws`): their frames
//! are turned back into lines before the same checks. Clients may also speak TLS (see
//! `tls_client`): their sessions are driven by the same loop, and a reader's records are
//! decrypted back into lines before the same checks.

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::http_stream::{self, Stream};
use crate::line::{self, Header};
use crate::net::{enable_rx_timestamps, quick_ack, recv_stamped, wall_ns};
use crate::receive::{Expect, Receiver, Tally};
use crate::target::{Watched, thread_cpu_time, thread_cpu_wait};
use crate::tls_client;
use crate::ws::{self, Deframer};

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

/// What a client speaks to the server.
enum Wire {
    /// Lines, as they are.
    Tcp,
    /// WebSocket (readers only): a frame per line, decoded back into the line.
    WebSocket(Deframer),
    /// Lines through TLS: records decrypted back into the lines, and a sender's lines
    /// encrypted (boxed: plain clients stay small).
    Tls(Box<rustls::ClientConnection>),
    /// A reader of `GET /lines` or `GET /events`: chunks or events decoded back into the
    /// lines.
    Http(http_stream::Decoder),
}

/// One client connection of the swarm.
struct Peer {
    stream: TcpStream,
    role: Role,
    /// What it speaks: plain lines, WebSocket frames, or TLS records.
    wire: Wire,
    /// The server it is connected to: an index into the swarm's `servers`.
    side: usize,
    /// Its room (`--rooms`): an index into the swarm's `rooms`; 0 for every client that
    /// joined none. A line reaches the readers of its sender's room and side only.
    room: usize,
    /// Its checks on what it receives.
    receiver: Receiver,
    /// Bytes read over the swarm's lifetime (warm-up waits until each reader has some); for
    /// TLS, plaintext bytes, so that session tickets do not count.
    bytes_in: u64,
    /// Set when the server closed or reset the connection.
    closed_at: Option<Instant>,
    /// Lines generated but not yet taken by the kernel.
    out: Vec<u8>,
    out_sent: usize,
}

/// Connects to `addr` (within 3 s) as the swarm's connection number `n`.
fn dial(addr: SocketAddr, n: usize) -> Result<std::net::TcpStream, String> {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connection {n} failed: {e}"))
}

/// What to offer in one measured run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Lines per second, over all senders together.
    pub rate: f64,
    /// How long lines are offered: the send phase.
    pub duration: Duration,
    /// How long after the send phase to wait for lines still on their way.
    pub drain: Duration,
}

/// The result of one measured run.
pub struct Outcome {
    pub load: Load,
    /// Deliveries each line should make: the clients other than its sender that read.
    pub recipients: u64,
    /// Deliveries the lines offered in the send phase should have made.
    pub expected: u64,
    /// What the readers received: distinct lines (a line to 100 readers counts 100), faults,
    /// latencies.
    pub tally: Tally,
    /// The same, split by the server the readers are connected to, in the order the swarm
    /// first connected to each (one entry when every client is on one server).
    pub sides: Vec<Side>,
    /// Readers and senders the server disconnected (stuck clients are not counted).
    pub disconnected: usize,
    /// When (since the run started) each stuck client was disconnected.
    pub stuck_dropped_after: Vec<Duration>,
    /// The send phase as it happened (the first pass at or past `load.duration`).
    pub send_phase: Duration,
    /// From the start of the send phase to the read of the last line counted in `tally`:
    /// the span delivery rates are computed over.
    pub counted_span: Duration,
    /// CPU used during the send phase, by the generator and by the server.
    pub loadgen_cpu_send: Duration,
    pub server_cpu_send: Duration,
    /// `server_cpu_send` by process, in the order the watched servers list them.
    pub server_cpu_send_each: Vec<Duration>,
    /// Server CPU over the whole run, drain included: all the work for `tally.delivered`.
    pub server_cpu_total: Duration,
    /// `server_cpu_total` by process.
    pub server_cpu_total_each: Vec<Duration>,
    /// Time the generator and the server were kept from their CPU during the send phase by
    /// other processes on a shared machine (see [`Watched::cpu_denied`] for the server's).
    pub loadgen_wait: Duration,
    pub server_wait: Duration,
    pub rss_start: u64,
    pub rss_max: u64,
    pub rss_end: u64,
    /// The server stopped reading a sender: lines the kernel would not take piled up past
    /// `MAX_BACKLOG` in the generator (TCP flow control pushing back from the server).
    pub backlogged: bool,
    /// The generator could not even generate the offered lines on time.
    pub behind: bool,
}

/// Generator CPU during the send phase at or above this means the generator, not the
/// server, may be what limits the run.
pub const GENERATOR_SATURATED_PCT: f64 = 95.0;
/// Waiting for a CPU longer than this share of the send phase means the machine was busy
/// with something else: the run's figures are not the servers' alone.
pub const CONTENDED_PCT: f64 = 5.0;

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.tally.delivered)
    }

    /// Lost lines as a fraction of the expected deliveries.
    pub fn loss(&self) -> f64 {
        self.lost() as f64 / self.expected.max(1) as f64
    }

    /// The rate asked for, in deliveries per second.
    pub fn offered_deliveries_per_sec(&self) -> f64 {
        self.load.rate * self.recipients as f64
    }

    /// Deliveries counted over the span they were counted in (send start → last arrival).
    pub fn achieved_deliveries_per_sec(&self) -> f64 {
        self.tally.delivered as f64 / self.counted_span.as_secs_f64().max(1e-9)
    }

    pub fn server_cpu_pct(&self) -> f64 {
        percent(self.server_cpu_send, self.send_phase)
    }

    pub fn loadgen_cpu_pct(&self) -> f64 {
        percent(self.loadgen_cpu_send, self.send_phase)
    }

    /// Server CPU per delivery, drain included.
    pub fn server_ns_per_delivery(&self) -> f64 {
        self.server_cpu_total.as_nanos() as f64 / self.tally.delivered.max(1) as f64
    }

    /// The generator was saturated or could not generate the offered lines on time, or
    /// other processes took the CPUs: the run measures the generator (or the machine) at
    /// least as much as the server.
    pub fn generator_limited(&self) -> bool {
        self.loadgen_cpu_pct() >= GENERATOR_SATURATED_PCT || self.behind || self.contended()
    }

    /// The generator or the server waited for its CPU more than `CONTENDED_PCT` of the
    /// send phase.
    pub fn contended(&self) -> bool {
        let waited = self.loadgen_wait.max(self.server_wait);
        percent(waited, self.send_phase) > CONTENDED_PCT
    }

    /// Latency quantile in milliseconds (NaN when nothing arrived).
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.tally.latency, quantile)
    }

    /// Dups, reorderings, cut lines: faults a correct server never has.
    pub fn integrity_faults(&self) -> u64 {
        self.tally.duplicates + self.tally.reordered + self.tally.malformed
    }
}

/// What the readers connected to one server received in a run.
pub struct Side {
    /// Deliveries the lines of the send phase owed these readers.
    pub expected: u64,
    pub tally: Tally,
    /// Readers (and senders) on this server that it disconnected.
    pub disconnected: usize,
}

impl Side {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.tally.delivered)
    }

    /// Lost lines as a fraction of the expected deliveries.
    pub fn loss(&self) -> f64 {
        self.lost() as f64 / self.expected.max(1) as f64
    }

    /// Latency quantile in milliseconds (NaN when nothing arrived).
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        quantile_ms(&self.tally.latency, quantile)
    }
}

/// A histogram quantile (µs) in milliseconds; `quantile` 1.0 is the maximum.
pub fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return f64::NAN;
    }
    let us = if quantile >= 1.0 {
        histogram.max()
    } else {
        histogram.value_at_quantile(quantile)
    };
    us as f64 / 1000.0
}

/// CPU used by each process since `start` (both in the same process order).
fn cpu_since(start: &[Duration], now: &[Duration]) -> Vec<Duration> {
    now.iter()
        .zip(start)
        .map(|(now, start)| now.saturating_sub(*start))
        .collect()
}

fn percent(part: Duration, whole: Duration) -> f64 {
    100.0 * part.as_secs_f64() / whole.as_secs_f64().max(1e-9)
}

/// What was measured at the end of the send phase.
#[derive(Default)]
struct SendEnd {
    elapsed: Duration,
    /// Server CPU by process.
    server_cpu: Vec<Duration>,
    loadgen_cpu: Duration,
    loadgen_wait: Duration,
    server_wait: Duration,
    /// Deliveries owed for the lines written in the send phase, by server side, and in all.
    expected_by_side: Vec<u64>,
    expected: u64,
}

/// A sender backlog past this means the server is not reading the offered lines.
pub const MAX_BACKLOG: usize = 4 << 20;
/// Reads of one socket per visit; a socket with more left is visited again next pass, so
/// one flooded reader cannot starve the others (or the senders' schedule).
const MAX_READS_PER_VISIT: usize = 16;
const READ_BUF_LEN: usize = 256 * 1024;

/// The buffers of a WebSocket or TLS reader's read, shared by every such reader.
#[derive(Default)]
struct WireBuffers {
    /// The frames or records as read (`READ_BUF_LEN` bytes, allocated with the first
    /// WebSocket or TLS client).
    input: Vec<u8>,
    /// The line carried from the previous read, then the lines decoded from this one.
    lines: Vec<u8>,
    /// Pongs owed to the server's pings.
    pongs: Vec<u8>,
}

impl WireBuffers {
    /// Allocates the input buffer, once.
    fn allocate(&mut self) {
        if self.input.is_empty() {
            self.input = vec![0; READ_BUF_LEN];
        }
    }

    /// Decodes the `n` bytes of frames just read into `lines`, after the line `carried`
    /// from the previous read, and answers the server's pings on `stream`.
    fn decode(
        &mut self,
        deframer: &mut Deframer,
        carried: &[u8],
        n: usize,
        stream: &mut TcpStream,
    ) -> ws::Decoded {
        self.lines.clear();
        self.lines.extend_from_slice(carried);
        let decoded = deframer.push(&self.input[..n], &mut self.lines, &mut self.pongs);
        if !self.pongs.is_empty() {
            // Best effort: a reader writes nothing else, so its socket has room for a few
            // bytes of pongs; a server that got none drops the reader, counted as
            // disconnected.
            let _ = stream.write_all(&self.pongs);
            self.pongs.clear();
        }
        decoded
    }

    /// Decodes the `n` bytes of chunks or events just read into `lines`, after the line
    /// `carried` from the previous read.
    fn decode_http(
        &mut self,
        decoder: &mut http_stream::Decoder,
        carried: &[u8],
        n: usize,
    ) -> ws::Decoded {
        self.lines.clear();
        self.lines.extend_from_slice(carried);
        decoder.push(&self.input[..n], &mut self.lines)
    }

    /// Decrypts the `n` bytes of records just read into `lines`, after the line `carried`
    /// from the previous read, and sends what the session owes the server (best effort,
    /// as pongs are).
    fn decrypt(
        &mut self,
        connection: &mut rustls::ClientConnection,
        carried: &[u8],
        n: usize,
        stream: &mut TcpStream,
    ) -> tls_client::Decrypted {
        self.lines.clear();
        self.lines.extend_from_slice(carried);
        let decrypted = tls_client::decrypt(connection, &self.input[..n], &mut self.lines);
        tls_client::flush(connection, stream);
        decrypted
    }
}

/// All clients of a scenario.
pub struct Swarm {
    poll: Poll,
    events: Events,
    peers: Vec<Peer>,
    /// Peer index of each sender, by sender id.
    senders: Vec<usize>,
    /// Lines each sender has written so far, by sender id: its next sequence number.
    sent: Vec<u32>,
    line_len: usize,
    template: Vec<u8>,
    read_buf: Vec<u8>,
    wire_buffers: WireBuffers,
    /// The servers the clients are connected to, in the order of their first client.
    servers: Vec<SocketAddr>,
    /// The rooms clients joined (`connect_to_room`), in the order of their first client;
    /// the first, "", is where every other client is.
    rooms: Vec<String>,
    /// What the readers of each server received in the current run, by side.
    tallies: Vec<Tally>,
    /// Peers whose last visit stopped at `MAX_READS_PER_VISIT` with data left.
    unfinished: Vec<usize>,
    /// Reused list of (peer, hung up) for one pass.
    ready: Vec<(usize, bool)>,
    /// Readers ACK everything at once after each read (`--quickack`).
    quickack: bool,
}

impl Swarm {
    /// An empty swarm whose lines are `line_len` bytes long. With `quickack` its readers
    /// re-arm `TCP_QUICKACK` after every read, as a latency-sensitive client would: a server
    /// that leaves Nagle on (ncat) then no longer waits out the readers' delayed ACKs.
    pub fn new(line_len: usize, quickack: bool) -> Result<Swarm, String> {
        if line_len < line::MIN_LINE_LEN {
            return Err(format!("lines need at least {} bytes", line::MIN_LINE_LEN));
        }
        Ok(Swarm {
            poll: Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?,
            events: Events::with_capacity(4096),
            peers: Vec::new(),
            senders: Vec::new(),
            sent: Vec::new(),
            line_len,
            template: line::template(line_len),
            read_buf: vec![0; READ_BUF_LEN + line_len],
            wire_buffers: WireBuffers::default(),
            servers: Vec::new(),
            rooms: vec![String::new()],
            tallies: Vec::new(),
            unfinished: Vec::new(),
            ready: Vec::new(),
            quickack,
        })
    }

    /// Connects `count` clients with `role`; fails if the server stops accepting.
    pub fn connect(&mut self, addr: SocketAddr, role: Role, count: usize) -> Result<(), String> {
        let side = self.side_of(addr);
        for _ in 0..count {
            let n = self.peers.len() + 1;
            self.add_peer(dial(addr, n)?, role, Wire::Tcp, side)?;
        }
        Ok(())
    }

    /// Says that the clients of the server at `addr` (connected so far) are a broadcast of
    /// their own: that server is not joined to the others (by NATS), so its lines reach
    /// only its clients and its readers expect only its senders' lines (modelled as a room
    /// of its own).
    pub fn separate(&mut self, addr: SocketAddr) {
        let side = self.side_of(addr);
        self.rooms.push(format!("(the server at {addr})"));
        let room = self.rooms.len() - 1;
        for peer in self.peers.iter_mut().filter(|p| p.side == side) {
            peer.room = room;
        }
    }

    /// Connects `count` clients with `role`, each moved to room `room` (`/join`, its `OK`
    /// read) before it joins the swarm: a server started with `--rooms`.
    pub fn connect_to_room(
        &mut self,
        addr: SocketAddr,
        role: Role,
        count: usize,
        room: &str,
    ) -> Result<(), String> {
        let side = self.side_of(addr);
        let index = match self.rooms.iter().position(|r| r == room) {
            Some(index) => index,
            None => {
                self.rooms.push(room.to_string());
                self.rooms.len() - 1
            }
        };
        let answer = format!("OK joined {room}\n");
        for _ in 0..count {
            let n = self.peers.len() + 1;
            let fail = |why: String| format!("connection {n} failed: {why}");
            let mut std_stream = dial(addr, n)?;
            std_stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| fail(e.to_string()))?;
            std::io::Write::write_all(&mut std_stream, format!("/join {room}\n").as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            let mut got = vec![0; answer.len()];
            std::io::Read::read_exact(&mut std_stream, &mut got)
                .map_err(|e| fail(format!("no answer to /join: {e}")))?;
            if got != answer.as_bytes() {
                return Err(fail(format!(
                    "/join answered {:?}",
                    String::from_utf8_lossy(&got)
                )));
            }
            std_stream
                .set_read_timeout(None)
                .map_err(|e| fail(e.to_string()))?;
            self.add_peer(std_stream, role, Wire::Tcp, side)?;
            if let Some(peer) = self.peers.last_mut() {
                peer.room = index;
            }
        }
        Ok(())
    }

    /// Connects `count` WebSocket readers to the web listener at `http` of the server whose
    /// TCP clients connect to `addr` (its readers are counted on that server's side), each
    /// upgraded before the next connects; fails if one is refused.
    pub fn connect_websocket(
        &mut self,
        addr: SocketAddr,
        http: SocketAddr,
        count: usize,
    ) -> Result<(), String> {
        let side = self.side_of(addr);
        for _ in 0..count {
            let n = self.peers.len() + 1;
            let fail = |why: String| format!("connection {n} failed: {why}");
            let mut std_stream = dial(http, n)?;
            ws::handshake(&mut std_stream, http).map_err(fail)?;
            let wire = Wire::WebSocket(Deframer::default());
            self.add_peer(std_stream, Role::Reader, wire, side)?;
        }
        self.wire_buffers.allocate();
        Ok(())
    }

    /// Connects `count` HTTP readers of `stream` to the web listener at `http` of the
    /// server whose TCP clients connect to `addr` (counted on that server's side), each
    /// answered before the next connects; fails if one is refused.
    pub fn connect_http_readers(
        &mut self,
        addr: SocketAddr,
        http: SocketAddr,
        stream: Stream,
        count: usize,
    ) -> Result<(), String> {
        let side = self.side_of(addr);
        for _ in 0..count {
            let n = self.peers.len() + 1;
            let mut std_stream = dial(http, n)?;
            http_stream::request(&mut std_stream, http, stream)
                .map_err(|why| format!("connection {n} failed: {why}"))?;
            let wire = Wire::Http(http_stream::Decoder::new(stream));
            self.add_peer(std_stream, Role::Reader, wire, side)?;
        }
        self.wire_buffers.allocate();
        Ok(())
    }

    /// Connects `count` TLS clients with `role` to the server at `addr`, each completing
    /// its handshake (blocking) before the next connects, so that every handshake is over
    /// before a measured run; fails if one is refused. Returns the protocol version and
    /// cipher suite the last one negotiated.
    pub fn connect_tls(
        &mut self,
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        role: Role,
        count: usize,
    ) -> Result<String, String> {
        let side = self.side_of(addr);
        let mut negotiated = String::new();
        for _ in 0..count {
            let n = self.peers.len() + 1;
            let fail = |why: String| format!("connection {n} failed: {why}");
            let mut std_stream = dial(addr, n)?;
            // Nagle would hold the handshake's second flight back for an ACK.
            std_stream
                .set_nodelay(true)
                .map_err(|e| fail(e.to_string()))?;
            let connection = tls_client::handshake(&mut std_stream, config).map_err(fail)?;
            negotiated = tls_client::describe(&connection);
            self.add_peer(std_stream, role, Wire::Tls(Box::new(connection)), side)?;
        }
        self.wire_buffers.allocate();
        Ok(negotiated)
    }

    /// Makes a connected socket a client of the swarm on `side`.
    fn add_peer(
        &mut self,
        std_stream: std::net::TcpStream,
        role: Role,
        wire: Wire,
        side: usize,
    ) -> Result<(), String> {
        let n = self.peers.len() + 1;
        let fail = |e: std::io::Error| format!("connection {n} failed: {e}");
        // Senders must not sit on lines (Nagle): their send time is stamped when written.
        std_stream.set_nodelay(true).map_err(fail)?;
        std_stream.set_nonblocking(true).map_err(fail)?;
        if role != Role::Stuck {
            enable_rx_timestamps(&std_stream).map_err(fail)?;
        }
        let mut stream = TcpStream::from_std(std_stream);
        let interest = match role {
            Role::Sender => Interest::READABLE | Interest::WRITABLE,
            Role::Reader | Role::Stuck => Interest::READABLE,
        };
        self.poll
            .registry()
            .register(&mut stream, Token(self.peers.len()), interest)
            .map_err(fail)?;
        let sender = (role == Role::Sender).then(|| self.add_sender());
        self.peers.push(Peer {
            stream,
            role,
            wire,
            side,
            room: 0,
            receiver: Receiver::new(sender, &self.sent),
            bytes_in: 0,
            closed_at: None,
            out: Vec::new(),
            out_sent: 0,
        });
        Ok(())
    }

    /// The index of the server at `addr` among the swarm's servers, added if new.
    fn side_of(&mut self, addr: SocketAddr) -> usize {
        if let Some(side) = self.servers.iter().position(|&a| a == addr) {
            return side;
        }
        self.servers.push(addr);
        self.tallies.push(Tally::default());
        self.servers.len() - 1
    }

    /// Registers the next peer as a sender; every reader starts expecting its lines.
    fn add_sender(&mut self) -> u32 {
        let id = self.senders.len() as u32;
        self.senders.push(self.peers.len());
        self.sent.push(0);
        for peer in &mut self.peers {
            peer.receiver.add_sender();
        }
        id
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Makes sure the server has registered every client: the first sender of each room
    /// repeats a line until every reader has one; then the swarm waits for quiet and starts
    /// counting afresh.
    pub fn warm_up(&mut self) -> Result<(), String> {
        let probes = self.probes()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next_probe = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_probe {
                for &(id, _) in &probes {
                    self.queue_line(id, wall_ns());
                }
                next_probe = now + Duration::from_millis(50);
            }
            self.flush_senders();
            self.poll_once(Duration::from_millis(5));
            if let Some(p) = self.peers.iter().find(|p| p.closed_at.is_some()) {
                return Err(format!("the server closed a {:?} during warm-up", p.role));
            }
            let everyone = self.peers.iter().enumerate().all(|(i, p)| {
                probes.iter().any(|&(_, probe)| probe == i)
                    || p.role == Role::Stuck
                    || p.bytes_in > 0
            });
            if everyone {
                break;
            }
            if now > deadline {
                return Err("warm-up: not every client received a line in 30 s".into());
            }
        }
        self.wait_for_the_last_probes(&probes)?;
        self.tallies.fill_with(Tally::default);
        for peer in &mut self.peers {
            peer.receiver.restart(&self.sent);
        }
        Ok(())
    }

    /// The first sender of each room (its id and its peer index): the warm-up's probes.
    fn probes(&self) -> Result<Vec<(u32, usize)>, String> {
        let mut probes: Vec<(u32, usize)> = Vec::new();
        for (id, &peer) in self.senders.iter().enumerate() {
            let room = self.peers[peer].room;
            if !probes.iter().any(|&(_, p)| self.peers[p].room == room) {
                probes.push((id as u32, peer));
            }
        }
        if probes.is_empty() {
            return Err("no sender".into());
        }
        Ok(probes)
    }

    /// Reads until every reader has the last warm-up line of its room's probe (lines from
    /// one sender arrive in order, so every earlier one is in too; at most 30 s): a warm-up
    /// line still on its way (a NATS hop on a busy machine can take longer than any quiet
    /// spell) would count as a duplicate in the measured run.
    fn wait_for_the_last_probes(&mut self, probes: &[(u32, usize)]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let everyone = probes.iter().all(|&(id, probe)| {
                let (room, last) = (self.peers[probe].room, self.sent[id as usize]);
                self.peers.iter().enumerate().all(|(i, p)| {
                    i == probe
                        || p.room != room
                        || p.role == Role::Stuck
                        || p.receiver.expects(id) >= last
                })
            });
            if everyone {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("warm-up: the last warm-up line did not reach everyone in 30 s".into());
            }
            self.poll_once(Duration::from_millis(5));
        }
    }

    /// Offers `load`, then reads for up to `load.drain` until every expected line arrived;
    /// `target` is the server, or the servers, the clients are connected to.
    pub fn run(&mut self, target: &impl Watched, load: Load) -> Outcome {
        let sent_before = self.sent.clone();
        let server_cpu_start = target.cpu_times();
        let loadgen_cpu_start = thread_cpu_time();
        let waits_start = (thread_cpu_wait(), target.cpu_denied());
        let rss_start = target.rss_bytes();
        let mut rss_max = rss_start;
        let mut stuck_dropped_after = Vec::new();
        let mut backlogged = false;
        let mut generated = 0u64;
        let mut turn = 0usize;
        let mut send_end: Option<SendEnd> = None;
        let start = Instant::now();
        let mut next_rss = start;
        loop {
            let now = Instant::now();
            let elapsed = now - start;
            if now >= next_rss {
                rss_max = rss_max.max(target.rss_bytes());
                next_rss = now + Duration::from_millis(100);
            }
            if elapsed < load.duration {
                generated += self.generate(load.rate, elapsed, generated, &mut turn);
            } else if send_end.is_none() {
                let expected_by_side = self.expected_since(&sent_before);
                send_end = Some(SendEnd {
                    elapsed,
                    server_cpu: cpu_since(&server_cpu_start, &target.cpu_times()),
                    loadgen_cpu: thread_cpu_time().saturating_sub(loadgen_cpu_start),
                    loadgen_wait: thread_cpu_wait().saturating_sub(waits_start.0),
                    server_wait: target.cpu_denied().saturating_sub(waits_start.1),
                    expected: expected_by_side.iter().sum(),
                    expected_by_side,
                });
            }
            self.flush_senders();
            backlogged |= self.backlog() > MAX_BACKLOG;
            // While generation is paused by a backlog, nothing is due: don't spin.
            let wait = if elapsed < load.duration && self.backlog() <= MAX_BACKLOG {
                let next_due = Duration::from_secs_f64((generated + 1) as f64 / load.rate);
                next_due
                    .saturating_sub(elapsed)
                    .min(Duration::from_millis(1))
            } else {
                Duration::from_millis(1)
            };
            for _ in 0..self.poll_once(wait) {
                stuck_dropped_after.push(now - start);
            }
            if let Some(end) = &send_end
                && (self.delivered() >= end.expected || elapsed >= load.duration + load.drain)
            {
                break;
            }
        }
        let end = send_end.unwrap_or_default();
        let send_phase = end.elapsed;
        let rss_end = target.rss_bytes();
        let server_cpu_total_each = cpu_since(&server_cpu_start, &target.cpu_times());
        let sides = self.take_sides(&end.expected_by_side);
        let mut tally = Tally::default();
        for side in &sides {
            tally.absorb(&side.tally);
        }
        let counted_span = tally.last_arrival.map_or(send_phase, |t| t - start);
        Outcome {
            load,
            // Deliveries owed per line: its room's readers but its sender.
            recipients: end.expected / self.lines_since(&sent_before).max(1),
            expected: end.expected,
            tally,
            sides,
            disconnected: self
                .peers
                .iter()
                .filter(|p| p.role != Role::Stuck && p.closed_at.is_some())
                .count(),
            stuck_dropped_after,
            send_phase,
            counted_span,
            loadgen_cpu_send: end.loadgen_cpu,
            server_cpu_send: end.server_cpu.iter().sum(),
            server_cpu_send_each: end.server_cpu,
            server_cpu_total: server_cpu_total_each.iter().sum(),
            server_cpu_total_each,
            loadgen_wait: end.loadgen_wait,
            server_wait: end.server_wait,
            rss_start,
            rss_max: rss_max.max(rss_end),
            rss_end,
            backlogged,
            // Lines held back by a backlog are the server's doing, not the generator's.
            behind: !backlogged
                && (generated as f64) < 0.99 * load.rate * load.duration.as_secs_f64() - 1.0,
        }
    }

    /// Distinct deliveries counted so far in this run, on every server.
    fn delivered(&self) -> u64 {
        self.tallies.iter().map(|t| t.delivered).sum()
    }

    /// Ends a run's counting: what each server's readers received (`expected`: owed, by
    /// side), leaving fresh tallies for the next run.
    fn take_sides(&mut self, expected: &[u64]) -> Vec<Side> {
        let tallies = std::mem::take(&mut self.tallies);
        self.tallies = tallies.iter().map(|_| Tally::default()).collect();
        tallies
            .into_iter()
            .enumerate()
            .map(|(side, tally)| Side {
                expected: expected.get(side).copied().unwrap_or(0),
                tally,
                disconnected: self
                    .peers
                    .iter()
                    .filter(|p| p.side == side && p.role != Role::Stuck && p.closed_at.is_some())
                    .count(),
            })
            .collect()
    }

    /// Queues the lines due by `elapsed` that are not generated yet, round-robin over the
    /// senders; at most 10 ms worth per pass, so a slow pass cannot starve reading, and
    /// none while a sender is backlogged, so memory stays bounded (the run is then flagged).
    fn generate(&mut self, rate: f64, elapsed: Duration, generated: u64, turn: &mut usize) -> u64 {
        if self.backlog() > MAX_BACKLOG {
            return 0;
        }
        let due = (rate * elapsed.as_secs_f64()) as u64;
        let cap = (rate / 100.0).max(1.0) as u64;
        let batch = due.saturating_sub(generated).min(cap);
        let now_ns = wall_ns();
        for _ in 0..batch {
            let sender = *turn % self.senders.len();
            *turn += 1;
            self.queue_line(sender as u32, now_ns);
        }
        batch
    }

    /// Appends one line from `sender`, stamped `sent_ns`, to its output.
    fn queue_line(&mut self, sender: u32, sent_ns: u64) {
        let seq = self.sent[sender as usize];
        self.sent[sender as usize] += 1;
        let peer = &mut self.peers[self.senders[sender as usize]];
        if peer.out_sent == peer.out.len() {
            peer.out.clear();
            peer.out_sent = 0;
        }
        let start = peer.out.len();
        peer.out.extend_from_slice(&self.template);
        let header = Header {
            sent_ns,
            sender,
            seq,
        };
        line::stamp(&mut peer.out[start..], header);
    }

    /// Hands each sender's pending lines to the kernel (through its TLS session, if it has
    /// one), as far as it takes them.
    fn flush_senders(&mut self) {
        for &index in &self.senders {
            let peer = &mut self.peers[index];
            if let Wire::Tls(connection) = &mut peer.wire {
                if peer.closed_at.is_some() {
                    continue;
                }
                match tls_client::send(connection, &mut peer.stream, &peer.out[peer.out_sent..]) {
                    Ok(n) => peer.out_sent += n,
                    Err(_) => peer.closed_at = Some(Instant::now()),
                }
                continue;
            }
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

    /// The largest send backlog of any sender, in bytes.
    fn backlog(&self) -> usize {
        self.senders
            .iter()
            .map(|&i| self.peers[i].out.len() - self.peers[i].out_sent)
            .max()
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for events and reads every readable client; returns how many
    /// stuck clients the server closed in this pass.
    fn poll_once(&mut self, timeout: Duration) -> usize {
        let timeout = if self.unfinished.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            // Only EINTR is plausible; anything else is a bug in the generator.
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll failed: {e}");
            return 0;
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(
            self.events
                .iter()
                .map(|e| (e.token().0, e.is_read_closed() || e.is_error())),
        );
        ready.extend(self.unfinished.drain(..).map(|index| (index, false)));
        let mut stuck_closed = 0;
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
            if !self.read_peer(index, hung_up) {
                self.unfinished.push(index);
            }
        }
        self.ready = ready;
        stuck_closed
    }

    /// Reads one client until the kernel has nothing more (or the per-visit cap), checking
    /// every line; returns false if data may be left. A read shorter than the buffer drained
    /// the socket: with edge-triggered epoll any later segment raises a new event, so the
    /// extra read that would return `WouldBlock` is skipped — unless the peer hung up, when
    /// reading on finds the end of the stream. A WebSocket reader's frames are decoded into
    /// lines first, and a TLS reader's records decrypted, and every line completed in a read
    /// gets that read's arrival time.
    fn read_peer(&mut self, index: usize, hung_up: bool) -> bool {
        let Swarm {
            peers,
            read_buf,
            wire_buffers,
            tallies,
            sent,
            line_len,
            quickack,
            ..
        } = self;
        let peer = &mut peers[index];
        let tally = &mut tallies[peer.side];
        for _ in 0..MAX_READS_PER_VISIT {
            let carried = peer.receiver.carried().len();
            let into = match peer.wire {
                Wire::Tcp => {
                    read_buf[..carried].copy_from_slice(peer.receiver.carried());
                    &mut read_buf[carried..]
                }
                Wire::WebSocket(_) | Wire::Tls(_) | Wire::Http(_) => &mut wire_buffers.input[..],
            };
            let room = into.len();
            let (n, stamp) = match recv_stamped(peer.stream.as_raw_fd(), into) {
                Ok((0, _)) => {
                    peer.closed_at = Some(Instant::now());
                    return true;
                }
                Ok(read) => read,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    peer.closed_at = Some(Instant::now());
                    return true;
                }
            };
            if *quickack {
                // Best effort: a socket that refuses it just keeps delaying its ACKs.
                let _ = quick_ack(peer.stream.as_raw_fd());
            }
            let read_ns = wall_ns();
            let arrival_ns = stamp.unwrap_or_else(|| {
                tally.reads_without_kernel_time += 1;
                read_ns
            });
            let expect = Expect {
                line_len: *line_len,
                sent,
                arrival_ns,
            };
            let (data, server_closed): (&[u8], bool) = match &mut peer.wire {
                Wire::Tcp => {
                    peer.bytes_in += n as u64;
                    (&read_buf[..carried + n], false)
                }
                Wire::WebSocket(deframer) => {
                    peer.bytes_in += n as u64;
                    let carried = peer.receiver.carried();
                    let decoded = wire_buffers.decode(deframer, carried, n, &mut peer.stream);
                    tally.malformed += decoded.malformed;
                    (&wire_buffers.lines, decoded.closed)
                }
                Wire::Http(decoder) => {
                    peer.bytes_in += n as u64;
                    let carried = peer.receiver.carried();
                    let decoded = wire_buffers.decode_http(decoder, carried, n);
                    tally.malformed += decoded.malformed;
                    (&wire_buffers.lines, decoded.closed)
                }
                Wire::Tls(connection) => {
                    let carried = peer.receiver.carried();
                    let decrypted = wire_buffers.decrypt(connection, carried, n, &mut peer.stream);
                    peer.bytes_in += decrypted.plaintext as u64;
                    tally.malformed += decrypted.malformed;
                    (&wire_buffers.lines, decrypted.closed)
                }
            };
            let delivered_before = tally.delivered;
            let lines = peer.receiver.scan(data, &expect, tally);
            let lag_us = read_ns.saturating_sub(arrival_ns) / 1000;
            tally.read_lag.saturating_record_n(lag_us, lines);
            if tally.delivered > delivered_before {
                tally.last_arrival = Some(Instant::now());
            }
            if server_closed {
                peer.closed_at = Some(Instant::now());
                return true;
            }
            if n < room && !hung_up {
                return true;
            }
        }
        false
    }

    /// Lines every sender wrote since `before`.
    fn lines_since(&self, before: &[u32]) -> u64 {
        self.sent
            .iter()
            .zip(before)
            .map(|(&now, &then)| u64::from(now - then))
            .sum()
    }

    /// Deliveries owed for the lines written since `before`, by server side: each line once
    /// to every other client of its sender's room that reads.
    fn expected_since(&self, before: &[u32]) -> Vec<u64> {
        let rooms = self.rooms.len();
        let mut readers = vec![0u64; self.servers.len() * rooms];
        for peer in self.peers.iter().filter(|p| p.role != Role::Stuck) {
            readers[peer.side * rooms + peer.room] += 1;
        }
        let mut owed = vec![0u64; self.servers.len()];
        for (id, (&now, &then)) in self.sent.iter().zip(before).enumerate() {
            let lines = u64::from(now - then);
            let sender = &self.peers[self.senders[id]];
            for (side, owed) in owed.iter_mut().enumerate() {
                let others = readers[side * rooms + sender.room]
                    .saturating_sub(u64::from(side == sender.side));
                *owed += lines * others;
            }
        }
        owed
    }
}
