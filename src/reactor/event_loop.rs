//! The event loop: one thread, one `Poll`, every client.
//!
//! One turn of the loop: wait for readiness, accept new clients, read every readable client
//! until the kernel has no more (or its fair share is used up), collect the complete lines in
//! a [`Batch`], then hand the batch to every client once (one `writev` each), and finally run
//! the timers (accept retry, drain deadlines, stats). Sockets are edge-triggered: a handler
//! that stops before `WouldBlock` must remember to come back, because no new event will come.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::admission::access::{AddressPlace, PerAddress};
use crate::bridge::{Bridge, BridgeCounters};
use crate::broadcast::batch::{Batch, Sender};
use crate::broadcast::framed_batch::FramedBatch;
use crate::broadcast::history::History;
use crate::config::Config;
use crate::conn::connection::{ClientConnection, Phase, ReadEnd, ReadReport};
use crate::conn::reason::DisconnectReason;
use crate::conn::wire::Liveness;
use crate::error::ServerError;
use crate::observe::log_limit::RateLimit;
use crate::reactor::hold_timer::HoldTimer;
use crate::reactor::shutdown::Shutdown;
use crate::reactor::signals::{Signal, Signals};
use crate::wire::http::PendingRequests;

mod accept;
mod graceful_shutdown;
use crate::observe::stats::Stats;
use crate::transport::tls::Handshakes;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const HOLD_TIMER: Token = Token(2);
/// The NATS bridge's waker: lines from other instances are waiting.
const BRIDGE: Token = Token(3);
/// The web listener (`--http`).
const WEB_LISTENER: Token = Token(4);
const FIRST_CLIENT: usize = 5;
/// Most messages from NATS taken per turn, so that a flooding instance cannot starve this
/// one's clients, timers or signals; the rest wait in the bridge's bounded queue.
const NATS_BYTES_PER_TURN: usize = READ_BUDGET;
/// How long the exit waits for the bridge to hand its last lines to NATS (its own deadline
/// for that, and a little more).
const NATS_FINAL_FLUSH: Duration =
    crate::bridge::FINAL_FLUSH.saturating_add(Duration::from_millis(200));

/// Most bytes taken from one client per turn, so that a firehose cannot starve the others.
pub const READ_BUDGET: usize = 64 * 1024;
/// Connections the kernel may hold for us before we accept them (mio's default is 128).
const LISTEN_BACKLOG: i32 = 1024;
/// Most TLS handshake steps per turn: each may cost a signature (tens of microseconds with an
/// ECDSA key, milliseconds with RSA), so a flood of ClientHellos is spread over turns.
const HANDSHAKE_BUDGET: usize = 8;
/// Most connections taken per turn, so that a connection storm cannot stall the clients
/// already connected; the rest wait in the backlog for the next turn.
const ACCEPT_BUDGET: usize = 64;
/// How long to wait before accepting again after running out of descriptors (the listener
/// will not signal again for connections already queued).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Where a connection in its TLS handshake goes afterwards, and its place in its address's
/// count (given back if the handshake fails).
#[derive(Debug)]
struct Admitting {
    which: Listener,
    place: AddressPlace,
}

/// `tokens` carried to this turn, each once, in token order (a connection may have been
/// carried twice: by its budget and by an event).
fn distinct(mut tokens: Vec<Token>) -> Vec<Token> {
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// Accepting paused after running out of descriptors.
struct AcceptPause {
    /// When to try again (sooner if a client leaves).
    retry_at: Instant,
    /// Whether the pause was logged: then so is its end, however soon, so that every
    /// "cannot accept" line an operator sees is followed by "accepting again".
    announced: bool,
}

/// How long a client that broke the line limit has to read its `ERR` line.
const REJECT_LINGER: Duration = Duration::from_secs(2);
/// Denials and per-address refusals logged one by one each second; more are summed up.
const ACCESS_LINES_LOGGED: u64 = 20;
/// How often leaving clients are checked for having received everything.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every client was flushed (or its deadline passed) after a stop signal.
    Graceful,
    /// A second stop signal arrived while draining.
    Forced,
}

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// `--addr`: plain TCP line clients.
    Lines = 0,
    /// `--http`: web requests and WebSocket clients.
    Web = 1,
}

/// One broadcast: the lines framed since the last hand-out, their WebSocket framing, the
/// lines kept for newcomers, the timer of a held batch, and the unfinished lines of clients
/// closed meanwhile. The loop has one; rooms will make many.
struct Broadcast {
    /// The batch as WebSocket frames, built at a hand-out only when WebSocket clients
    /// receive it.
    framed: FramedBatch,
    /// The last lines handed out, for newcomers (`--history`).
    history: Option<History>,
    /// Fires when a batch held for coalescing is due.
    hold_timer: HoldTimer,
    /// Lines framed since the last hand-out.
    batch: Batch,
    /// Numbers the hand-outs of the batch.
    hand_outs: u64,
    /// Unfinished lines (with a `\n` added) of clients closed other than by their own
    /// hang-up, waiting for room in the batch: moved here so a burst of closes cannot grow
    /// the batch past its bound.
    kept_lines: VecDeque<(Sender, Vec<u8>)>,
}

/// The TLS stage: the configuration new connections get (replaced on SIGHUP), the
/// handshakes under way, and how many steps this turn may still take.
struct TlsStage {
    /// The TLS configuration new connections get (replaced on SIGHUP), with `--tls-cert`.
    config: Option<Arc<rustls::ServerConfig>>,
    /// New connections in their TLS handshake, each with the listener it came through and
    /// its place in its address's count.
    handshakes: Handshakes<Admitting>,
    /// Handshake steps left in this turn, and handshakes waiting for the next turn's.
    budget: usize,
    deferred: Vec<Token>,
}

/// The loop's side of the NATS bridge (`--nats`): the bridge thread's handle, whether
/// lines from NATS wait beyond this turn's intake, and local lines gathered for the next
/// publish.
struct NatsLink {
    /// The NATS bridge, with `--nats`.
    bridge: Option<Bridge>,
    /// Messages from NATS may be waiting (the waker fired, or the last turn's budget ran out).
    waiting: bool,
    /// This turn's local lines for NATS, handed to the bridge once at the end of the turn.
    outgoing: Vec<u8>,
    outgoing_lines: usize,
}

/// Admission's state: per-address places (`--max-clients-per-ip`), this turn's accept
/// budget, a pause after running out of descriptors, and the rate limits of the lines
/// that refusals and accept failures log.
struct Admission {
    /// Connections per address in every stage (handshakes, requests, clients), for
    /// `--max-clients-per-ip`.
    per_address: PerAddress,
    /// Set while accepting is paused after running out of descriptors.
    pause: Option<AcceptPause>,
    /// Accepts left in this turn (both listeners share it).
    budget: usize,
    /// Per listener: connections may be waiting (its event came this poll, or the accept
    /// budget ran out before it was empty: no new edge will come for those).
    more_to_accept: [bool; 2],
    /// Accept failures: a line a second, then summed.
    failure_log: RateLimit,
    /// Connections denied or refused by address: 20 lines a second, then summed.
    access_log: RateLimit,
    /// Refusals of a full server: a line a second, then summed.
    refusal_log: RateLimit,
}

/// The front door of the web listener (`--http`): connections in their HTTP stage, the
/// page's Content-Security-Policy, and when WebSocket clients are next checked for life.
struct WebFront {
    /// Web connections that have not become WebSocket clients (reading their request,
    /// being answered).
    requests: PendingRequests,
    /// The page's Content-Security-Policy (see [`crate::web::page`]).
    page_policy: String,
    /// When WebSocket clients are next checked for silence (with `--http`).
    next_liveness_check: Option<Instant>,
}

/// The server: listener, clients, and the state of one turn.
pub struct EventLoop {
    poll: Poll,
    /// `None` once shutdown has begun: new connections wait in the kernel and are reset.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// The web listener, with `--http` (`None` without it, or once shutdown has begun).
    web_listener: Option<TcpListener>,
    signals: Signals,
    config: Config,
    connections: HashMap<Token, ClientConnection>,
    /// Tokens only grow, so a stale event can never reach a newer client.
    next_token: usize,
    /// The read buffer shared by all clients; what is not a complete line moves to the
    /// client's own framer.
    scratch: Box<[u8]>,
    /// Numbers the turns: each client is read at most once per turn.
    turn: u64,
    /// Who gets in, how fast: per-address places, the accept budget and pause, their logs.
    admission: Admission,
    /// TLS: the configuration new connections get, and the handshakes under way.
    tls: TlsStage,
    /// The web listener's front door (`--http`): requests in their HTTP stage, the page's
    /// policy, the pings' schedule.
    web: WebFront,
    /// The one broadcast: its batch, framing, history and hold.
    broadcast: Broadcast,
    /// The NATS bridge (`--nats`) and what waits to go to it.
    nats: NatsLink,
    /// Clients whose read budget ran out with input possibly still waiting.
    unfinished_readers: Vec<Token>,
    /// Clients that are leaving but still have output to flush.
    draining: Vec<Token>,
    /// How many connections are leaving: they no longer count against `--max-clients`.
    leaving: usize,
    /// Clients to close once the current pass over the map is done.
    doomed: Vec<(Token, DisconnectReason)>,
    /// `Some` once a stop signal arrived.
    shutdown: Option<Shutdown>,
    stats: Stats,
    next_stats_at: Option<Instant>,
    /// Warnings about misbehaving clients (slow consumers, over-long lines, protocol
    /// errors): a line a second, then summed.
    warning_log: RateLimit,
}

impl EventLoop {
    /// Binds the first address of `config` that works and registers the listener and the
    /// stop signals. Logs `listening on ADDR` once bound.
    pub fn bind(config: Config) -> Result<EventLoop, ServerError> {
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let tls = config
            .tls
            .as_ref()
            .map(crate::transport::tls::load)
            .transpose()
            .map_err(ServerError::Tls)?;
        let mut listener = bind_any("--addr", &config.addrs)?;
        let local_addr = listener.local_addr().map_err(ServerError::Poll)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let web_listener = match &config.http {
            Some(addrs) => {
                let mut web = bind_any("--http", addrs)?;
                poll.registry()
                    .register(&mut web, WEB_LISTENER, Interest::READABLE)
                    .map_err(ServerError::Poll)?;
                Some(web)
            }
            None => None,
        };
        let signals = Signals::register(poll.registry(), SIGNALS).map_err(ServerError::Signals)?;
        let hold_timer =
            HoldTimer::register(poll.registry(), HOLD_TIMER).map_err(ServerError::Poll)?;
        let bridge = match &config.nats {
            Some(settings) => {
                let waker = mio::Waker::new(poll.registry(), BRIDGE).map_err(ServerError::Poll)?;
                Some(Bridge::start(settings.clone(), waker).map_err(ServerError::Poll)?)
            }
            None => None,
        };
        info!("listening on {local_addr}");
        if let Some(web) = &web_listener {
            let addr = web.local_addr().map_err(ServerError::Poll)?;
            info!("http listening on {addr}");
        }
        Ok(EventLoop {
            web: WebFront {
                requests: PendingRequests::default(),
                page_policy: crate::web::page::content_security_policy(),
                next_liveness_check: config
                    .ws_ping
                    .filter(|_| web_listener.is_some())
                    .map(|every| Instant::now() + every / 2),
            },
            admission: Admission {
                per_address: PerAddress::new(config.max_clients_per_ip),
                pause: None,
                budget: ACCEPT_BUDGET,
                more_to_accept: [false; 2],
                failure_log: RateLimit::default(),
                access_log: RateLimit::with_burst(ACCESS_LINES_LOGGED),
                refusal_log: RateLimit::default(),
            },
            nats: NatsLink {
                bridge,
                waiting: false,
                outgoing: Vec::new(),
                outgoing_lines: 0,
            },
            tls: TlsStage {
                config: tls,
                handshakes: Handshakes::default(),
                budget: HANDSHAKE_BUDGET,
                deferred: Vec::new(),
            },
            broadcast: Broadcast {
                history: config
                    .history
                    .map(|(lines, bytes)| History::new(lines, bytes)),
                framed: FramedBatch::default(),
                hold_timer,
                batch: Batch::new(config.batch_limit(), config.max_line, config.coalesce),
                hand_outs: 0,
                kept_lines: VecDeque::new(),
            },
            web_listener,
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            next_stats_at: config.stats_interval.map(|every| Instant::now() + every),
            config,
            connections: HashMap::new(),
            next_token: FIRST_CLIENT,
            scratch: vec![0; READ_BUDGET].into_boxed_slice(),
            turn: 0,
            unfinished_readers: Vec::new(),
            draining: Vec::new(),
            leaving: 0,
            doomed: Vec::new(),
            shutdown: None,
            stats: Stats::default(),
            warning_log: RateLimit::default(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves clients until a stop signal has been handled; logs the final stats.
    pub fn run(&mut self) -> Result<Exit, ServerError> {
        let mut events = Events::with_capacity(1024);
        let exit = loop {
            if let Err(e) = self.poll.poll(&mut events, self.next_timeout()) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            self.turn += 1;
            self.admission.budget = ACCEPT_BUDGET;
            self.tls.budget = HANDSHAKE_BUDGET;
            trace!("turn {}: {} events", self.turn, events.iter().count());
            let carried_readers = std::mem::take(&mut self.unfinished_readers);
            self.serve_deferred_handshakes();
            self.serve_unfinished_web_requests();
            if let Some(exit) = self.handle_events(&events) {
                break exit;
            }
            self.serve_unfinished_readers(carried_readers);
            if self.nats.waiting {
                self.take_lines_from_nats();
            }
            for (listener, more) in [Listener::Lines, Listener::Web]
                .into_iter()
                .zip(self.admission.more_to_accept)
            {
                if more {
                    self.accept_all(listener);
                }
            }
            let now = Instant::now();
            self.continue_shutdown(now);
            self.hand_out_when_due(now);
            self.run_timers(now);
            self.hand_lines_to_nats();
            if self.shutdown.is_some() && self.connections.is_empty() {
                break Exit::Graceful;
            }
        };
        self.hand_lines_to_nats();
        // A forced exit (second signal) does not wait for NATS either.
        let flush = match exit {
            Exit::Graceful => NATS_FINAL_FLUSH,
            Exit::Forced => Duration::ZERO,
        };
        let nats = self.nats.bridge.take().map(|bridge| bridge.finish(flush));
        info!("{}", self.stats_line(nats.as_deref()));
        Ok(exit)
    }

    /// Dispatches one poll's events; returns an exit if a second stop signal arrived.
    /// A listener's connections are accepted after every client event of the poll (in
    /// `run`): departures before arrivals, so that a client whose close came in the same
    /// poll as a newcomer no longer counts against `--max-clients` when the newcomer is
    /// judged, whatever order epoll reported the two in.
    fn handle_events(&mut self, events: &Events) -> Option<Exit> {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.admission.more_to_accept[Listener::Lines as usize] = true,
                WEB_LISTENER => self.admission.more_to_accept[Listener::Web as usize] = true,
                HOLD_TIMER => self.broadcast.hold_timer.acknowledge(),
                BRIDGE => self.nats.waiting = true,
                SIGNALS => {
                    if let Some(exit) = self.on_signals() {
                        return Some(exit);
                    }
                }
                token => self.on_client_event(token, event),
            }
        }
        None
    }

    /// Hands out the batch and every kept unfinished line (a batch at a time), so that none
    /// reaches a client accepted after it.
    fn hand_out_everything_framed(&mut self) {
        loop {
            self.hand_out();
            if self.broadcast.kept_lines.is_empty() || self.shutdown.is_some() {
                return;
            }
            self.take_kept_lines();
        }
    }

    /// Readiness for a client. The token may belong to a client closed earlier in this same
    /// batch of events: that is normal, and the event is ignored.
    fn on_client_event(&mut self, token: Token, event: &Event) {
        if !self.connections.contains_key(&token) {
            if self.web.requests.contains(token) {
                return self.on_web_event(token);
            }
            if self.tls.handshakes.contains(token) {
                return self.on_handshake_event(token);
            }
            trace!("event for closed token {} ignored", token.0);
            return;
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
    fn on_readable(&mut self, token: Token) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let open = connection.is_open();
        if open && self.shutdown.is_some() {
            return;
        }
        if !connection.claim_read_turn(self.turn) {
            return; // already read this turn; if its budget ran out it is queued for the next
        }
        // A leaving client's input is discarded: its reads need no room in the batch.
        let budget = if open {
            READ_BUDGET.min(self.broadcast.batch.limit())
        } else {
            READ_BUDGET
        };
        if open && self.broadcast.batch.free_space() < budget {
            self.hand_out();
        }
        let Some(report) = self.read_into_batch(token, budget) else {
            return;
        };
        if report.wants_flush {
            self.flush_after_read(token);
        }
        match report.end {
            ReadEnd::WouldBlock => {}
            ReadEnd::BudgetSpent => self.unfinished_readers.push(token),
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

    /// Reads up to `budget` bytes from a client, appending the lines it completes to the
    /// batch. The caller made sure the batch has room for `budget` more bytes.
    fn read_into_batch(&mut self, token: Token, budget: usize) -> Option<ReadReport> {
        let max_line = self.config.max_line;
        let connection = self.connections.get_mut(&token)?;
        let start = self.broadcast.batch.len();
        let incoming = if connection.is_open() {
            budget + connection.unfinished_line_len()
        } else {
            0
        };
        let report = connection.read_until_would_block(
            &mut self.scratch[..budget],
            max_line,
            self.broadcast.batch.bytes_for(incoming),
        );
        self.broadcast
            .batch
            .record(Sender::Client(token.0), start, report.lines);
        self.stats.bytes_in += report.framed as u64;
        self.stats.lines_in += report.lines as u64;
        trace!(
            "token {}: read {} bytes, {} lines",
            token.0, report.read, report.lines
        );
        Some(report)
    }

    /// Gives clients whose budget ran out in an earlier turn their read for this turn, if
    /// an event did not already (then it queued itself again if it needs to).
    fn serve_unfinished_readers(&mut self, readers: Vec<Token>) {
        for token in distinct(readers) {
            self.on_readable(token);
        }
    }

    /// Sends what a read produced for the client itself: pongs its pings called for, TLS
    /// records (key updates, session tickets). A client that pings without reading is a
    /// slow consumer like any other.
    fn flush_after_read(&mut self, token: Token) {
        let Some(connection) = self.connections.get(&token) else {
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
    fn send_away(&mut self, token: Token, reason: DisconnectReason) {
        if let DisconnectReason::WebSocketViolation { .. } = reason
            && let Some(connection) = self.connections.get(&token)
            && self.warning_log.admit(Instant::now())
        {
            warn!(
                "client {} (token {}): {reason}; disconnecting it",
                connection.peer(),
                token.0
            );
        }
        if self.reset_if_behind(token, reason) {
            return;
        }
        self.begin_drain(token, reason, Instant::now() + REJECT_LINGER);
        self.on_writable(token);
    }

    /// A WebSocket client sent away while output is still queued for it is reset at once
    /// (its queue dropped: where the frame being sent ends is not known, so no Close frame
    /// can follow it), so that a leaving client holds no memory. True if it was.
    fn reset_if_behind(&mut self, token: Token, reason: DisconnectReason) -> bool {
        let behind = self
            .connections
            .get(&token)
            .is_some_and(ClientConnection::is_behind_in_frames);
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
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        if self.warning_log.admit(Instant::now()) {
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
        if self.reset_if_behind(token, reason) {
            return;
        }
        self.begin_drain(token, reason, Instant::now() + REJECT_LINGER);
        self.on_writable(token);
    }

    /// Moves an open client to leaving: after its queue and its farewell (an `ERR` line or a
    /// WebSocket Close frame, by reason) are flushed it is shut down and closed, or reset at
    /// `deadline`.
    fn begin_drain(&mut self, token: Token, reason: DisconnectReason, deadline: Instant) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        if !connection.is_open() {
            // Already leaving (e.g. lingering after an ERR): no later than this deadline.
            connection.shorten_deadline(deadline);
            return;
        }
        let farewell = connection.farewell(reason, self.config.max_line);
        connection.begin_drain(reason, &farewell, deadline, self.config.max_queue);
        self.leaving += 1;
        self.draining.push(token);
    }

    /// Flushes a client's queue; closes it when it fails or, if leaving, when it is done.
    fn on_writable(&mut self, token: Token) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        match connection.flush() {
            Ok(written) => self.stats.bytes_out += written as u64,
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

    /// Sends the batch now if it is due (see `Batch::due_at`), else makes sure the hold
    /// timer will wake the loop when it is.
    fn hand_out_when_due(&mut self, now: Instant) {
        if self.shutdown.is_none() {
            // At shutdown they go out with the finales, at the finales' pace.
            self.take_kept_lines();
        }
        let Some(due) = self.broadcast.batch.due_at(now) else {
            return;
        };
        if due <= now {
            self.hand_out();
        } else if !self.broadcast.hold_timer.is_armed()
            && let Err(e) = self.broadcast.hold_timer.arm(due - now)
        {
            warn!("cannot arm the coalescing timer ({e}); sending at once");
            self.hand_out();
        }
    }

    /// Hands the batch to every open client: first each sender gets everyone else's lines
    /// (at most its runs + 1 slices), then every other client gets the whole batch as one
    /// slice. Clients that keep up get one `writev` straight from the batch; only what the
    /// kernel refuses is copied into a queue. Clients over `--max-queue` are disconnected.
    fn hand_out(&mut self) {
        if self.broadcast.batch.is_empty() {
            return;
        }
        self.broadcast.hand_outs += 1;
        let id = self.broadcast.hand_outs;
        if !self.config.echo || self.nats.bridge.is_some() {
            self.broadcast.batch.index_senders();
        }
        self.publish_local_lines();
        if self.stats.websocket_active > 0 {
            self.broadcast.framed.build(&self.broadcast.batch);
        }
        let mut hand_out = HandOut {
            registry: self.poll.registry(),
            max_queue: self.config.max_queue,
            stats: &mut self.stats,
            doomed: &mut self.doomed,
        };
        if !self.config.echo {
            let mut slices = Vec::new();
            for share in self.broadcast.batch.senders() {
                let Sender::Client(client) = share.sender() else {
                    continue; // lines from NATS: their sender is not here
                };
                let token = Token(client);
                let Some(connection) = self.connections.get_mut(&token) else {
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
        for (&token, connection) in self.connections.iter_mut() {
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
            self.stats.history = Some((history.lines() as u64, history.len() as u64));
        }
        self.broadcast.batch.clear(Instant::now());
        self.broadcast.framed.clear();
        for (token, reason) in std::mem::take(&mut self.doomed) {
            if let DisconnectReason::SlowConsumer { queued } = reason
                && let Some(connection) = self.connections.get(&token)
                && self.warning_log.admit(Instant::now())
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

    /// Copies this hand-out's local lines (not those that came from NATS) into the turn's
    /// buffer for NATS. Call after `Batch::index_senders`.
    fn publish_local_lines(&mut self) {
        if self.nats.bridge.is_none() {
            return;
        }
        match self
            .broadcast
            .batch
            .senders()
            .find(|share| share.sender() == Sender::Remote)
        {
            None => {
                self.nats
                    .outgoing
                    .extend_from_slice(self.broadcast.batch.whole());
                self.nats.outgoing_lines += self.broadcast.batch.lines();
            }
            Some(remote) => {
                for part in remote.parts() {
                    self.nats.outgoing.extend_from_slice(part);
                }
                self.nats.outgoing_lines += remote.lines_for_sender();
            }
        }
        // Many hand-outs in one turn: hand over a batch's worth at a time, so that one send
        // (and the bridge's queue of them) stays bounded in bytes.
        if self.nats.outgoing.len() >= self.broadcast.batch.limit() {
            self.hand_lines_to_nats();
        }
    }

    /// Hands the turn's local lines to the bridge: one non-blocking send per turn.
    fn hand_lines_to_nats(&mut self) {
        if let Some(bridge) = &self.nats.bridge
            && !self.nats.outgoing.is_empty()
        {
            bridge.publish(
                std::mem::take(&mut self.nats.outgoing),
                self.nats.outgoing_lines,
            );
            self.nats.outgoing_lines = 0;
        }
    }

    /// Appends lines other instances published (through the bridge) to the batch, as from
    /// no client: every client gets them. At most `NATS_BYTES_PER_TURN` a turn, as one
    /// client's read budget (a message of a million empty lines is spread over turns like a
    /// client's input); none once shutdown began (its final batches are paced for the
    /// clients' queues). A line longer than our `--max-line` is dropped (counted), so the
    /// batch keeps its bound.
    fn take_lines_from_nats(&mut self) {
        let max_line = self.config.max_line;
        self.nats.waiting = false;
        if self.shutdown.is_some() {
            return;
        }
        let mut taken = 0;
        while taken < NATS_BYTES_PER_TURN {
            let budget = NATS_BYTES_PER_TURN - taken;
            let Some(message) = self.nats.bridge.as_mut().and_then(|b| b.take_lines(budget)) else {
                break;
            };
            taken += message.len();
            for line in message.split_inclusive(|&b| b == b'\n') {
                if line.len() > max_line + 1 {
                    if let Some(bridge) = &self.nats.bridge {
                        bridge.counters().count_inbound_drop(1);
                    }
                    continue;
                }
                if self.broadcast.batch.free_space() < line.len() {
                    self.hand_out();
                }
                self.broadcast.batch.append(Sender::Remote, line, 1);
                if let Some(bridge) = &self.nats.bridge {
                    bridge.count_received(1);
                }
            }
        }
        trace!("nats: took {taken} bytes");
        // The budget ran out before the inbox did: more may be waiting.
        self.nats.waiting = taken >= NATS_BYTES_PER_TURN;
    }

    /// Removes a client for good; the one place a disconnect is logged and counted.
    fn close(&mut self, token: Token, reason: DisconnectReason) {
        let Some(mut connection) = self.connections.remove(&token) else {
            return;
        };
        // A client that was being sent away is counted for why it was sent away, however
        // it then went (a TLS client that leaves our close_notify unread resets). At
        // shutdown a failure (reset, the drain's timeout) is counted as what it is.
        let reason = match connection.phase() {
            Phase::Draining {
                reason: sent_away, ..
            } => {
                self.leaving -= 1;
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
        self.stats.disconnected(reason, connection.form());
        info!(
            "client {} disconnected (token {}): {reason}",
            connection.peer(),
            token.0
        );
        if let Some(pause) = &mut self.admission.pause {
            // A descriptor just came free: try the waiting connections now.
            pause.retry_at = Instant::now();
        }
    }

    /// Keeps the unfinished line of a client being closed, to be delivered with a `\n` like
    /// any line it sent: nothing the server read is lost, however the client goes.
    /// What the kernel already holds of the line's end is read first.
    fn keep_unfinished_line(&mut self, token: Token, connection: &mut ClientConnection) {
        if connection.unfinished_line_len() > 0 {
            let mut line = Vec::new();
            connection.read_rest_of_line(&mut self.scratch, self.config.max_line, &mut line);
            connection.end_unfinished_line(&mut line);
            if !line.is_empty() {
                let sender = Sender::Client(token.0);
                self.broadcast.kept_lines.push_back((sender, line));
            }
        }
    }

    /// Moves kept unfinished lines into the batch while it has space.
    fn take_kept_lines(&mut self) {
        while self.broadcast.batch.free_space() > 0
            && let Some((sender, line)) = self.broadcast.kept_lines.pop_front()
        {
            self.broadcast.batch.append(sender, &line, 1);
            self.stats.lines_in += 1;
        }
    }

    /// Handles signals: SIGHUP reloads TLS; the first SIGINT/SIGTERM starts a graceful
    /// shutdown, any later one (even delivered together with the first) ends it.
    fn on_signals(&mut self) -> Option<Exit> {
        for signal in self.signals.take() {
            if signal == Signal::Reload {
                self.reload_tls();
                continue;
            }
            let name = signal.name();
            if self.shutdown.is_some() {
                warn!(
                    "received {name} again: exiting now, dropping output for {} clients",
                    self.connections.len()
                );
                return Some(Exit::Forced);
            }
            self.begin_shutdown(name);
        }
        None
    }

    /// Re-reads the TLS certificate, key and client CA (SIGHUP): new connections get them,
    /// existing ones keep theirs. A failure keeps the configuration in force.
    fn reload_tls(&mut self) {
        let Some(settings) = &self.config.tls else {
            info!("received SIGHUP: nothing to reload (no --tls-cert)");
            return;
        };
        match crate::transport::tls::load(settings) {
            Ok(config) => {
                self.tls.config = Some(config);
                info!(
                    "tls: reloaded {} and {} (new connections use them)",
                    settings.cert.display(),
                    settings.key.display()
                );
            }
            Err(e) => error!("tls: reload failed, keeping the configuration in force: {e}"),
        }
    }

    /// Runs whatever is due: the accept retry, the drain checks and deadlines, the stats
    /// line, the summaries of rate-limited messages.
    fn run_timers(&mut self, now: Instant) {
        self.retry_accepting_if_due(now);
        self.web.requests.expire(now, self.poll.registry());
        self.tls.handshakes.expire(now, self.poll.registry());
        self.web.requests.log_summary(now);
        if let (Some(at), Some(every)) = (self.web.next_liveness_check, self.config.ws_ping)
            && at <= now
        {
            self.check_websocket_liveness(now, every);
            self.web.next_liveness_check = Some(now + every / 2);
        }
        if !self.draining.is_empty() {
            self.sweep_draining(now);
        }
        if let (Some(at), Some(every)) = (self.next_stats_at, self.config.stats_interval)
            && at <= now
        {
            let nats = self.nats.bridge.as_ref().map(Bridge::counters);
            info!("{}", self.stats_line(nats));
            self.next_stats_at = Some(now + every);
        }
        if let Some(count) = self.admission.refusal_log.take_summary(now) {
            info!(
                "refused {count} more connections in the last second: server full ({} \
                 clients)",
                self.config.max_clients
            );
        }
        if let Some(count) = self.admission.access_log.take_summary(now) {
            info!("denied or refused {count} more connections by their address in the last second");
        }
        if let Some(count) = self.admission.failure_log.take_summary(now) {
            match &mut self.admission.pause {
                Some(pause) => {
                    // Said now, so its end will be said too.
                    pause.announced = true;
                    warn!(
                        "accepting failed {count} more times in the last second; still \
                         paused, retrying every {} ms",
                        ACCEPT_RETRY.as_millis()
                    );
                }
                None => warn!("accepting failed {count} more times in the last second"),
            }
        }
        if let Some(count) = self.warning_log.take_summary(now) {
            warn!(
                "{count} more clients were disconnected as slow consumers or for over-long \
                 lines in the last second (each has its own disconnect line)"
            );
        }
    }

    /// Pings WebSocket clients silent for `interval`, and drops those pinged that stayed
    /// silent for another.
    fn check_websocket_liveness(&mut self, now: Instant, interval: Duration) {
        if self.stats.websocket_active == 0 {
            return;
        }
        let mut pinged = Vec::new();
        for (&token, connection) in self.connections.iter_mut() {
            match connection.check_liveness(now, interval) {
                Liveness::Fine => {}
                Liveness::Ping => pinged.push(token),
                Liveness::Gone => self.doomed.push((token, DisconnectReason::PingTimeout)),
            }
        }
        for token in pinged {
            self.on_writable(token);
        }
        for (token, reason) in std::mem::take(&mut self.doomed) {
            self.close(token, reason);
        }
    }

    /// The stats line, with the web listener's and the bridge's parts when they are on.
    fn stats_line(&self, nats: Option<&BridgeCounters>) -> String {
        let mut line = self.stats.to_string();
        if self.config.http.is_some() {
            line.push(' ');
            line.push_str(&self.stats.web_summary(self.web.requests.counters()));
        }
        if let Some(history) = self.stats.history_summary() {
            line.push(' ');
            line.push_str(&history);
        }
        if !self.config.access.is_empty() || self.config.max_clients_per_ip > 0 {
            line.push(' ');
            line.push_str(&self.stats.access_summary());
        }
        if let Some(counters) = nats {
            line.push(' ');
            line.push_str(&counters.summary());
        }
        line
    }

    /// Closes leaving clients that have everything, or whose deadline passed.
    fn sweep_draining(&mut self, now: Instant) {
        let mut still_draining = Vec::with_capacity(self.draining.len());
        for token in std::mem::take(&mut self.draining) {
            let Some(connection) = self.connections.get_mut(&token) else {
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
            } else {
                still_draining.push(token);
            }
        }
        self.draining = still_draining;
    }

    /// How long the next poll may sleep: not at all while readers have input waiting,
    /// connections wait beyond the accept budget or kept lines wait for the batch, else until the nearest timer. A held
    /// batch is not one of them: the hold timer wakes the poll for it.
    fn next_timeout(&self) -> Option<Duration> {
        if !self.unfinished_readers.is_empty()
            || !self.tls.deferred.is_empty()
            || self.web.requests.has_unfinished()
            || self.admission.more_to_accept.contains(&true)
            || (!self.broadcast.kept_lines.is_empty() && self.shutdown.is_none())
            || (self.nats.waiting && self.shutdown.is_none())
        {
            return Some(Duration::ZERO);
        }
        let drain_tick = (!self.draining.is_empty()).then(|| Instant::now() + DRAIN_TICK);
        [
            self.admission.pause.as_ref().map(|pause| pause.retry_at),
            self.next_stats_at,
            self.web.next_liveness_check,
            self.web.requests.next_deadline(),
            self.tls.handshakes.next_deadline(),
            drain_tick,
            self.finales_wake_at(),
            self.admission.refusal_log.summary_due_at(),
            self.admission.access_log.summary_due_at(),
            self.admission.failure_log.summary_due_at(),
            self.warning_log.summary_due_at(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// One hand-out of the batch in progress: what delivering to one client needs besides it.
struct HandOut<'a> {
    registry: &'a Registry,
    max_queue: usize,
    stats: &'a mut Stats,
    /// Clients that failed, closed once the hand-out is over.
    doomed: &'a mut Vec<(Token, DisconnectReason)>,
}

impl HandOut<'_> {
    /// Sends `slices` (`lines` lines) to one open client and keeps its interest in step.
    fn deliver(
        &mut self,
        token: Token,
        connection: &mut ClientConnection,
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

/// Binds the first of `addrs` (those of `flag`) that accepts us.
fn bind_any(flag: &'static str, addrs: &[SocketAddr]) -> Result<TcpListener, ServerError> {
    let mut last_error = None;
    for &addr in addrs {
        match bind_with_backlog(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some((addr, e)),
        }
    }
    let (addr, source) = last_error.expect("Config::new guarantees at least one address");
    Err(ServerError::Bind { flag, addr, source })
}

/// Binds a non-blocking listener with a backlog of `LISTEN_BACKLOG` (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections then waits in the kernel for the accept
/// loop instead of having its SYNs dropped and retried a second later.
fn bind_with_backlog(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std and mio do: a restarted server can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// `accept` errors that concern one connection, not the listener: Linux reports a pending
/// network error of the new connection through `accept` (see accept(2)), and the right
/// response is to take the next one.
fn is_per_connection_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::PermissionDenied
    ) || matches!(
        error.raw_os_error(),
        Some(libc::EPROTO | libc::ENOPROTOOPT | libc::EHOSTDOWN | libc::ENONET | libc::EOPNOTSUPP)
    )
}
