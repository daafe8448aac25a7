//! The event loop: one thread, one `Poll`, one map of connections.
//!
//! One turn of the loop: wait for readiness; move on the work the last turn's budgets cut
//! short; dispatch each event to the connection under its token, by its stage (TLS
//! handshake, web request, member); accept new connections (after the departures of the
//! same poll); collect the members' complete lines in their rooms' batches
//! ([`crate::broadcast::batch::Batch`]), hand each room's batch to its members once (one
//! `writev` each), and finally run what the components' deadlines call for. Sockets are
//! edge-triggered: a handler that stops before `WouldBlock` must remember to come back (it
//! is carried), because no new event will come.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, trace, warn};
use mio::{Events, Poll, Token};

use crate::admission::Admission;
use crate::bridge::Bridge;
use crate::broadcast::rooms::{RoomShape, Rooms};
use crate::config::Config;
use crate::conn::reason::DisconnectReason;
use crate::error::ServerError;
use crate::observe::Observer;
use crate::reactor::connections::{Connections, Stage};
use crate::reactor::hold_timer::HoldTimer;
use crate::reactor::listeners::{Listener, Listeners};
use crate::reactor::shutdown::Shutdown;
use crate::reactor::signals::{Signal, Signals};
use crate::transport::tls::{HANDSHAKE_TIMEOUT, TlsStage};
use crate::web::front::WebFront;
use crate::web::requests::REQUEST_TIMEOUT;

mod accept;
mod clients;
mod graceful_shutdown;
mod hand_out;
mod nats;
mod rooms;
mod timers;

use hand_out::HandOut;
use nats::{NATS_FINAL_FLUSH, NatsLink};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const HOLD_TIMER: Token = Token(2);
/// The NATS bridge's waker: lines from other instances are waiting.
const BRIDGE: Token = Token(3);
/// The web listener (`--http`).
const WEB_LISTENER: Token = Token(4);
const FIRST_CLIENT: usize = 5;

/// A connection must become a member within this of its accept: its TLS handshake and,
/// on the web listener, its whole exchange share one deadline from the connect.
const ADMISSION_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;
const _: () = assert!(HANDSHAKE_TIMEOUT.as_nanos() == REQUEST_TIMEOUT.as_nanos());

/// Most bytes taken from one client per turn, so that a firehose cannot starve the others.
pub const READ_BUDGET: usize = 64 * 1024;

/// `tokens` carried to this turn, each once, in token order (a connection may have been
/// carried twice: by its budget and by an event).
fn distinct(mut tokens: Vec<Token>) -> Vec<Token> {
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every client was flushed (or its deadline passed) after a stop signal.
    Graceful,
    /// A second stop signal arrived while draining.
    Forced,
}

/// The reactor's own state for one turn: its number, the read buffer every client shares,
/// readers carried to the next turn, and clients to close once a pass over the map is done.
struct Turn {
    /// Numbers the turns: each client is read at most once per turn.
    number: u64,
    /// The read buffer shared by all clients; what is not a complete line moves to the
    /// client's own framer.
    scratch: Box<[u8]>,
    /// Connections carried to the next turn: a read, a handshake step or a request's
    /// reading stopped at its budget with input possibly still waiting (no new edge will
    /// come for it).
    carried: Vec<Token>,
    /// Clients to close once the current pass over the map is done.
    doomed: Vec<(Token, DisconnectReason)>,
    /// Wakes the poll when a batch held for coalescing is due.
    hold_timer: HoldTimer,
    /// While a member's commands are obeyed, the clients a hand-out finds failing wait in
    /// `doomed` until it is done (see `obey_lines`).
    closes_held: bool,
    /// With `--rooms`: members' complete lines that wait for their next turn, because that
    /// turn's command budget ran out; at most one read's lines each (a member is not read
    /// again until they are taken). Kept here, not in every member: it is rare.
    deferred_lines: HashMap<Token, Vec<u8>>,
}

/// The server: the poll and its clients, and the components that share a turn. Each
/// component owns its state and reports its next deadline; the loop dispatches readiness by
/// token and asks them for their part of the turn.
pub struct EventLoop {
    poll: Poll,
    listeners: Listeners,
    signals: Signals,
    config: Config,
    /// Every connection, in whichever stage (handshake, request, member): one entry each.
    connections: Connections,
    /// Tokens only grow, so a stale event can never reach a newer client.
    next_token: usize,
    turn: Turn,
    /// Who gets in, how fast: per-address places, the accept budget and pause, their logs.
    admission: Admission,
    /// TLS: the configuration new connections get, and the handshakes under way.
    tls: TlsStage,
    /// The web listener's front door (`--http`): requests in their HTTP stage, the page's
    /// policy, the pings' schedule.
    web: WebFront,
    /// The broadcasts: one room without `--rooms`, or many by name; each its batch,
    /// framing, history and members.
    rooms: Rooms,
    /// The NATS bridge (`--nats`) and what waits to go to it.
    nats: NatsLink,
    /// Clients that are leaving (sent away, or at shutdown) with output still to flush:
    /// they no longer count against `--max-clients`.
    leaving: HashSet<Token>,
    /// `Some` once a stop signal arrived.
    shutdown: Option<Shutdown>,
    /// The counters, the stats line's schedule, the rate limit of warnings.
    observe: Observer,
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
        let listeners = Listeners::bind(&config, poll.registry(), [LISTENER, WEB_LISTENER])?;
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
        // Said on the line itself, so that a reader of the log knows what clients need.
        let tls_note = if tls.is_some() { " (TLS)" } else { "" };
        info!("listening on {}{tls_note}", listeners.local_addr);
        if let Some(web) = &listeners.web {
            let addr = web.local_addr().map_err(ServerError::Poll)?;
            info!("http listening on {addr}{tls_note}");
        }
        Ok(EventLoop {
            web: WebFront::new(config.ws_ping.filter(|_| listeners.web.is_some())),
            admission: Admission::new(config.max_clients_per_ip, ADMISSION_TIMEOUT),
            nats: NatsLink::new(bridge),
            tls: TlsStage::new(tls),
            rooms: {
                let shape = RoomShape {
                    batch_limit: config.batch_limit(),
                    max_line: config.max_line,
                    max_hold: config.coalesce,
                    history: config.history,
                };
                match config.rooms {
                    Some(max) => Rooms::named(shape, max),
                    None => Rooms::single(shape),
                }
            },
            listeners,
            poll,
            signals,
            observe: Observer::new(config.stats_interval, config.history.is_some()),
            config,
            connections: Connections::default(),
            next_token: FIRST_CLIENT,
            turn: Turn {
                number: 0,
                scratch: vec![0; READ_BUDGET].into_boxed_slice(),
                carried: Vec::new(),
                doomed: Vec::new(),
                hold_timer,
                closes_held: false,
                deferred_lines: HashMap::new(),
            },
            leaving: HashSet::new(),
            shutdown: None,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.local_addr
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
            self.turn.number += 1;
            self.admission.start_turn();
            self.tls.start_turn();
            self.web.requests.start_turn();
            trace!(
                "turn {}: {} events",
                self.turn.number,
                events.iter().count()
            );
            // Handshakes and requests carried from the last turn go first, so that older
            // ones are not starved by new arrivals; readers after this poll's events (an
            // event may have read them already).
            let carried = distinct(std::mem::take(&mut self.turn.carried));
            self.serve_carried(&carried, |stage| stage != Stage::Member);
            if let Some(exit) = self.handle_events(&events) {
                break exit;
            }
            self.serve_carried(&carried, |stage| stage == Stage::Member);
            if self.nats.waiting {
                self.take_lines_from_nats();
            }
            for (listener, more) in [Listener::Lines, Listener::Web]
                .into_iter()
                .zip(self.listeners.more_to_accept)
            {
                if more {
                    self.accept_all(listener);
                }
            }
            let now = Instant::now();
            self.continue_shutdown(now);
            self.hand_out_when_due(now);
            self.run_timers(now);
            self.nats.hand_over();
            if self.shutdown.is_some() && self.connections.is_empty() {
                break Exit::Graceful;
            }
        };
        self.nats.hand_over();
        // A forced exit (second signal) does not wait for NATS either.
        let flush = match exit {
            Exit::Graceful => NATS_FINAL_FLUSH,
            Exit::Forced => Duration::ZERO,
        };
        let nats = self.nats.bridge.take().map(|bridge| bridge.finish(flush));
        self.sync_room_gauges();
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
                LISTENER => self.listeners.more_to_accept[Listener::Lines as usize] = true,
                WEB_LISTENER => self.listeners.more_to_accept[Listener::Web as usize] = true,
                HOLD_TIMER => self.turn.hold_timer.acknowledge(),
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

    /// Handles signals: SIGHUP reloads TLS; the first SIGINT/SIGTERM starts a graceful
    /// shutdown, any later one (even delivered together with the first) ends it.
    fn on_signals(&mut self) -> Option<Exit> {
        for signal in self.signals.take() {
            if signal == Signal::Reload {
                self.tls.reload(self.config.tls.as_ref());
                continue;
            }
            let name = signal.name();
            if self.shutdown.is_some() {
                warn!(
                    "received {name} again: exiting now, dropping output for {} clients",
                    self.connections.count(Stage::Member)
                );
                return Some(Exit::Forced);
            }
            self.begin_shutdown(name);
        }
        None
    }
}
