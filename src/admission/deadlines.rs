//! Connections that must finish something by a deadline (become a member through their TLS
//! handshake, or finish their web exchange), in the order they started: every deadline is start + the same timeout, so the front of the
//! queue always expires first. Entries of connections that finished early stay until the
//! front reaches them (skipped then), and are swept when they outnumber the live ones.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mio::Token;

/// (deadline, token) pairs in start order.
#[derive(Debug)]
pub struct Deadlines {
    timeout: Duration,
    queue: VecDeque<(Instant, Token)>,
}

impl Deadlines {
    pub fn new(timeout: Duration) -> Deadlines {
        Deadlines {
            timeout,
            queue: VecDeque::new(),
        }
    }

    /// Starts `token`'s clock at `now`; `live` says which tokens are still waiting (for the
    /// occasional sweep of finished ones, so the queue stays proportional to them). The
    /// sweep never drops `token` itself: its connection may not be where `live` looks yet.
    pub fn start(
        &mut self,
        token: Token,
        now: Instant,
        live_count: usize,
        live: impl Fn(Token) -> bool,
    ) {
        self.queue.push_back((now + self.timeout, token));
        if self.queue.len() > 2 * live_count + 1024 {
            self.queue
                .retain(|&(_, waiting)| waiting == token || live(waiting));
        }
    }

    /// The next token whose deadline passed by `now` and is still `live` (finished ones are
    /// dropped on the way).
    pub fn next_expired(&mut self, now: Instant, live: impl Fn(Token) -> bool) -> Option<Token> {
        while let Some(&(deadline, token)) = self.queue.front() {
            if !live(token) {
                self.queue.pop_front();
                continue;
            }
            if deadline > now {
                return None;
            }
            self.queue.pop_front();
            return Some(token);
        }
        None
    }

    /// The nearest deadline (exact after `next_expired` returned `None`; an entry of a
    /// connection that finished since then only makes a wake-up early).
    pub fn next(&self) -> Option<Instant> {
        self.queue.front().map(|&(deadline, _)| deadline)
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_live_tokens_come_out_in_order_and_finished_ones_are_skipped() {
        let mut deadlines = Deadlines::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..3 {
            deadlines.start(Token(i), t0 + Duration::from_secs(i as u64), 3, |_| true);
        }
        let live = |token: Token| token != Token(0);
        assert_eq!(
            deadlines.next_expired(t0 + Duration::from_secs(5), live),
            None
        );
        assert_eq!(deadlines.next(), Some(t0 + Duration::from_secs(11)));
        let late = t0 + Duration::from_secs(12);
        assert_eq!(deadlines.next_expired(late, live), Some(Token(1)));
        assert_eq!(deadlines.next_expired(late, live), Some(Token(2)));
        assert_eq!(deadlines.next_expired(late, live), None);
    }

    #[test]
    fn the_token_being_started_survives_the_sweep_it_causes() {
        let mut deadlines = Deadlines::new(Duration::from_secs(10));
        let now = Instant::now();
        for i in 0..1024 {
            deadlines.start(Token(i), now, 0, |_| false);
        }
        assert_eq!(deadlines.queue.len(), 1024, "no sweep yet");
        // This start sweeps; its connection is not "live" yet (not yet in the loop's map).
        deadlines.start(Token(5000), now, 0, |_| false);
        assert_eq!(deadlines.queue.len(), 1, "the finished ones are swept");
        let later = now + Duration::from_secs(11);
        assert_eq!(
            deadlines.next_expired(later, |t| t == Token(5000)),
            Some(Token(5000))
        );
    }

    #[test]
    fn finished_entries_are_swept_when_they_pile_up() {
        let mut deadlines = Deadlines::new(Duration::from_secs(10));
        let now = Instant::now();
        for i in 0..5000 {
            deadlines.start(Token(i), now, 1, |token| token == Token(i));
        }
        assert!(deadlines.queue.len() <= 1030, "{}", deadlines.queue.len());
    }
}
