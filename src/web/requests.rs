//! The web listener's HTTP stage: each connection's request is read (with a size limit and
//! a deadline), routed (see [`crate::wire::http`]), and either answered here (a page, an
//! error) and closed, or handed back to the loop as a WebSocket upgrade.
//!
//! This stage knows nothing of the broadcast: it tells the loop which [`Route`](crate::wire::http::Route) a request
//! asked for and the loop decides the answer (the metrics text, a 503 when full, or taking
//! the socket as a WebSocket client). Every connection here has a deadline from its accept:
//! one that has not finished its request (or, after the answer, its close) by then is
//! closed, so slow or silent clients cost a socket and at most `MAX_HEAD` bytes each (a
//! `POST /lines` its body too, within [`crate::web::bodies`]'s bounds), for at most
//! `REQUEST_TIMEOUT`, and never stall anyone: all I/O is non-blocking, on the loop.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace};
use mio::{Interest, Registry, Token};

use crate::admission::access::AddressPlace;
use crate::observe::log_limit::RateLimit;
use crate::transport::Transport;
use crate::web::bodies::{BodiesFull, Body, BodyBudget, MAX_BODIES_HELD, PUBLISHED_PER_TURN};
use crate::wire::http::{
    CONTINUE, HEAD_TOO_LARGE, MAX_HEAD, Refusal, Request, Route, SERVICE_UNAVAILABLE,
    parse_request, refusal, refusal_response,
};

/// How long a web connection may take, from its accept (its TLS handshake included), to
/// send its request and, once answered, to close.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read (and thrown away) from a connection after its answer before it is closed.
const MAX_DISCARDED: usize = 64 * 1024;
/// Most read cost (`Transport::read_metered`) one reading of a request head may spend: a
/// head sent in 1-byte TLS records is read over several turns, not in one.
const HEAD_READ_BUDGET: usize = 64 * 1024;
/// Web connections made members (WebSocket clients, readers of `/lines` and `/events`)
/// a turn: each may cost a history replay framed for it (up to half its `--max-queue` of
/// events), so a burst of joiners is taken a few a turn rather than stalling everyone.
const MEMBERS_PER_TURN: usize = 8;
/// Replayed bytes that cost one more of the turn's places (so that a turn replays about
/// `MEMBERS_PER_TURN` MiB at most, whatever `--history-bytes` and `--max-queue` are).
const REPLAY_BYTES_PER_PLACE: usize = 1024 * 1024;
/// Refused requests logged one by one each second; more in a storm are summed up.
const REFUSALS_LOGGED: u64 = 20;

/// What the web listener's requests did, for the stats line and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HttpCounters {
    /// Requests answered with a page, metrics or health (not upgrades, not refusals).
    pub answered: u64,
    /// Requests refused with a 4xx/5xx status.
    pub refused: u64,
    /// Connections closed for not finishing their request in time.
    pub timed_out: u64,
    /// Bytes the `POST /lines` bodies being read hold now.
    pub post_bytes_held: u64,
}

/// Where an exchange is.
#[derive(Debug)]
enum Stage {
    /// Reading the request head.
    Reading,
    /// Reading the body of `POST /lines` (see [`Route::Publish`]), its request waiting.
    ReadingBody { request: Request, body: Body },
    /// A complete request to become a member, waiting for a turn with room for one more
    /// (see [`MEMBERS_PER_TURN`]).
    Queued { request: Request },
    /// Writing the answer; `written` bytes of it are out.
    Answering { response: Vec<u8>, written: usize },
    /// Answered and shut down for writing: reading (and discarding) until the client closes,
    /// so the close is a FIN that cannot destroy the answer in flight.
    Closing,
}

/// One web connection that has not become a WebSocket client: its request being read,
/// answered, or its close awaited. It is one entry of the loop's connection map;
/// [`WebRequests`] keeps what all of them share.
#[derive(Debug)]
pub struct Exchange {
    transport: Transport,
    peer: SocketAddr,
    /// Its place in its address's count, given back when it is dropped.
    place: AddressPlace,
    head: Vec<u8>,
    stage: Stage,
    /// Bytes read and thrown away after the answer (at most `MAX_DISCARDED`).
    discarded: usize,
}

/// What an exchange came to after an event or an answer.
#[derive(Debug)]
pub enum Progress {
    /// A complete, routed request: the loop answers it, refuses it, or upgrades it.
    Request(Request),
    /// Waiting for the client or the socket: its next event moves it on.
    Waiting,
    /// Its reading stopped at its budget with input unread: no event will say so, so the
    /// loop moves it on in its next turn.
    BudgetSpent,
    /// Over (answered and closed, or the client went): the loop drops it.
    Done,
}

/// What the web listener's exchanges share: the counters, and the rate limit of refusal
/// lines. (Their deadline is the admission's: `REQUEST_TIMEOUT` from the accept, the TLS
/// handshake included.)
#[derive(Debug)]
pub struct WebRequests {
    counters: HttpCounters,
    /// What the `POST /lines` bodies being read hold, and may publish this turn.
    pub bodies: BodyBudget,
    /// Members this turn may still admit (see [`MEMBERS_PER_TURN`]).
    members_left: usize,
    /// Refusals and timeouts are logged at most `REFUSALS_LOGGED` a second, then summed up.
    refusal_log: RateLimit,
}

impl Default for WebRequests {
    fn default() -> Self {
        WebRequests {
            counters: HttpCounters::default(),
            bodies: BodyBudget::new(MAX_BODIES_HELD),
            members_left: MEMBERS_PER_TURN,
            refusal_log: RateLimit::with_burst(REFUSALS_LOGGED),
        }
    }
}

impl WebRequests {
    pub fn counters(&self) -> HttpCounters {
        HttpCounters {
            post_bytes_held: self.bodies.held() as u64,
            ..self.counters
        }
    }

    /// A new turn of the loop: bodies may be published again.
    pub fn start_turn(&mut self) {
        self.bodies.start_turn();
        self.members_left = MEMBERS_PER_TURN;
    }

    /// Counts `bytes` of history just replayed to a new member against the turn's places.
    pub fn charge_replay(&mut self, bytes: usize) {
        self.members_left = self
            .members_left
            .saturating_sub(bytes / REPLAY_BYTES_PER_PLACE);
    }

    /// Whether `request` may go on this turn: one that makes a member takes one of the
    /// turn's places (see [`MEMBERS_PER_TURN`]); any other may.
    fn admits_now(&mut self, request: &Request) -> bool {
        let member = !request.head_only
            && matches!(
                request.route,
                Route::WebSocket { .. } | Route::Lines { .. } | Route::Events { .. }
            );
        if !member {
            return true;
        }
        if self.members_left == 0 {
            return false;
        }
        self.members_left -= 1;
        true
    }

    /// When the rate-limited log owes a summary.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.refusal_log.summary_due_at()
    }

    /// Logs the summary of rate-limited refusals when it is due.
    pub fn log_summary(&mut self, now: Instant) {
        if let Some(more) = self.refusal_log.take_summary(now) {
            info!("http: refused or timed out {more} more requests in the last second");
        }
    }
}

impl Exchange {
    /// A newly accepted connection, already registered (READABLE) and through its TLS
    /// handshake if any. The caller then calls [`Self::on_ready`] at once: TLS may hold the
    /// request's first bytes already.
    pub fn new(transport: Transport, peer: SocketAddr, place: AddressPlace) -> Exchange {
        Exchange {
            transport,
            peer,
            place,
            head: Vec::new(),
            stage: Stage::Reading,
            discarded: 0,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Readiness for this connection. A complete request comes back as
    /// [`Progress::Request`]: the loop must then [`answer`](Self::answer) it,
    /// [`refuse`](Self::refuse) it or take it with [`into_upgrade`](Self::into_upgrade).
    /// Refusals of malformed requests are answered here.
    pub fn on_ready(
        &mut self,
        shared: &mut WebRequests,
        token: Token,
        registry: &Registry,
    ) -> Progress {
        match self.stage {
            Stage::Reading => {
                let head = read_head(self);
                trace!(
                    "token {}: request head {} bytes so far",
                    token.0,
                    self.head.len()
                );
                match head {
                    Head::Complete(request) => self.queue_or_go(request, shared, token),
                    Head::Incomplete => Progress::Waiting,
                    Head::BudgetSpent => Progress::BudgetSpent,
                    Head::Refused(refused) => self.refuse(shared, &refused, token, registry),
                    Head::Gone => Progress::Done,
                }
            }
            Stage::ReadingBody { .. } => self.read_body(shared, token, registry),
            Stage::Queued { .. } => match std::mem::replace(&mut self.stage, Stage::Reading) {
                Stage::Queued { request } => self.queue_or_go(request, shared, token),
                _ => Progress::Done,
            },
            Stage::Answering { .. } => self.write_answer(token, registry),
            Stage::Closing => self.discard_until_closed(),
        }
    }

    /// A complete request, to the loop now, or queued for a later turn if it would make
    /// one member too many this turn.
    fn queue_or_go(
        &mut self,
        request: Request,
        shared: &mut WebRequests,
        token: Token,
    ) -> Progress {
        if shared.admits_now(&request) {
            return Progress::Request(request);
        }
        debug!(
            "token {}: a member too many this turn; it comes in the next",
            token.0
        );
        self.stage = Stage::Queued { request };
        Progress::BudgetSpent
    }

    /// Starts reading the body of a `POST /lines` the loop has accepted (its room is one
    /// this server serves): refused (503) if the bodies being read hold too much already;
    /// else what came with the head is its start (bytes past its length are a request
    /// that is not served, thrown away like anything after an answer), and a client that
    /// expects a `100 Continue` is sent one (a new socket takes its 25 bytes at once, or
    /// the client is gone). The complete request comes back as [`Progress::Request`].
    pub fn start_body(
        &mut self,
        request: Request,
        shared: &mut WebRequests,
        token: Token,
        registry: &Registry,
    ) -> Progress {
        let Route::Publish {
            head_len,
            length,
            expect_continue,
            ..
        } = request.route
        else {
            return Progress::Request(request);
        };
        let mut body = match shared.bodies.start(length) {
            Ok(body) => body,
            Err(full) => return self.refuse(shared, &bodies_full(full), token, registry),
        };
        let start = head_len.min(self.head.len());
        let end = head_len.saturating_add(length).min(self.head.len());
        if let Err(full) = body.take(&self.head[start..end]) {
            return self.refuse(shared, &bodies_full(full), token, registry);
        }
        self.head = Vec::new();
        if body.missing() > 0 && expect_continue {
            let mut written = 0;
            if !matches!(
                write_out(&mut self.transport, CONTINUE, &mut written),
                Ok(true)
            ) {
                return Progress::Done;
            }
        }
        self.stage = Stage::ReadingBody { request, body };
        self.read_body(shared, token, registry)
    }

    /// Reads the body of `POST /lines` (within the read budget of a turn); the whole
    /// request goes to the loop once it is complete and this turn may still publish it
    /// (else it waits for the next). A client that goes before it is done broadcasts
    /// nothing.
    fn read_body(
        &mut self,
        shared: &mut WebRequests,
        token: Token,
        registry: &Registry,
    ) -> Progress {
        let Stage::ReadingBody { body, .. } = &mut self.stage else {
            return Progress::Waiting;
        };
        let mut buf = [0; 16 * 1024];
        let mut spent = 0;
        while body.missing() > 0 {
            if spent >= HEAD_READ_BUDGET {
                return Progress::BudgetSpent;
            }
            let want = body.missing().min(buf.len());
            let (read, cost) = self.transport.read_metered(&mut buf[..want]);
            spent += cost;
            match read {
                Ok(0) => return Progress::Done,
                Ok(n) => {
                    if let Err(full) = body.take(&buf[..n]) {
                        return self.refuse(shared, &bodies_full(full), token, registry);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Done,
            }
        }
        if !shared.bodies.take_turn_to_publish(body.length()) {
            debug!(
                "token {}: its body waits for the next turn (bodies published this turn: \
                 {PUBLISHED_PER_TURN} bytes' worth)",
                token.0
            );
            return Progress::BudgetSpent;
        }
        self.take_complete_body()
            .map_or(Progress::Done, Progress::Request)
    }

    /// The request of a `POST /lines` whose body is all here, the body in it (at shutdown:
    /// one waiting for a turn to publish it, so that it is published rather than dropped).
    pub fn take_complete_body(&mut self) -> Option<Request> {
        let Stage::ReadingBody { body, .. } = &self.stage else {
            return None;
        };
        if body.missing() > 0 {
            return None;
        }
        let Stage::ReadingBody { mut request, body } =
            std::mem::replace(&mut self.stage, Stage::Reading)
        else {
            return None;
        };
        if let Route::Publish { body: read, .. } = &mut request.route {
            *read = Some(body.into_bytes());
        }
        Some(request)
    }

    /// Answers a routed request with `response`; the connection closes after it.
    pub fn answer(
        &mut self,
        shared: &mut WebRequests,
        response: Vec<u8>,
        token: Token,
        registry: &Registry,
    ) -> Progress {
        shared.counters.answered += 1;
        debug!("http: answered {} (token {})", self.peer, token.0);
        self.stage = Stage::Answering {
            response,
            written: 0,
        };
        self.write_answer(token, registry)
    }

    /// Refuses a request with its status and reason, logged (rate-limited).
    pub fn refuse(
        &mut self,
        shared: &mut WebRequests,
        refused: &Refusal,
        token: Token,
        registry: &Registry,
    ) -> Progress {
        shared.counters.refused += 1;
        if shared.refusal_log.admit(Instant::now()) {
            let detail = refused.detail.as_deref().unwrap_or("");
            info!(
                "http: refused {}: {} {}: {} {detail}",
                self.peer, refused.status.0, refused.status.1, refused.reason
            );
        }
        self.stage = Stage::Answering {
            response: refusal_response(refused),
            written: 0,
        };
        self.write_answer(token, registry)
    }

    /// Notes that this exchange's deadline passed (the caller drops it): a client that had
    /// not finished its request is counted and logged (rate-limited).
    pub fn time_out(&mut self, shared: &mut WebRequests, now: Instant) {
        if matches!(self.stage, Stage::Queued { .. }) {
            // Its request was whole: it is told the server is busy (best effort, a new
            // socket takes these bytes), not blamed for being slow.
            shared.counters.refused += 1;
            let busy = refusal(SERVICE_UNAVAILABLE, "too many joining at once: try again");
            let _ = write_out(&mut self.transport, &refusal_response(&busy), &mut 0);
            if shared.refusal_log.admit(now) {
                info!(
                    "http: refused {}: it waited {} s for its turn to join (too many joining)",
                    self.peer,
                    REQUEST_TIMEOUT.as_secs()
                );
            }
            return;
        }
        if matches!(self.stage, Stage::Reading | Stage::ReadingBody { .. }) {
            shared.counters.timed_out += 1;
            if shared.refusal_log.admit(now) {
                info!(
                    "http: closed {}: no complete request within {} s",
                    self.peer,
                    REQUEST_TIMEOUT.as_secs()
                );
            }
        }
    }

    /// The upgraded connection for the loop: its transport (still registered under its
    /// token), peer and address place.
    pub fn into_upgrade(self) -> (Transport, SocketAddr, AddressPlace) {
        (self.transport, self.peer, self.place)
    }

    /// Removes the socket from the poller (it closes when the exchange is dropped).
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(self.transport.tcp_mut());
    }

    /// Writes what is left of the answer (through TLS: until its last record is sent);
    /// once all is out, shuts down our side and waits for the client's close.
    fn write_answer(&mut self, token: Token, registry: &Registry) -> Progress {
        let Stage::Answering { response, written } = &mut self.stage else {
            return Progress::Waiting;
        };
        // All out, then (through TLS) close_notify out too, before the FIN.
        let transport = &mut self.transport;
        let done = write_out(transport, response, written).and_then(|out| {
            if out {
                transport.shutdown_write()
            } else {
                Ok(false)
            }
        });
        match done {
            Ok(true) => {}
            Ok(false) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let tcp = self.transport.tcp_mut();
                return match registry.reregister(tcp, token, interest) {
                    Ok(()) => Progress::Waiting,
                    Err(_) => Progress::Done,
                };
            }
            Err(_) => return Progress::Done,
        }
        self.stage = Stage::Closing;
        self.discard_until_closed()
    }

    /// After the answer: reads and throws away what the client still sends; done once the
    /// client has closed or sent too much.
    fn discard_until_closed(&mut self) -> Progress {
        match read_to_end(self) {
            Some(why) => {
                debug!(
                    "http: {} closed after its answer ({why}), {} bytes after it thrown away",
                    self.peer, self.discarded
                );
                Progress::Done
            }
            None => Progress::Waiting,
        }
    }
}

/// Writes `response` from `written` on: `Ok(true)` once all of it has left (TLS records
/// included), `Ok(false)` when the socket is full.
fn write_out(transport: &mut Transport, response: &[u8], written: &mut usize) -> io::Result<bool> {
    while *written < response.len() {
        match transport.write_vectored(&[IoSlice::new(&response[*written..])]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    transport.flush_tls()
}

/// The `503` for a body the bodies being read leave no room for.
fn bodies_full(BodiesFull { max }: BodiesFull) -> Refusal {
    refusal(
        SERVICE_UNAVAILABLE,
        format!(
            "the POST bodies being read hold {} MiB already: try again in a moment",
            max / (1024 * 1024)
        ),
    )
}

/// What reading a request head came to.
enum Head {
    Complete(Request),
    /// More of it is to come; its next event says when.
    Incomplete,
    /// The read budget was spent with input unread: no event will say so.
    BudgetSpent,
    Refused(Refusal),
    /// The client closed or failed: close quietly.
    Gone,
}

/// Reads what has arrived of the request head, within `HEAD_READ_BUDGET`, and parses it.
fn read_head(pending: &mut Exchange) -> Head {
    let mut buf = [0; 4096];
    let mut spent = 0;
    loop {
        if spent >= HEAD_READ_BUDGET {
            return Head::BudgetSpent;
        }
        // At most one byte past the limit: enough to know the head is too large.
        let want = (MAX_HEAD + 1 - pending.head.len()).min(buf.len());
        let (read, cost) = pending.transport.read_metered(&mut buf[..want]);
        spent += cost;
        match read {
            Ok(0) => return Head::Gone,
            Ok(n) => {
                // Exactly what arrived: a connection here holds at most MAX_HEAD + 1 bytes.
                pending.head.reserve_exact(n);
                pending.head.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Head::Incomplete,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Head::Gone,
        }
        let head = &pending.head[..pending.head.len().min(MAX_HEAD)];
        match parse_request(head) {
            // The head fits (it was parsed from at most MAX_HEAD bytes); a POST's body may
            // follow it in the buffer.
            Ok(Some(request)) => return Head::Complete(request),
            Ok(None) if pending.head.len() <= MAX_HEAD => {}
            Err(refused) if pending.head.len() <= MAX_HEAD => return Head::Refused(refused),
            _ => {
                return Head::Refused(refusal(
                    HEAD_TOO_LARGE,
                    format!("request head over {MAX_HEAD} bytes"),
                ));
            }
        }
    }
}

/// Reads and discards until the client closes, sends too much, or fails (`Some(why)`), or
/// nothing more is there yet (`None`). A client that keeps sending after its answer is
/// closed after `MAX_DISCARDED` bytes, so it cannot keep the loop busy.
fn read_to_end(pending: &mut Exchange) -> Option<&'static str> {
    let mut buf = [0; 4096];
    loop {
        if pending.discarded >= MAX_DISCARDED {
            return Some("it sent too much");
        }
        // Counted by cost: a TLS client's records are judged by their number too.
        let (read, cost) = pending.transport.read_metered(&mut buf);
        pending.discarded += cost;
        match read {
            Ok(0) => return Some("it closed"),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some("a read failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_request() -> Request {
        Request {
            route: Route::Lines {
                room: None,
                chunked: true,
            },
            head_only: false,
        }
    }

    #[test]
    fn a_turn_admits_its_members_and_replays_cost_places() {
        let mut shared = WebRequests::default();
        let page = Request {
            route: Route::Page,
            head_only: false,
        };
        assert!((0..MEMBERS_PER_TURN).all(|_| shared.admits_now(&member_request())));
        assert!(!shared.admits_now(&member_request()), "the turn is full");
        assert!(shared.admits_now(&page), "other requests are not counted");
        shared.start_turn();
        shared.charge_replay(3 * REPLAY_BYTES_PER_PLACE + 1);
        let admitted = (0..MEMBERS_PER_TURN)
            .filter(|_| shared.admits_now(&member_request()))
            .count();
        assert_eq!(
            admitted,
            MEMBERS_PER_TURN - 3,
            "3 MiB replayed cost 3 places"
        );
        shared.charge_replay(usize::MAX);
        assert!(!shared.admits_now(&member_request()));
    }
}
