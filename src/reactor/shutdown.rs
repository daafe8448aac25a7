//! The state of a graceful shutdown: the input that had arrived when the stop signal came,
//! still to be handed out (the finales), and the deadlines of the drain.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use mio::Token;

/// A graceful shutdown in progress: first the input that had already arrived when the stop
/// signal came is framed and handed out, a batch at a time; then every client drains.
#[derive(Debug)]
pub struct Shutdown {
    /// When clients still holding output are reset.
    pub deadline: Instant,
    /// When finales not handed out yet are dropped, leaving the rest of the time to drain.
    pub finales_deadline: Instant,
    /// Clients whose input must still be framed and handed out, in order.
    pub finales: VecDeque<Finale>,
    /// Since when the next batch of finales has waited for a client to make space.
    pub blocked_since: Option<Instant>,
    /// Clients that had no space for a batch for the whole patience: not waited for again
    /// (`--max-queue` judges them).
    pub not_waited_for: HashSet<Token>,
    /// Set once the finales are done and every client was told to drain.
    pub draining: bool,
}

/// One client's input that arrived before the stop signal and is not handed out yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finale {
    pub token: Token,
    /// Bytes still in the kernel that arrived before the signal: read them, no more.
    pub unread: usize,
}
