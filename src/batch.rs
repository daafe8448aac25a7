//! The lines framed during one turn of the event loop, waiting to be sent to everyone.
//!
//! Collecting them first and distributing once per turn is what makes fan-out cheap: each
//! recipient gets one `writev` per turn covering every line from every sender, straight from
//! this one shared buffer. A recipient's own lines are left out simply by skipping its runs.

use std::time::{Duration, Instant};

use mio::Token;

/// A stretch of the batch sent by one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    sender: Token,
    /// End offset in `Batch::bytes` (the run starts where the previous one ended).
    end: usize,
    lines: usize,
}

/// Complete lines in arrival order, tagged with who sent them.
#[derive(Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    /// When the previous batch was handed out.
    last_sent: Instant,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            bytes: Vec::new(),
            runs: Vec::new(),
            last_sent: Instant::now(),
        }
    }
}

impl Batch {
    /// The buffer to append complete lines to; call [`Batch::record`] afterwards.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Total bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Notes that `sender` appended everything after `start` (`lines` lines). Consecutive
    /// appends by one sender merge into one run, so a busy sender costs one iovec per turn.
    pub fn record(&mut self, sender: Token, start: usize, lines: usize) {
        let end = self.bytes.len();
        if end == start {
            return;
        }
        match self.runs.last_mut() {
            Some(run) if run.sender == sender && run.end == start => {
                run.end = end;
                run.lines += lines;
            }
            _ => self.runs.push(Run { sender, end, lines }),
        }
    }

    /// The byte ranges `recipient` should receive: every run, or with `echo` off every run
    /// but its own.
    pub fn parts_for(
        &self,
        recipient: Token,
        echo: bool,
    ) -> impl Iterator<Item = &[u8]> + Clone + '_ {
        self.runs
            .iter()
            .scan(0, |start, run| {
                let range = *start..run.end;
                *start = run.end;
                Some((run.sender, range))
            })
            .filter(move |(sender, _)| echo || *sender != recipient)
            .map(|(_, range)| &self.bytes[range])
    }

    /// How many lines `recipient` receives (see [`Batch::parts_for`]).
    pub fn lines_for(&self, recipient: Token, echo: bool) -> usize {
        self.runs
            .iter()
            .filter(|run| echo || run.sender != recipient)
            .map(|run| run.lines)
            .sum()
    }

    /// When this batch should be handed out, given the coalescing `window`: at once if the
    /// previous batch left at least `window` ago (a lone line never waits), else when the
    /// window since then closes. A busy server thus writes to each client at most once per
    /// window, every write carrying all the lines gathered meanwhile: far fewer syscalls and
    /// TCP segments per line, for at most `window` of added latency. With a zero window every
    /// turn sends.
    pub fn due_at(&self, window: Duration) -> Option<Instant> {
        (!self.is_empty()).then(|| self.last_sent + window)
    }

    /// Empties the batch after it was handed out at `now`, keeping its memory for the next
    /// turn unless a burst made it large.
    pub fn clear(&mut self, now: Instant) {
        const KEEP_CAPACITY: usize = 1 << 20;
        self.last_sent = now;
        self.runs.clear();
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(batch: &mut Batch, sender: usize, bytes: &[u8]) {
        let start = batch.len();
        batch.bytes_mut().extend_from_slice(bytes);
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        batch.record(Token(sender), start, lines);
    }

    #[test]
    fn a_batch_is_due_one_window_after_the_previous_one_left() {
        let mut batch = Batch::default();
        let window = Duration::from_micros(500);
        assert_eq!(batch.due_at(window), None, "nothing to send");
        let sent = Instant::now();
        batch.clear(sent);
        append(&mut batch, 1, b"a\n");
        assert_eq!(batch.due_at(window), Some(sent + window));
        assert_eq!(
            batch.due_at(Duration::ZERO),
            Some(sent),
            "no window: due at once"
        );
    }

    fn received(batch: &Batch, recipient: usize, echo: bool) -> Vec<u8> {
        batch
            .parts_for(Token(recipient), echo)
            .flatten()
            .copied()
            .collect()
    }

    #[test]
    fn each_recipient_gets_everyone_elses_lines_in_order() {
        let mut batch = Batch::default();
        append(&mut batch, 1, b"a1\n");
        append(&mut batch, 2, b"b1\n");
        append(&mut batch, 1, b"a2\na3\n");
        assert_eq!(received(&batch, 1, false), b"b1\n");
        assert_eq!(received(&batch, 2, false), b"a1\na2\na3\n");
        assert_eq!(received(&batch, 3, false), b"a1\nb1\na2\na3\n");
        assert_eq!(received(&batch, 1, true), b"a1\nb1\na2\na3\n");
        assert_eq!(batch.lines_for(Token(1), false), 1);
        assert_eq!(batch.lines_for(Token(2), false), 3);
        assert_eq!(batch.lines_for(Token(2), true), 4);
    }

    #[test]
    fn consecutive_appends_by_one_sender_share_a_run() {
        let mut batch = Batch::default();
        append(&mut batch, 1, b"a\n");
        append(&mut batch, 1, b"b\n");
        append(&mut batch, 1, b"");
        assert_eq!(batch.parts_for(Token(2), false).count(), 1);
        assert_eq!(batch.lines_for(Token(2), false), 2);
        batch.clear(Instant::now());
        assert!(batch.is_empty());
        assert_eq!(batch.parts_for(Token(2), false).count(), 0);
    }
}
