//! Who gets in: `--allow`/`--deny` rules, the per-address places, the descriptor limit.

pub mod access;
pub mod deadlines;
pub mod fd_limit;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::observe::log_limit::RateLimit;
use access::{AddressPlace, PerAddress};
use deadlines::Deadlines;

/// Most connections taken per turn, so that a connection storm cannot stall the clients
/// already connected; the rest wait in the backlog for the next turn.
pub const ACCEPT_BUDGET: usize = 64;

/// How long to wait before accepting again after running out of descriptors (the listener
/// will not signal again for connections already queued).
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Denials and per-address refusals logged one by one each second; more are summed up.
const ACCESS_LINES_LOGGED: u64 = 20;

/// Admission's state: per-address places (`--max-clients-per-ip`), this turn's accept
/// budget, a pause after running out of descriptors, and the rate limits of the lines
/// that refusals and accept failures log.
pub struct Admission {
    /// Connections per address in every stage (handshakes, requests, clients), for
    /// `--max-clients-per-ip`.
    pub per_address: PerAddress,
    /// Set while accepting is paused after running out of descriptors.
    pub pause: Option<AcceptPause>,
    /// Accepts left in this turn (both listeners share it).
    pub budget: usize,
    /// Accept failures: a line a second, then summed.
    pub failure_log: RateLimit,
    /// Connections denied or refused by address: 20 lines a second, then summed.
    pub access_log: RateLimit,
    /// Refusals of a full server: a line a second, then summed.
    pub refusal_log: RateLimit,
    /// Connections that are not members yet (in their TLS handshake, or a web exchange):
    /// each must be done within the admission timeout of its accept.
    pub deadlines: Deadlines,
}

/// Accepting paused after running out of descriptors.
pub struct AcceptPause {
    /// When to try again (sooner if a client leaves).
    pub retry_at: Instant,
    /// Whether the pause was logged: then so is its end, however soon, so that every
    /// "cannot accept" line an operator sees is followed by "accepting again".
    pub announced: bool,
}

impl Admission {
    /// Admission for `--max-clients-per-ip` (0: no limit); a connection that is not a
    /// member must be done within `timeout` of its accept.
    pub fn new(max_clients_per_ip: usize, timeout: Duration) -> Admission {
        Admission {
            per_address: PerAddress::new(max_clients_per_ip),
            pause: None,
            budget: ACCEPT_BUDGET,
            failure_log: RateLimit::default(),
            access_log: RateLimit::with_burst(ACCESS_LINES_LOGGED),
            refusal_log: RateLimit::default(),
            deadlines: Deadlines::new(timeout),
        }
    }

    /// A new turn: a fresh accept budget.
    pub fn start_turn(&mut self) {
        self.budget = ACCEPT_BUDGET;
    }

    /// A descriptor just came free (a client left): a paused accept tries again now.
    pub fn descriptor_freed(&mut self) {
        if let Some(pause) = &mut self.pause {
            pause.retry_at = Instant::now();
        }
    }

    /// When admission next needs the loop: a connection's deadline, the accept retry, or a
    /// summary of its logs.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.deadlines.next(),
            self.pause.as_ref().map(|pause| pause.retry_at),
            self.refusal_log.summary_due_at(),
            self.access_log.summary_due_at(),
            self.failure_log.summary_due_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Logs the summaries of refusals, denials and accept failures that are due (a server
    /// full at `max_clients`).
    pub fn log_summaries(&mut self, now: Instant, max_clients: usize) {
        if let Some(count) = self.refusal_log.take_summary(now) {
            info!(
                "refused {count} more connections in the last second: server full \
                 (--max-clients {max_clients}: clients, TLS handshakes or web requests in \
                 progress)"
            );
        }
        if let Some(count) = self.access_log.take_summary(now) {
            info!("denied or refused {count} more connections by their address in the last second");
        }
        if let Some(count) = self.failure_log.take_summary(now) {
            match &mut self.pause {
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
    }

    /// A place for one more connection from `peer`'s address, or why not (logged,
    /// rate-limited; the caller counts the refusal).
    pub fn take_place(&mut self, peer: SocketAddr) -> Result<AddressPlace, String> {
        if let Some(place) = self.per_address.try_take(peer.ip()) {
            return Ok(place);
        }
        let why = format!(
            "too many connections from {} (max {})",
            peer.ip(),
            self.per_address.max()
        );
        if self.access_log.admit(Instant::now()) {
            info!("refused {peer}: {why}");
        }
        Err(why)
    }

    /// Logs (rate-limited) a connection `--allow`/`--deny` closed at once.
    pub fn log_denied(&mut self, peer: SocketAddr) {
        if self.access_log.admit(Instant::now()) {
            info!("denied {peer}: its address is not allowed (--allow/--deny)");
        }
    }

    /// Pauses accepting after `error` (out of descriptors or kernel memory: the connection
    /// stays in the backlog, and retrying at once would spin): a retry after
    /// `ACCEPT_RETRY`, or sooner if a client leaves. `members` is logged with the first
    /// failure (one pause and its end logged a second at most, if it flaps).
    pub fn pause(&mut self, error: &io::Error, members: usize) {
        let now = Instant::now();
        let retry_at = now + ACCEPT_RETRY;
        if let Some(pause) = &mut self.pause {
            debug!("accept still failing: {error}");
            pause.retry_at = retry_at;
            return;
        }
        let announced = self.failure_log.admit(now);
        if announced {
            warn!(
                "cannot accept new clients: {error} ({members} clients connected); retrying \
                 every {} ms",
                ACCEPT_RETRY.as_millis()
            );
        }
        self.pause = Some(AcceptPause {
            retry_at,
            announced,
        });
    }

    /// Whether a pause's retry is due at `now`.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.pause
            .as_ref()
            .is_some_and(|pause| pause.retry_at <= now)
    }

    /// After a retry at `now`: the pause ends unless the retry failed again (which moved its
    /// next retry past `now`); its end is logged if its start was (`members` connected).
    pub fn end_pause_if_retried(&mut self, now: Instant, members: usize) {
        if let Some(pause) = self.pause.take_if(|pause| pause.retry_at <= now)
            && pause.announced
        {
            info!("accepting again ({members} clients)");
        }
    }
}
