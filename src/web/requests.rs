//! The web listener's HTTP stage: each connection's request is read (with a size limit and
//! a deadline), routed (see [`crate::wire::http`]), and either answered here (a page, an
//! error) and closed, or handed back to the loop as a WebSocket upgrade.
//!
//! This stage knows nothing of the broadcast: it tells the loop which [`Route`] a request
//! asked for and the loop decides the answer (the metrics text, a 503 when full, or taking
//! the socket as a WebSocket client). Every connection here has a deadline from its accept:
//! one that has not finished its request (or, after the answer, its close) by then is
//! closed, so slow or silent clients cost a socket and at most `MAX_HEAD` bytes each, for at
//! most `REQUEST_TIMEOUT`, and never stall anyone: all I/O is non-blocking, on the loop.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, trace};
use mio::{Interest, Registry, Token};

use crate::admission::access::AddressPlace;
use crate::observe::log_limit::RateLimit;
use crate::reactor::deadlines::Deadlines;
use crate::transport::Transport;
use crate::wire::http::{
    HEAD_TOO_LARGE, MAX_HEAD, Refusal, Request, parse_request, refusal, refusal_response,
};

/// How long a connection may take to send its request (and, once answered, to close).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read (and thrown away) from a connection after its answer before it is closed.
const MAX_DISCARDED: usize = 64 * 1024;
/// Most read cost (`Transport::read_metered`) one reading of a request head may spend: a
/// head sent in 1-byte TLS records is read over several turns, not in one.
const HEAD_READ_BUDGET: usize = 64 * 1024;
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
}

/// Where a connection is.
#[derive(Debug)]
enum Stage {
    /// Reading the request head.
    Reading,
    /// Writing the answer; `written` bytes of it are out.
    Answering { response: Vec<u8>, written: usize },
    /// Answered and shut down for writing: reading (and discarding) until the client closes,
    /// so the close is a FIN that cannot destroy the answer in flight.
    Closing,
}

/// One web connection that has not become a WebSocket client.
#[derive(Debug)]
struct Pending {
    transport: Transport,
    peer: SocketAddr,
    /// Its place in its address's count, given back when it is closed here.
    place: AddressPlace,
    head: Vec<u8>,
    stage: Stage,
    /// Bytes read and thrown away after the answer (at most `MAX_DISCARDED`).
    discarded: usize,
}

/// Web connections being read, answered or closed.
#[derive(Debug)]
pub struct PendingRequests {
    requests: HashMap<Token, Pending>,
    /// Every connection here must be done within `REQUEST_TIMEOUT` of its accept.
    deadlines: Deadlines,
    counters: HttpCounters,
    /// Refusals and timeouts are logged at most `REFUSALS_LOGGED` a second, then summed up.
    refusal_log: RateLimit,
    /// Connections whose head reading spent its budget with input unread: no event will
    /// say so, so the loop moves them on in its next turn.
    unfinished: Vec<Token>,
}

impl Default for PendingRequests {
    fn default() -> Self {
        PendingRequests {
            requests: HashMap::new(),
            deadlines: Deadlines::new(REQUEST_TIMEOUT),
            counters: HttpCounters::default(),
            refusal_log: RateLimit::with_burst(REFUSALS_LOGGED),
            unfinished: Vec::new(),
        }
    }
}

impl PendingRequests {
    /// Connections here now (they count against `--max-clients`).
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn contains(&self, token: Token) -> bool {
        self.requests.contains_key(&token)
    }

    pub fn counters(&self) -> HttpCounters {
        self.counters
    }

    /// The address of a connection here.
    pub fn peer(&self, token: Token) -> Option<SocketAddr> {
        self.requests.get(&token).map(|pending| pending.peer)
    }

    /// Takes a newly accepted connection, already registered (READABLE) under `token` and
    /// through its TLS handshake if any. The caller then calls [`Self::on_ready`] at once:
    /// TLS may hold the request's first bytes already.
    pub fn admit(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        place: AddressPlace,
        token: Token,
    ) {
        let pending = Pending {
            transport,
            peer,
            place,
            head: Vec::new(),
            stage: Stage::Reading,
            discarded: 0,
        };
        self.requests.insert(token, pending);
        let requests = &self.requests;
        self.deadlines
            .start(token, Instant::now(), requests.len(), |t| {
                requests.contains_key(&t)
            });
    }

    /// Readiness for a connection here. Returns the request when one is complete and
    /// routed: the loop must then [`answer`](Self::answer) it, [`refuse`](Self::refuse) it
    /// or [`take_upgrade`](Self::take_upgrade) it. Refusals are answered here.
    pub fn on_ready(&mut self, token: Token, registry: &Registry) -> Option<Request> {
        let pending = self.requests.get_mut(&token)?;
        match pending.stage {
            Stage::Reading => {
                let head = read_head(pending);
                trace!(
                    "token {}: request head {} bytes so far",
                    token.0,
                    pending.head.len()
                );
                match head {
                    Head::Complete(request) => return Some(request),
                    Head::Incomplete => {}
                    Head::Unfinished => self.unfinished.push(token),
                    Head::Refused(refused) => self.refuse(token, &refused, registry),
                    Head::Gone => self.close(token, registry),
                }
                None
            }
            Stage::Answering { .. } => {
                self.write_answer(token, registry);
                None
            }
            Stage::Closing => {
                self.discard_until_closed(token, registry);
                None
            }
        }
    }

    /// Connections whose reading stopped at its budget last turn (see `unfinished`).
    pub fn take_unfinished(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.unfinished)
    }

    pub fn has_unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }

    /// Answers a routed request with `response` and closes the connection after it.
    pub fn answer(&mut self, token: Token, response: Vec<u8>, registry: &Registry) {
        if let Some(pending) = self.requests.get_mut(&token) {
            self.counters.answered += 1;
            debug!("http: answered {} (token {})", pending.peer, token.0);
            pending.stage = Stage::Answering {
                response,
                written: 0,
            };
            self.write_answer(token, registry);
        }
    }

    /// Refuses a request with its status and reason, logged (rate-limited).
    pub fn refuse(&mut self, token: Token, refused: &Refusal, registry: &Registry) {
        let Some(pending) = self.requests.get_mut(&token) else {
            return;
        };
        self.counters.refused += 1;
        if self.refusal_log.admit(Instant::now()) {
            let detail = refused.detail.as_deref().unwrap_or("");
            info!(
                "http: refused {}: {} {}: {} {detail}",
                pending.peer, refused.status.0, refused.status.1, refused.reason
            );
        }
        pending.stage = Stage::Answering {
            response: refusal_response(refused),
            written: 0,
        };
        self.write_answer(token, registry);
    }

    /// Hands an upgraded connection to the loop: its transport (still registered under
    /// `token`), peer and address place.
    pub fn take_upgrade(&mut self, token: Token) -> Option<(Transport, SocketAddr, AddressPlace)> {
        let pending = self.requests.remove(&token)?;
        Some((pending.transport, pending.peer, pending.place))
    }

    /// Closes connections whose deadline passed; a client that had not finished its request
    /// is logged (rate-limited).
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        loop {
            let requests = &self.requests;
            let Some(token) = self
                .deadlines
                .next_expired(now, |t| requests.contains_key(&t))
            else {
                break;
            };
            let Some(pending) = self.requests.get(&token) else {
                continue;
            };
            if matches!(pending.stage, Stage::Reading) {
                self.counters.timed_out += 1;
                if self.refusal_log.admit(now) {
                    info!(
                        "http: closed {}: no complete request within {} s",
                        pending.peer,
                        REQUEST_TIMEOUT.as_secs()
                    );
                }
            }
            self.close(token, registry);
        }
    }

    /// The next deadline, or when the rate-limited log owes a summary.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.deadlines.next(), self.refusal_log.summary_due_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Logs the summary of rate-limited refusals when it is due.
    pub fn log_summary(&mut self, now: Instant) {
        if let Some(more) = self.refusal_log.take_summary(now) {
            info!("http: refused or timed out {more} more requests in the last second");
        }
    }

    /// Closes every connection (at shutdown).
    pub fn close_all(&mut self, registry: &Registry) {
        let tokens: Vec<Token> = self.requests.keys().copied().collect();
        for token in tokens {
            self.close(token, registry);
        }
        self.deadlines.clear();
    }

    /// Writes what is left of the answer (through TLS: until its last record is sent);
    /// once all is out, shuts down our side and waits for the client's close.
    fn write_answer(&mut self, token: Token, registry: &Registry) {
        let Some(pending) = self.requests.get_mut(&token) else {
            return;
        };
        let Stage::Answering { response, written } = &mut pending.stage else {
            return;
        };
        // All out, then (through TLS) close_notify out too, before the FIN.
        let done = write_out(&mut pending.transport, response, written).and_then(|out| {
            if out {
                pending.transport.shutdown_write()
            } else {
                Ok(false)
            }
        });
        match done {
            Ok(true) => {}
            Ok(false) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let tcp = pending.transport.tcp_mut();
                if registry.reregister(tcp, token, interest).is_err() {
                    self.close(token, registry);
                }
                return;
            }
            Err(_) => return self.close(token, registry),
        }
        pending.stage = Stage::Closing;
        self.discard_until_closed(token, registry);
    }

    /// After the answer: reads and throws away what the client still sends, and closes the
    /// connection once the client has closed or sent too much.
    fn discard_until_closed(&mut self, token: Token, registry: &Registry) {
        let Some(pending) = self.requests.get_mut(&token) else {
            return;
        };
        if let Some(why) = read_to_end(pending) {
            debug!(
                "http: {} closed after its answer ({why}), {} bytes after it thrown away",
                pending.peer, pending.discarded
            );
            self.close(token, registry);
        }
    }

    fn close(&mut self, token: Token, registry: &Registry) {
        if let Some(mut pending) = self.requests.remove(&token) {
            let _ = registry.deregister(pending.transport.tcp_mut());
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

/// What reading a request head came to.
enum Head {
    Complete(Request),
    /// More of it is to come; its next event says when.
    Incomplete,
    /// The read budget was spent with input unread: no event will say so.
    Unfinished,
    Refused(Refusal),
    /// The client closed or failed: close quietly.
    Gone,
}

/// Reads what has arrived of the request head, within `HEAD_READ_BUDGET`, and parses it.
fn read_head(pending: &mut Pending) -> Head {
    let mut buf = [0; 4096];
    let mut spent = 0;
    loop {
        if spent >= HEAD_READ_BUDGET {
            return Head::Unfinished;
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
            Ok(Some(request)) if pending.head.len() <= MAX_HEAD => return Head::Complete(request),
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
fn read_to_end(pending: &mut Pending) -> Option<&'static str> {
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
