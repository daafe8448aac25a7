//! How connections get in, as more `impl EventLoop`: accepting on both listeners, the
//! address rules, the TLS handshake stage, the web listener's requests and upgrades, the
//! refusals (`ERR` lines, HTTP statuses), and a newcomer's history replay.
//!
//! The walk of one connection: accept → `--allow`/`--deny` → counted for its address →
//! registered → (TLS) the handshake stage → a line client at once, or (web) the HTTP stage,
//! which answers or hands an upgrade back → a WebSocket client → the replay → live lines.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info, trace, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::{EventLoop, HandOut};
use crate::admission::access::AddressPlace;
use crate::bridge::Bridge;
use crate::broadcast::batch::Sender;
use crate::broadcast::rooms::{MAIN, ONLY_ROOM, TooManyRooms};
use crate::broadcast::{Form, event_batch};
use crate::conn::connection::Member;
use crate::conn::socket::configure_socket;
use crate::observe::stats::MemberKind;
use crate::reactor::connections::{Admitting, ClientConnection, Stage};
use crate::reactor::listeners::{Listener, is_per_connection_accept_error};
use crate::transport::Transport;
use crate::transport::tls::{Handshake, HandshakeStep};
use crate::web::front::{Context, Decision};
use crate::web::requests::{Exchange, Progress, WebRequests};
use crate::wire::commands;
use crate::wire::http::{self, Request};
use crate::wire::sse::Resume;

/// What a web request becomes as a member (see `EventLoop::admit_web_member`).
pub(super) enum WebMember<'a> {
    /// A WebSocket client, its upgrade accepted with `key`.
    WebSocket { key: &'a str },
    /// A reader of `GET /lines`'s streamed body (chunked, unless HTTP/1.0).
    LineReader { chunked: bool },
    /// A reader of `GET /events`, whose last event was `since` (as it said).
    EventReader { since: Option<&'a str> },
}

impl EventLoop {
    /// Accepts waiting connections on `which`, within what is left of this turn's budget.
    pub(super) fn accept_all(&mut self, which: Listener) {
        self.listeners.more_to_accept[which as usize] = false;
        loop {
            let Some(listener) = self.listeners.get(which) else {
                return;
            };
            if self.admission.budget == 0 {
                self.listeners.more_to_accept[which as usize] = true;
                return;
            }
            self.admission.budget -= 1;
            match listener.accept() {
                Ok((stream, peer)) => self.on_accepted(stream, peer, which),
                // An empty backlog here says nothing of the other listener's: a pause ends
                // only in a retry that tried both (`retry_accepting_if_due`).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_per_connection_accept_error(&e) => {
                    debug!("accept: {e} (the connection failed before we took it)");
                }
                Err(e) => {
                    self.admission
                        .pause(&e, self.connections.count(Stage::Member));
                    return;
                }
            }
        }
    }

    /// A new connection on `which`: closed at once if its address is denied; else
    /// registered, and admitted now, or once its TLS handshake is done.
    pub(super) fn on_accepted(&mut self, mut stream: TcpStream, peer: SocketAddr, which: Listener) {
        if !self.config.access.permits(peer.ip()) {
            return self.deny(peer);
        }
        // Every connection from an address counts against --max-clients-per-ip from its
        // accept (handshakes and web requests too), so one host cannot crowd others out.
        // Its place goes with it through every stage, and back when it is dropped.
        let place = match self.admission.take_place(peer) {
            Ok(place) => place,
            Err(why) => {
                self.observe.stats.refused_per_address += 1;
                return self.refuse_over_limit(stream, which, &why);
            }
        };
        let handshakes = self.connections.count(Stage::Handshake);
        if self.tls.config.is_some() && handshakes >= self.config.max_clients {
            // Handshakes are bounded like clients; this one is closed unanswered.
            if self.count_refused_server_full() {
                info!("refused {peer}: {handshakes} TLS handshakes in progress already");
            }
            return;
        }
        if let Err(e) = configure_socket(&stream, self.config.tcp_keepalive) {
            debug!("{peer}: cannot set socket options: {e}");
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            warn!("{peer}: cannot register with the poller, dropping it: {e}");
            return;
        }
        match &self.tls.config {
            Some(config) => {
                let admitting = Admitting { which, place };
                let handshake = match Handshake::start(stream, config, peer, admitting) {
                    Ok(handshake) => handshake,
                    Err(e) => return warn!("{peer}: cannot start TLS, dropping it: {e}"),
                };
                self.connections
                    .insert(token, ClientConnection::Handshake(handshake));
                self.start_admission_deadline(token);
                self.on_handshake_event(token);
            }
            None => {
                if which == Listener::Web {
                    self.start_admission_deadline(token);
                }
                self.admit(Transport::Plain(stream), peer, place, token, which)
            }
        }
    }

    /// Starts the clock of a connection that must become a member (or finish its web
    /// exchange) within the admission timeout of its accept, whatever stages it passes.
    fn start_admission_deadline(&mut self, token: Token) {
        let connections = &self.connections;
        let live = connections.admitting();
        self.admission
            .deadlines
            .start(token, Instant::now(), live, |t| connections.is_admitting(t));
    }

    /// Tells a connection over `--max-clients-per-ip` why, in the clear (`ERR` line, or a
    /// `429` on the web listener), and closes it; with TLS it is closed unanswered, before
    /// any handshake work is spent on it.
    pub(super) fn refuse_over_limit(&mut self, stream: TcpStream, which: Listener, why: &str) {
        if self.tls.config.is_some() {
            return;
        }
        let message = match which {
            Listener::Lines => format!("ERR {why}\n").into_bytes(),
            Listener::Web => http::refusal_response(&http::refusal(http::TOO_MANY_REQUESTS, why)),
        };
        self.refuse_with(Transport::Plain(stream), &message);
    }

    /// Moves a TLS handshake on; admits the connection once it is done.
    /// At most `HANDSHAKE_BUDGET` steps a turn (a step may cost a signature, and reads at
    /// most `transport::HANDSHAKE_STEP_COST`): a flood of ClientHellos waits its turn
    /// instead of stalling everyone; the rest go on in the next turn.
    pub(super) fn on_handshake_event(&mut self, token: Token) {
        if !self.tls.take_step() {
            self.turn.carried.push(token);
            return;
        }
        let Some(handshake) = self.connections.handshake_mut(token) else {
            return;
        };
        trace!("token {}: handshake step", token.0);
        match handshake.step(token, self.poll.registry()) {
            HandshakeStep::Complete => {
                let Some(ClientConnection::Handshake(done)) = self.connections.remove(token) else {
                    return;
                };
                let (transport, peer, Admitting { which, place }) = done.into_parts();
                self.admit(transport, peer, place, token, which)
            }
            // Its step's work bound was reached: input waits that no event will announce.
            HandshakeStep::BudgetSpent => self.turn.carried.push(token),
            HandshakeStep::Waiting => {}
            HandshakeStep::Failed(why) => self.drop_handshake(token, Some(&why)),
        }
    }

    /// Drops a handshake that failed (`why`, logged rate-limited) or ran out of time
    /// (`None`).
    pub(super) fn drop_handshake(&mut self, token: Token, why: Option<&str>) {
        let Some(ClientConnection::Handshake(mut handshake)) =
            self.connections.remove_in(token, Stage::Handshake)
        else {
            return;
        };
        match why {
            Some(why) => self.tls.handshakes.log_failure(handshake.peer(), why),
            None => self.tls.handshakes.log_timeout(handshake.peer()),
        }
        handshake.deregister(self.poll.registry());
    }

    /// Admits a connection (registered under `token`) as a line client or a web request.
    pub(super) fn admit(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        token: Token,
        which: Listener,
    ) {
        match which {
            Listener::Lines => self.admit_lines(transport, peer, place, token),
            Listener::Web => self.admit_web(transport, peer, place, token),
        }
    }

    /// Notes a connection from an address `--allow` / `--deny` refuse: it was closed at once
    /// (dropped with the accepted socket), before anything it sent was read.
    pub(super) fn deny(&mut self, peer: SocketAddr) {
        self.observe.stats.denied += 1;
        self.admission.log_denied(peer);
    }

    /// Makes a connection a line client, or refuses it with an `ERR` line when the server is
    /// full or its address has `--max-clients-per-ip` already. Clients that are leaving do
    /// not count.
    pub(super) fn admit_lines(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        token: Token,
    ) {
        let max_clients = self.config.max_clients;
        if self.open_members() >= max_clients {
            if self.count_refused_server_full() {
                info!("refused {peer}: server full ({max_clients} clients)");
            }
            let message = format!("ERR server full (max {max_clients} clients)\n");
            return self.refuse_with(transport, message.as_bytes());
        }
        // TLS may hold the client's first bytes already: no readiness event will say so.
        let read_now = transport.is_tls();
        let room = match self.rooms.enter(MAIN, token.0, Form::Lines) {
            Ok(room) => room,
            Err(TooManyRooms { max }) => {
                let why = commands::no_room_to_start_in(max, MAIN);
                info!("refused {peer}: {why}");
                let message = format!("ERR {why}\n");
                return self.refuse_with(transport, message.as_bytes());
            }
        };
        // Lines framed earlier go out first: a line reaches exactly the clients of its room
        // when it was framed.
        self.hand_out_with_kept_lines(room);
        let mut member = Member::new(transport, peer, place);
        member.move_to(Some(room));
        self.connections
            .insert(token, ClientConnection::Member(member));
        self.observe.stats.connected(MemberKind::Line);
        info!("client {peer} connected (token {})", token.0);
        self.replay_history(token, None);
        if read_now {
            self.on_readable(token);
        }
    }

    /// Members that are not leaving: what `--max-clients` counts.
    fn open_members(&self) -> usize {
        let members = self.connections.count(Stage::Member);
        debug_assert!(self.leaving.len() <= members, "leaving members out of step");
        members.saturating_sub(self.leaving.len())
    }

    /// Tells a connection that is not admitted why, then closes it. It is new, so its send
    /// buffer is empty and the message goes out at once.
    pub(super) fn refuse_with(&self, mut transport: Transport, message: &[u8]) {
        let _ = self.poll.registry().deregister(transport.tcp_mut());
        let sent = transport
            .write_vectored(&[IoSlice::new(message)])
            .and_then(|_| transport.flush_tls());
        if let Err(e) = sent {
            debug!("could not tell a refused client why: {e}");
        }
        // Best effort: a refused connection is not waited for.
        let _ = transport.shutdown_write();
    }

    /// Counts a connection refused because the server is full; true if it may be logged
    /// (a line a second, then a summary).
    fn count_refused_server_full(&mut self) -> bool {
        self.observe.stats.refused_server_full += 1;
        self.admission.refusal_log.admit(Instant::now())
    }

    /// Takes a web connection: its request is read as it arrives. Requests in progress are
    /// limited to `--max-clients` too; past that a connection gets a 503 at once.
    pub(super) fn admit_web(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        token: Token,
    ) {
        if self.connections.count(Stage::Request) >= self.config.max_clients {
            if self.count_refused_server_full() {
                info!(
                    "refused {peer}: {} web requests in progress already",
                    self.config.max_clients
                );
            }
            let refusal = http::refusal(http::SERVICE_UNAVAILABLE, "too many requests in progress");
            return self.refuse_with(transport, &http::refusal_response(&refusal));
        }
        // Its deadline runs from its accept (started then), its TLS handshake included.
        let exchange = Exchange::new(transport, peer, place);
        self.connections
            .insert(token, ClientConnection::Request(exchange));
        // Through TLS the request may be here already, with no readiness event to say so.
        self.on_web_event(token);
    }

    /// Readiness for a web connection still in its HTTP stage; answers a complete request.
    pub(super) fn on_web_event(&mut self, token: Token) {
        self.drive_exchange(token, |exchange, shared, registry| {
            exchange.on_ready(shared, token, registry)
        });
    }

    /// Moves the exchange under `token` on by `step`, then acts on what it came to.
    fn drive_exchange(
        &mut self,
        token: Token,
        step: impl FnOnce(&mut Exchange, &mut WebRequests, &Registry) -> Progress,
    ) {
        let Some(exchange) = self.connections.exchange_mut(token) else {
            return;
        };
        let progress = step(exchange, &mut self.web.requests, self.poll.registry());
        self.after_exchange(token, progress);
    }

    /// Acts on what a web exchange came to: answers a complete request, carries one whose
    /// reading stopped at its budget to the next turn, drops one that is over.
    fn after_exchange(&mut self, token: Token, progress: Progress) {
        match progress {
            Progress::Request(request) => self.answer_web(token, request),
            Progress::Waiting => {}
            Progress::BudgetSpent => self.turn.carried.push(token),
            Progress::Done => self.drop_exchange(token, None),
        }
    }

    /// Drops a web exchange that is over, or whose deadline passed (`timed_out`, counted
    /// and logged by the exchange).
    pub(super) fn drop_exchange(&mut self, token: Token, timed_out: Option<Instant>) {
        let Some(ClientConnection::Request(mut exchange)) =
            self.connections.remove_in(token, Stage::Request)
        else {
            return;
        };
        if let Some(now) = timed_out {
            exchange.time_out(&mut self.web.requests, now);
        }
        exchange.deregister(self.poll.registry());
    }

    /// Answers the exchange under `token` with `response`.
    fn answer_exchange(&mut self, token: Token, response: Vec<u8>) {
        self.drive_exchange(token, |exchange, shared, registry| {
            exchange.answer(shared, response, token, registry)
        });
    }

    /// Refuses the exchange under `token` with `refusal`.
    fn refuse_exchange(&mut self, token: Token, refusal: &http::Refusal) {
        self.drive_exchange(token, |exchange, shared, registry| {
            exchange.refuse(shared, refusal, token, registry)
        });
    }

    /// Carries out what the front door decided for a routed request: an answer, a refusal
    /// of another site's page (counted), or a WebSocket upgrade.
    pub(super) fn answer_web(&mut self, token: Token, request: Request) {
        self.sync_room_gauges();
        let context = Context {
            echo: self.config.echo,
            stats: &self.observe.stats,
            nats: self.nats.bridge.as_ref().map(Bridge::counters),
            origins: &self.config.origins,
            tls: self.tls.config.is_some(),
            rooms: self.rooms.is_named(),
        };
        match self.web.decide(request, &context) {
            Decision::Answer(response) => self.answer_exchange(token, response),
            Decision::Foreign(refusal) => {
                self.observe.stats.refused_origin += 1;
                self.refuse_exchange(token, &refusal);
            }
            Decision::Refuse(refusal) => self.refuse_exchange(token, &refusal),
            Decision::Upgrade { key, room } => {
                let room = room.as_deref().unwrap_or(MAIN);
                self.admit_web_member(token, room, WebMember::WebSocket { key: &key })
            }
            Decision::ReadBody(request) => {
                self.drive_exchange(token, |exchange, shared, registry| {
                    exchange.start_body(request, shared, token, registry)
                });
            }
            Decision::Publish { room, body } => {
                let room = room.as_deref().unwrap_or(MAIN);
                self.publish_posted_lines(token, room, &body)
            }
            Decision::Events { room, since } => {
                let room = room.as_deref().unwrap_or(MAIN);
                let since = since.as_deref();
                self.admit_web_member(token, room, WebMember::EventReader { since })
            }
            Decision::Stream { room, chunked } => {
                let room = room.as_deref().unwrap_or(MAIN);
                self.admit_web_member(token, room, WebMember::LineReader { chunked })
            }
        }
    }

    /// Makes a web connection a member of room `name` (`main` without `--rooms`): a
    /// WebSocket client, or a reader of `GET /lines`; or refuses it (503) when
    /// `--max-clients` are connected or the room would be one past `--max-rooms`. Lines
    /// framed earlier go out first, as for a new TCP client.
    pub(super) fn admit_web_member(&mut self, token: Token, name: &str, what: WebMember<'_>) {
        let max_clients = self.config.max_clients;
        if self.open_members() >= max_clients {
            self.observe.stats.refused_server_full += 1;
            let reason = format!("server full (max {max_clients} clients)");
            let refusal = http::refusal(http::SERVICE_UNAVAILABLE, reason);
            return self.refuse_exchange(token, &refusal);
        }
        let form = match what {
            WebMember::WebSocket { .. } => Form::Frames,
            WebMember::LineReader { chunked: true } => Form::Chunks,
            WebMember::LineReader { chunked: false } => Form::Lines,
            WebMember::EventReader { .. } => Form::Events,
        };
        let room = match self.rooms.enter(name, token.0, form) {
            Ok(room) => room,
            Err(TooManyRooms { max }) => {
                let reason = commands::no_room_to_start_in(max, name);
                let refusal = http::refusal(http::SERVICE_UNAVAILABLE, reason);
                return self.refuse_exchange(token, &refusal);
            }
        };
        self.hand_out_with_kept_lines(room);
        // Its place in its address's count, taken at the accept, goes on with it.
        let Some(ClientConnection::Request(exchange)) =
            self.connections.remove_in(token, Stage::Request)
        else {
            self.rooms.leave(room, token.0, form);
            return;
        };
        let (transport, peer, place) = exchange.into_upgrade();
        let (mut member, said) = match what {
            WebMember::WebSocket { key } => {
                let handshake = http::upgrade_response(key);
                let member = Member::new_websocket(transport, peer, place, &handshake);
                (member, "websocket client")
            }
            WebMember::LineReader { chunked } => {
                let head = if chunked {
                    http::LINES_HEAD
                } else {
                    http::LINES_HEAD_HTTP10
                };
                let member = Member::new_http_stream(transport, peer, place, chunked, head);
                (member, "http reader")
            }
            WebMember::EventReader { .. } => {
                let member = Member::new_event_stream(transport, peer, place, http::EVENTS_HEAD);
                (member, "sse reader")
            }
        };
        member.move_to(Some(room));
        self.observe.stats.connected(member.kind());
        self.connections
            .insert(token, ClientConnection::Member(member));
        info!("{said} {peer} connected (token {})", token.0);
        let since = match what {
            WebMember::EventReader { since } => since,
            _ => None,
        };
        let replayed = self.replay_history(token, since);
        self.web.requests.charge_replay(replayed);
        self.on_writable(token);
        // What came with its request (a WebSocket client's first frames, a reader's end of
        // input) raised no event of its own: read it now.
        self.on_readable(token);
    }

    /// Broadcasts the lines of a `POST /lines` body in room `name`, in order, as from one
    /// sender (a last line without `\n` gets one), and answers with how many; a body with
    /// a line over `--max-line` is refused (413) and none of it is broadcast. A room that
    /// does not exist here (no members) gets nothing, and is not made.
    fn publish_posted_lines(&mut self, token: Token, name: &str, body: &[u8]) {
        let max_line = self.config.max_line;
        let too_long =
            lines_of(body).any(|line| line.strip_suffix(b"\n").unwrap_or(line).len() > max_line);
        if too_long {
            let reason = format!(
                "a line over --max-line ({max_line} bytes): none of the body was broadcast"
            );
            let refusal = http::refusal(http::PAYLOAD_TOO_LARGE, reason);
            return self.refuse_exchange(token, &refusal);
        }
        let room = match self.rooms.is_named() {
            false => Some(ONLY_ROOM),
            true => self.rooms.find(name),
        };
        let mut lines = 0;
        if let Some(id) = room {
            for line in lines_of(body) {
                let whole;
                let line = match line.ends_with(b"\n") {
                    true => line,
                    false => {
                        whole = [line, b"\n"].concat();
                        &whole[..]
                    }
                };
                if self.append_line(id, Sender::Client(token.0), line) {
                    lines += 1;
                }
            }
            self.observe.stats.lines_in += lines as u64;
            self.observe.stats.bytes_in += body.len() as u64;
        }
        let text = match room {
            Some(_) => format!("{lines} lines\n"),
            None => format!("0 lines: room {name} has no members here\n"),
        };
        let response = http::response(
            http::OK,
            "text/plain; charset=utf-8",
            &[],
            text.as_bytes(),
            false,
        );
        self.answer_exchange(token, response);
    }

    /// Sends a member the lines its room's `--history` keeps (everything handed out before
    /// it came in; what comes after reaches it live), within its `--max-queue` like any
    /// output. A reader of `/events` whose last event was `since` gets what it lacks of
    /// them, after a `missed` event if some are gone, and at most half its `--max-queue`
    /// (see [`event_batch::resume_for`]). Returns the bytes replayed.
    pub(super) fn replay_history(&mut self, token: Token, since: Option<&str>) -> usize {
        let Some(connection) = self.connections.member_mut(token) else {
            return 0;
        };
        let Some(broadcast) = connection
            .room()
            .and_then(|id| self.rooms.get(id))
            .map(|room| &room.broadcast)
        else {
            return 0;
        };
        let form = connection.form();
        let resume = match form {
            // A reader that reads is never cut for its replay.
            Form::Events => {
                let history = broadcast.history.as_ref();
                let bound = self.config.max_queue / 2;
                event_batch::resume_for(history, &broadcast.numbers, since, bound)
            }
            _ => Resume::WHOLE,
        };
        let mut frames = Vec::new();
        let (mut slices, lines) = form.replay(broadcast, resume, &mut frames);
        let bytes: usize = slices.iter().map(|slice| slice.len()).sum();
        if bytes == 0 {
            return 0;
        }
        let mut hand_out = HandOut {
            registry: self.poll.registry(),
            max_queue: self.config.max_queue,
            stats: &mut self.observe.stats,
            doomed: &mut self.turn.doomed,
        };
        // Sent even when it holds no line: an `/events` reader's `missed` event alone.
        if hand_out.send(token, connection, &mut slices) {
            hand_out.stats.deliveries += lines as u64;
        }
        self.close_doomed();
        bytes
    }

    /// Retries both listeners when a pause's retry is due; the pause ends if neither
    /// failed again (edge-triggered, a listener would not say again that connections wait
    /// in its backlog, so both are tried before it ends).
    pub(super) fn retry_accepting_if_due(&mut self, now: Instant) {
        if !self.admission.retry_due(now) {
            return;
        }
        self.accept_all(Listener::Lines);
        self.accept_all(Listener::Web);
        let members = self.connections.count(Stage::Member);
        self.admission.end_pause_if_retried(now, members);
    }
}

/// The lines of `body`, each with its `\n` (the last one may lack it), found with `memchr`:
/// a 1 MiB body is scanned twice (for `--max-line`, then to publish it).
fn lines_of(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        Some(line)
    })
}
