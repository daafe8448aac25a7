//! The event loop: one thread, one `Poll`, every client.
//!
//! One turn of the loop: wait for readiness, accept new clients, read every readable client
//! until the kernel has no more (or its fair share is used up), collect the complete lines in
//! a [`Batch`], then hand the batch to every client once (one `writev` each), and finally run
//! the timers (accept retry, drain deadlines, stats). Sockets are edge-triggered: a handler
//! that stops before `WouldBlock` must remember to come back, because no new event will come.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::batch::Batch;
use crate::config::Config;
use crate::connection::{ClientConnection, DisconnectReason, Phase, ReadEnd};
use crate::error::ServerError;
use crate::hold_timer::HoldTimer;
use crate::shutdown::{ShutdownState, StopSignals};
use crate::stats::Stats;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const HOLD_TIMER: Token = Token(2);
const FIRST_CLIENT: usize = 3;

/// Most bytes taken from one client per turn, so that a firehose cannot starve the others.
pub const READ_BUDGET: usize = 64 * 1024;
/// A batch this large is distributed at once instead of at the end of the turn, bounding the
/// memory one turn can gather.
const BATCH_LIMIT: usize = 256 * 1024;
/// Connections the kernel may hold for us before we accept them.
const LISTEN_BACKLOG: libc::c_int = 1024;
/// Most connections taken per turn, so that a connection storm cannot stall the clients
/// already connected; the rest wait in the backlog for the next turn.
const ACCEPT_BUDGET: usize = 64;
/// How long to wait before accepting again after running out of descriptors (the listener
/// will not signal again for connections already queued).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a client that broke the line limit has to read its `ERR` line.
const REJECT_LINGER: Duration = Duration::from_secs(2);
/// How often draining clients are checked for having received everything.
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every client was flushed (or its deadline passed) after a stop signal.
    Graceful,
    /// A second stop signal arrived while draining.
    Forced,
}

/// The server: listener, clients, and the state of one turn.
pub struct EventLoop {
    poll: Poll,
    /// `None` once shutdown has begun: new connections wait in the kernel and are reset.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: StopSignals,
    /// Fires when a batch held for coalescing is due.
    hold_timer: HoldTimer,
    config: Config,
    connections: HashMap<Token, ClientConnection>,
    /// Tokens only grow, so a stale event can never reach a newer client.
    next_token: usize,
    /// Lines framed this turn, not yet handed to the clients.
    batch: Batch,
    /// The read buffer shared by all clients; what is not a complete line moves to the
    /// client's own framer.
    scratch: Box<[u8]>,
    /// Clients whose read budget ran out with input possibly still waiting.
    unfinished_readers: Vec<Token>,
    /// Clients that are leaving but still have output to flush.
    draining: Vec<Token>,
    /// Clients to close once the current pass over the map is done.
    doomed: Vec<(Token, DisconnectReason)>,
    /// Set while accepting is paused after running out of descriptors.
    accept_retry_at: Option<Instant>,
    /// The accept budget ran out with connections possibly still waiting (no new edge will
    /// come for them).
    more_to_accept: bool,
    shutdown: ShutdownState,
    stats: Stats,
    next_stats_at: Option<Instant>,
}

impl EventLoop {
    /// Binds the first address of `config` that works and registers the listener and the
    /// stop signals. Logs `listening on ADDR` once bound.
    pub fn bind(config: Config) -> Result<EventLoop, ServerError> {
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let mut listener = bind_any(&config)?;
        let local_addr = listener.local_addr().map_err(ServerError::Poll)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let signals =
            StopSignals::register(poll.registry(), SIGNALS).map_err(ServerError::Signals)?;
        let hold_timer =
            HoldTimer::register(poll.registry(), HOLD_TIMER).map_err(ServerError::Poll)?;
        info!("listening on {local_addr}");
        Ok(EventLoop {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            hold_timer,
            next_stats_at: config.stats_interval.map(|every| Instant::now() + every),
            config,
            connections: HashMap::new(),
            next_token: FIRST_CLIENT,
            batch: Batch::default(),
            scratch: vec![0; READ_BUDGET].into_boxed_slice(),
            unfinished_readers: Vec::new(),
            draining: Vec::new(),
            doomed: Vec::new(),
            accept_retry_at: None,
            more_to_accept: false,
            shutdown: ShutdownState::Running,
            stats: Stats::default(),
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
            if let Some(exit) = self.handle_events(&events) {
                break exit;
            }
            self.serve_unfinished_readers();
            if self.more_to_accept {
                self.accept_all();
            }
            let now = Instant::now();
            self.distribute_when_due(now);
            self.run_timers(now);
            if self.shutdown != ShutdownState::Running && self.connections.is_empty() {
                break Exit::Graceful;
            }
        };
        info!("{}", self.stats);
        Ok(exit)
    }

    /// Dispatches one poll's events; returns an exit if a second stop signal arrived.
    fn handle_events(&mut self, events: &Events) -> Option<Exit> {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(),
                HOLD_TIMER => self.hold_timer.acknowledge(),
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

    /// Accepts waiting connections, up to the per-turn budget. Lines framed earlier in this
    /// turn go out first, so that a line reaches exactly the clients connected when it was
    /// framed.
    fn accept_all(&mut self) {
        self.distribute();
        self.more_to_accept = false;
        let mut budget = ACCEPT_BUDGET;
        while let Some(listener) = &self.listener {
            if budget == 0 {
                self.more_to_accept = true;
                return;
            }
            budget -= 1;
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.accept_retry_at.take().is_some() {
                        info!("accepting again ({} clients)", self.connections.len());
                    }
                    return;
                }
                Err(e) if is_transient_accept_error(&e) => {
                    debug!("accept: {e} (the connection was gone before we took it)");
                }
                Err(e) => {
                    self.pause_accepting(&e);
                    return;
                }
            }
        }
    }

    /// Registers a new client, or refuses it with an `ERR` line when the server is full.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.connections.len() >= self.config.max_clients {
            self.stats.refused_server_full += 1;
            info!(
                "refused {peer}: server full ({} clients)",
                self.config.max_clients
            );
            refuse(stream, self.config.max_clients);
            return;
        }
        // Lines are batched per turn already; Nagle would only add latency.
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{peer}: cannot set TCP_NODELAY: {e}");
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        match ClientConnection::register(stream, peer, self.poll.registry(), token) {
            Ok(connection) => {
                self.connections.insert(token, connection);
                self.stats.connected();
                info!("client {peer} connected (token {})", token.0);
            }
            Err(e) => warn!("{peer}: cannot register with the poller, dropping it: {e}"),
        }
    }

    /// Running out of descriptors (or kernel memory) leaves the connection in the backlog;
    /// retrying at once would spin, so wait a little, or until a client leaves.
    fn pause_accepting(&mut self, error: &io::Error) {
        if self.accept_retry_at.is_none() {
            warn!(
                "cannot accept new clients: {error} ({} clients connected); retrying every {} ms",
                self.connections.len(),
                ACCEPT_RETRY.as_millis()
            );
        } else {
            debug!("accept still failing: {error}");
        }
        self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
    }

    /// Readiness for a client. The token may belong to a client closed earlier in this same
    /// batch of events: that is normal, and the event is ignored.
    fn on_client_event(&mut self, token: Token, event: &Event) {
        if !self.connections.contains_key(&token) {
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

    /// Reads one turn's worth from a client into the batch.
    fn on_readable(&mut self, token: Token) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let start = self.batch.len();
        let report = connection.read_until_would_block(
            &mut self.scratch,
            self.config.max_line,
            self.batch.bytes_mut(),
        );
        self.batch.record(token, start, report.lines);
        self.stats.bytes_in += report.bytes as u64;
        self.stats.lines_in += report.lines as u64;
        trace!(
            "token {}: read {} bytes, {} lines",
            token.0, report.bytes, report.lines
        );
        match report.end {
            ReadEnd::WouldBlock => {}
            ReadEnd::BudgetSpent => self.unfinished_readers.push(token),
            ReadEnd::Closed(DisconnectReason::LineTooLong) => self.reject_long_line(token),
            ReadEnd::Closed(reason) => self.close(token, reason),
        }
        if self.batch.len() >= BATCH_LIMIT {
            self.distribute();
        }
    }

    /// Gives clients whose budget ran out last turn another turn, after everyone else.
    fn serve_unfinished_readers(&mut self) {
        let mut readers = std::mem::take(&mut self.unfinished_readers);
        readers.sort_unstable();
        readers.dedup();
        for token in readers {
            self.on_readable(token);
        }
    }

    /// Sends the client a farewell `ERR` line and lets it drain; its line is never broadcast.
    fn reject_long_line(&mut self, token: Token) {
        let max_line = self.config.max_line;
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        warn!(
            "client {} (token {}) sent a line longer than {max_line} bytes; disconnecting it",
            connection.peer(),
            token.0
        );
        let farewell = format!("ERR line too long (max {max_line} bytes)\n");
        connection.begin_drain(
            DisconnectReason::LineTooLong,
            farewell.as_bytes(),
            Instant::now() + REJECT_LINGER,
        );
        self.draining.push(token);
        self.on_writable(token);
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
    fn distribute_when_due(&mut self, now: Instant) {
        let Some(due) = self.batch.due_at(self.config.coalesce) else {
            return;
        };
        if due <= now {
            self.distribute();
        } else if !self.hold_timer.is_armed()
            && let Err(e) = self.hold_timer.arm(due - now)
        {
            warn!("cannot arm the coalescing timer ({e}); sending at once");
            self.distribute();
        }
    }

    /// Hands the batch to every open client: one `writev` each for those keeping up, a copy
    /// into the queue for those behind. Clients over `--max-queue` are disconnected.
    fn distribute(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let echo = self.config.echo;
        for (&token, connection) in self.connections.iter_mut() {
            if !connection.is_open() {
                continue;
            }
            let lines = self.batch.lines_for(token, echo);
            if lines == 0 {
                continue;
            }
            let sent = connection.send(self.batch.parts_for(token, echo), self.config.max_queue);
            let written = match sent {
                Ok(written) => written,
                Err(reason) => {
                    self.doomed.push((token, reason));
                    continue;
                }
            };
            self.stats.deliveries += lines as u64;
            self.stats.bytes_out += written as u64;
            if let Err(e) = connection.update_interest(self.poll.registry(), token) {
                self.doomed.push((token, DisconnectReason::Error(e.kind())));
            }
        }
        self.batch.clear(Instant::now());
        for (token, reason) in std::mem::take(&mut self.doomed) {
            if let DisconnectReason::SlowConsumer { queued } = reason
                && let Some(connection) = self.connections.get(&token)
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

    /// Removes a client for good; the one place a disconnect is logged and counted.
    fn close(&mut self, token: Token, reason: DisconnectReason) {
        let Some(mut connection) = self.connections.remove(&token) else {
            return;
        };
        // A client that was already being sent away is counted for why it was sent away,
        // even if it hung up before we were done with it.
        let reason = match connection.phase() {
            Phase::Draining {
                reason: sent_away, ..
            } if !reason.abandons_output() => sent_away,
            _ => reason,
        };
        if let Err(e) = connection.deregister(self.poll.registry()) {
            debug!("token {}: deregister: {e}", token.0);
        }
        if reason.abandons_output()
            && let Err(e) = connection.reset_on_close()
        {
            debug!("token {}: SO_LINGER: {e}", token.0);
        }
        self.stats.disconnected(reason);
        info!(
            "client {} disconnected (token {}): {reason}",
            connection.peer(),
            token.0
        );
        if self.accept_retry_at.is_some() {
            // A descriptor just came free: try the waiting connections now.
            self.accept_retry_at = Some(Instant::now());
        }
    }

    /// Handles SIGINT/SIGTERM: the first starts a graceful shutdown, a second one ends it.
    fn on_signals(&mut self) -> Option<Exit> {
        for name in self.signals.take() {
            if self.shutdown != ShutdownState::Running {
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

    /// Stops accepting and reading, delivers every line already received (an unfinished one
    /// with a `\n`), and lets every client drain until `--shutdown-timeout`.
    fn begin_shutdown(&mut self, signal: &str) {
        let timeout = self.config.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        self.shutdown = ShutdownState::Draining;
        if let Some(mut listener) = self.listener.take()
            && let Err(e) = self.poll.registry().deregister(&mut listener)
        {
            debug!("deregister listener: {e}");
        }
        self.accept_retry_at = None;
        self.more_to_accept = false;
        self.unfinished_readers.clear();
        for (&token, connection) in self.connections.iter_mut() {
            if connection.is_open() {
                let start = self.batch.len();
                let lines = connection.finish_partial_line(self.batch.bytes_mut());
                self.batch.record(token, start, lines);
                self.stats.lines_in += lines as u64;
            }
        }
        self.distribute();
        let queued: usize = self.connections.values().map(|c| c.queued()).sum();
        info!(
            "received {signal}: shutting down, flushing {queued} bytes to {} clients for up \
             to {:.1} s",
            self.connections.len(),
            timeout.as_secs_f64()
        );
        let tokens: Vec<Token> = self.connections.keys().copied().collect();
        for token in tokens {
            if let Some(connection) = self.connections.get_mut(&token)
                && connection.is_open()
            {
                connection.begin_drain(DisconnectReason::Shutdown, b"", deadline);
                self.draining.push(token);
            }
            self.on_writable(token);
        }
    }

    /// Runs whatever is due: the accept retry, the drain checks and deadlines, the stats line.
    fn run_timers(&mut self, now: Instant) {
        if self.accept_retry_at.is_some_and(|at| at <= now) {
            self.accept_all();
        }
        if !self.draining.is_empty() {
            self.sweep_draining(now);
        }
        if let (Some(at), Some(every)) = (self.next_stats_at, self.config.stats_interval)
            && at <= now
        {
            info!("{}", self.stats);
            self.next_stats_at = Some(now + every);
        }
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
                let unsent = connection.queued();
                let reason = match reason {
                    DisconnectReason::Shutdown => DisconnectReason::ShutdownTimeout { unsent },
                    other => other,
                };
                self.close(token, reason);
            } else {
                still_draining.push(token);
            }
        }
        self.draining = still_draining;
    }

    /// How long the next poll may sleep: not at all while readers have input waiting or
    /// connections wait beyond the accept budget, else until the nearest millisecond timer.
    /// A held batch is not one of them: the hold timer wakes the poll for it.
    fn next_timeout(&self) -> Option<Duration> {
        if !self.unfinished_readers.is_empty() || self.more_to_accept {
            return Some(Duration::ZERO);
        }
        let drain_tick = (!self.draining.is_empty()).then(|| Instant::now() + DRAIN_TICK);
        [self.accept_retry_at, self.next_stats_at, drain_tick]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// Binds the first of the configured addresses that accepts us.
fn bind_any(config: &Config) -> Result<TcpListener, ServerError> {
    let mut last_error = None;
    for &addr in &config.addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                widen_backlog(&listener);
                return Ok(listener);
            }
            Err(e) => last_error = Some((addr, e)),
        }
    }
    let (addr, source) = last_error.expect("Config::new guarantees at least one address");
    Err(ServerError::Bind { addr, source })
}

/// Raises the listen backlog from mio's 128 to `LISTEN_BACKLOG` (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections then waits in the kernel for the accept
/// loop instead of having its SYNs dropped and retried a second later.
fn widen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a socket that is already listening only updates its backlog; the fd
    // is owned by `listener` for the whole call.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        debug!(
            "cannot widen the listen backlog: {}",
            io::Error::last_os_error()
        );
    }
}

/// Errors that concern one connection that died in the backlog, not the listener.
fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Tells a client over `--max-clients` why it is refused, then closes it. The socket is new,
/// so its send buffer is empty and one non-blocking write goes through.
fn refuse(mut stream: TcpStream, max_clients: usize) {
    use std::io::Write;
    let message = format!("ERR server full (max {max_clients} clients)\n");
    if let Err(e) = stream.write_all(message.as_bytes()) {
        debug!("could not tell a refused client why: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
