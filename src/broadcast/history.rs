//! The last lines handed out, kept for late joiners (`--history N`, `--history-bytes`).
//!
//! A byte ring of whole lines, oldest first, and their count: no per-line bookkeeping, so
//! a flood of tiny lines cannot make it outgrow its byte bound. A line is copied in once,
//! when its batch is handed out, and a newcomer's replay is the ring's (at most two)
//! slices, written like any batch. Bounds: at most `max_lines` lines and `max_bytes` bytes
//! (the ring's capacity never passes it); the oldest whole lines leave first (found by the
//! `\n` that ends each). What is kept is always an unbroken run of the most recent lines: a
//! single line longer than `max_bytes` empties the history rather than leave a gap before
//! the lines after it.

use std::collections::VecDeque;

/// Recent lines, bounded in count and bytes.
#[derive(Debug)]
pub struct History {
    max_lines: usize,
    max_bytes: usize,
    /// The lines' bytes, each with its `\n`.
    bytes: VecDeque<u8>,
    /// How many lines `bytes` holds.
    lines: usize,
}

impl History {
    pub fn new(max_lines: usize, max_bytes: usize) -> History {
        History {
            max_lines,
            max_bytes,
            bytes: VecDeque::new(),
            lines: 0,
        }
    }

    /// Lines kept.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Keeps the whole lines of `batch` (complete lines, as handed out), dropping the
    /// oldest ones past the bounds. One scan and one copy of `batch`.
    pub fn keep(&mut self, batch: &[u8]) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', batch) {
            self.keep_line(&batch[start..=end]);
            start = end + 1;
        }
    }

    fn keep_line(&mut self, line: &[u8]) {
        if line.len() > self.max_bytes {
            // It cannot be kept; older lines without it would leave a gap.
            self.bytes.clear();
            self.lines = 0;
            return;
        }
        while self.lines > 0
            && (self.lines >= self.max_lines || self.bytes.len() + line.len() > self.max_bytes)
        {
            self.drop_oldest();
        }
        if self.lines < self.max_lines {
            self.reserve(line.len());
            self.bytes.extend(line);
            self.lines += 1;
        }
    }

    /// Drops the oldest line (up to and including the first `\n`).
    fn drop_oldest(&mut self) {
        let (front, back) = self.bytes.as_slices();
        let end = match memchr::memchr(b'\n', front) {
            Some(at) => at + 1,
            None => memchr::memchr(b'\n', back).map_or(self.bytes.len(), |at| front.len() + at + 1),
        };
        self.bytes.drain(..end);
        self.lines -= 1;
    }

    /// Grows the ring by doubling, but never past `max_bytes`.
    fn reserve(&mut self, more: usize) {
        let needed = self.bytes.len() + more;
        if needed > self.bytes.capacity() {
            let target = (self.bytes.capacity() * 2).clamp(needed, self.max_bytes.max(needed));
            self.bytes.reserve_exact(target - self.bytes.len());
        }
    }

    /// Every kept line, oldest first, as at most two slices (the ring's halves).
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        self.bytes.as_slices()
    }

    /// Every kept line, oldest first, one at a time (each with its `\n`), for a wire that
    /// frames lines one by one.
    pub fn for_each_line(&self, mut each: impl FnMut(&[u8])) {
        let (front, mut back) = self.bytes.as_slices();
        let mut rest = front;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            each(&rest[..=at]);
            rest = &rest[at + 1..];
        }
        if !rest.is_empty() {
            // The one line that wraps around the ring's end.
            let end = memchr::memchr(b'\n', back).map_or(back.len(), |at| at + 1);
            each(&[rest, &back[..end]].concat());
            back = &back[end..];
        }
        while let Some(at) = memchr::memchr(b'\n', back) {
            each(&back[..=at]);
            back = &back[at + 1..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(history: &History) -> Vec<u8> {
        let (front, back) = history.as_slices();
        [front, back].concat()
    }

    #[test]
    fn keeps_the_last_n_whole_lines_within_the_byte_bound() {
        let mut history = History::new(3, 1000);
        history.keep(b"a\nb\n");
        history.keep(b"c\nd\ne\n");
        assert_eq!(kept(&history), b"c\nd\ne\n");
        assert_eq!((history.lines(), history.len()), (3, 6));
        let mut small = History::new(100, 10);
        small.keep(b"1234\n5678\nabcd\n");
        assert_eq!(kept(&small), b"5678\nabcd\n", "the oldest whole line left");
        small.keep(b"01234567890\n");
        assert!(
            small.is_empty(),
            "a line over the bound leaves no gap behind"
        );
        small.keep(b"x\n");
        assert_eq!(kept(&small), b"x\n");
    }

    #[test]
    fn tiny_lines_cost_no_more_than_their_bytes() {
        let mut history = History::new(usize::MAX, 1000);
        for _ in 0..100_000 {
            history.keep(b"\n");
        }
        assert_eq!((history.lines(), history.len()), (1000, 1000));
        assert!(history.bytes.capacity() <= 1000);
    }

    #[test]
    fn the_ring_never_grows_past_its_bound_and_lines_come_back_whole() {
        let mut history = History::new(1_000_000, 100);
        for i in 0..1000 {
            history.keep(format!("line-{i}\n").as_bytes());
            assert!(
                history.bytes.capacity() <= 100,
                "{}",
                history.bytes.capacity()
            );
        }
        let mut lines = Vec::new();
        history.for_each_line(|line| lines.extend_from_slice(line));
        assert_eq!(lines, kept(&history));
        assert!(kept(&history).ends_with(b"line-999\n"));
        assert!(history.len() <= 100);
    }
}
