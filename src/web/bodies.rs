//! The bodies of `POST /lines` requests while they are read, and the two bounds on them:
//! the bytes all of them hold at once, and the bytes of them published a turn.
//!
//! Each body is read whole before any of its lines is broadcast (all or none), so a body
//! holds memory for as long as its client takes to send it. One bound is per body
//! ([`MAX_POST`]); [`MAX_BODIES_HELD`] bounds them together, whatever `--max-clients` is:
//! a POST that would take more is refused with a 503 (before its `100 Continue`, when its
//! declared length would not fit; or as its bytes come, when others filled the room
//! meanwhile). Bytes are counted as they arrive, not as declared, so a client that
//! declares a megabyte and sends nothing holds nothing. Publishing a body costs a scan
//! and a hand-out of its lines: at most [`PUBLISHED_PER_TURN`] bytes of bodies are
//! published a turn (at least one body), and the rest wait for the next turn, so a
//! thousand uploads that end together do not stall everyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::wire::http::MAX_POST;

/// Most bytes of `POST /lines` bodies held at once, all requests together.
pub const MAX_BODIES_HELD: usize = 64 * MAX_POST;
/// Most bytes of bodies published in one turn (a body larger than what is left of it waits
/// for the next turn, where it goes first).
pub const PUBLISHED_PER_TURN: usize = MAX_POST;

/// Why a body may not be read: the bodies being read hold too much already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodiesFull {
    pub max: usize,
}

/// The bytes every body holds, and what may still be published this turn. The count is
/// shared with each [`Body`], which gives its bytes back when it is dropped, so no path
/// that ends a request can forget them.
#[derive(Debug)]
pub struct BodyBudget {
    held: Arc<AtomicUsize>,
    max: usize,
    /// Bytes of bodies that may still be published this turn.
    to_publish: usize,
}

impl BodyBudget {
    /// A budget of `max` bytes held at once.
    pub fn new(max: usize) -> BodyBudget {
        BodyBudget {
            held: Arc::default(),
            max,
            to_publish: PUBLISHED_PER_TURN,
        }
    }

    /// Bytes the bodies being read hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A body of `length` bytes to be read, if what is held leaves room for it.
    pub fn start(&self, length: usize) -> Result<Body, BodiesFull> {
        if self.held().saturating_add(length) > self.max {
            return Err(BodiesFull { max: self.max });
        }
        Ok(Body {
            bytes: Vec::new(),
            length,
            held: Arc::clone(&self.held),
            max: self.max,
        })
    }

    /// A new turn: its publishing budget is whole again.
    pub fn start_turn(&mut self) {
        self.to_publish = PUBLISHED_PER_TURN;
    }

    /// Whether a body of `length` bytes may be published this turn (then counted): yes if
    /// it fits in what is left, or if it is the turn's first.
    pub fn take_turn_to_publish(&mut self, length: usize) -> bool {
        let first = self.to_publish == PUBLISHED_PER_TURN;
        if !first && length > self.to_publish {
            return false;
        }
        self.to_publish = self.to_publish.saturating_sub(length);
        true
    }
}

/// One body being read: its bytes so far (counted in the shared [`BodyBudget`]) and the
/// length its request declared.
#[derive(Debug)]
pub struct Body {
    bytes: Vec<u8>,
    length: usize,
    held: Arc<AtomicUsize>,
    max: usize,
}

impl Body {
    /// The length its request declared.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Bytes still to come.
    pub fn missing(&self) -> usize {
        self.length - self.bytes.len()
    }

    /// Adds bytes that arrived (at most [`Self::missing`]: the caller reads no more),
    /// counted in the shared budget; refused if the bodies would then hold too much.
    pub fn take(&mut self, bytes: &[u8]) -> Result<(), BodiesFull> {
        debug_assert!(bytes.len() <= self.missing(), "read past the body");
        let held = self.held.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if held > self.max {
            self.held.fetch_sub(bytes.len(), Ordering::Relaxed);
            return Err(BodiesFull { max: self.max });
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// The whole body, no longer counted (it is published at once).
    pub fn into_bytes(mut self) -> Vec<u8> {
        // What is taken is no longer counted; the drop gives back the rest (nothing).
        let bytes = std::mem::take(&mut self.bytes);
        self.held.fetch_sub(bytes.len(), Ordering::Relaxed);
        bytes
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_counted_as_they_arrive_and_given_back_by_every_end() {
        let budget = BodyBudget::new(10);
        let mut a = budget.start(6).expect("room for 6");
        assert_eq!(budget.held(), 0, "a declared length holds nothing");
        a.take(b"abcd").expect("fits");
        assert_eq!((budget.held(), a.missing()), (4, 2));
        let mut b = budget.start(6).expect("4 held + 6 fits in 10");
        assert_eq!(budget.start(7).err(), Some(BodiesFull { max: 10 }));
        b.take(b"efghij").expect("fits exactly");
        assert_eq!(a.take(b"kl"), Err(BodiesFull { max: 10 }), "12 > 10");
        assert_eq!(budget.held(), 10, "a refused take is not counted");
        drop(b);
        assert_eq!(budget.held(), 4, "a dropped body gives its bytes back");
        a.take(b"kl").expect("room again");
        assert_eq!(a.into_bytes(), b"abcdkl");
        assert_eq!(budget.held(), 0, "a published body is no longer counted");
    }

    #[test]
    fn a_turn_publishes_its_budget_and_always_its_first_body() {
        let mut budget = BodyBudget::new(MAX_BODIES_HELD);
        assert!(budget.take_turn_to_publish(PUBLISHED_PER_TURN - 10));
        assert!(budget.take_turn_to_publish(10), "fits exactly");
        assert!(!budget.take_turn_to_publish(1), "spent");
        budget.start_turn();
        assert!(budget.take_turn_to_publish(PUBLISHED_PER_TURN + 1), "first");
        assert!(!budget.take_turn_to_publish(1), "spent by the first");
        assert!(
            budget.take_turn_to_publish(0),
            "an empty body costs nothing"
        );
    }
}
