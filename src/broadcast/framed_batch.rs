//! The batch as WebSocket frames: built once per hand-out, for every WebSocket recipient.
//!
//! Each line becomes one unmasked frame (Text when valid UTF-8, else Binary; its `\n` left
//! off). Encoding the batch once and sharing it is what keeps a WebSocket recipient as cheap
//! as a TCP one: one copy of the batch per hand-out, then one slice per recipient in its
//! `writev` (frame headers interleaved with line slices would cost two iovecs per line per
//! recipient). A sender gets the frames of everyone else's runs, found by mapping its gaps
//! in the batch to the same stretches here. Nothing is built while no WebSocket client is
//! connected.
//!
//! Bound: a line of n bytes becomes at most n + 9 bytes (a 10-byte header, no `\n`), and 2
//! bytes for an empty line, so this buffer holds at most twice the batch's bound.

use std::ops::Range;

use crate::broadcast::batch::{Batch, SenderShare};
use crate::wire::websocket;

/// The frames of one batch, and where each of its runs starts among them.
#[derive(Debug, Default)]
pub struct FramedBatch {
    bytes: Vec<u8>,
    /// (start in the batch, start here) of each run, in order.
    run_starts: Vec<(usize, usize)>,
    /// The batch's length when built: its end maps to `bytes.len()`.
    batch_len: usize,
    built: bool,
}

impl FramedBatch {
    /// Frames `batch` unless this hand-out already did.
    pub fn build(&mut self, batch: &Batch) {
        if self.built {
            return;
        }
        self.built = true;
        self.batch_len = batch.len();
        let whole = batch.whole();
        let mut starts = batch.run_starts().peekable();
        let mut at = 0;
        while at < whole.len() {
            if starts.next_if(|&start| start == at).is_some() {
                self.run_starts.push((at, self.bytes.len()));
            }
            let end = memchr::memchr(b'\n', &whole[at..]).map_or(whole.len(), |i| at + i + 1);
            websocket::encode_line(&whole[at..end], &mut self.bytes);
            at = end;
        }
    }

    /// Every frame: what a WebSocket client that sent none of the batch receives.
    pub fn whole(&self) -> &[u8] {
        &self.bytes
    }

    /// The frames of everyone else's lines, for a WebSocket sender.
    pub fn parts_for<'a>(&'a self, share: &SenderShare<'_>) -> impl Iterator<Item = &'a [u8]> {
        share.gaps().map(|gap| &self.bytes[self.framed(gap)])
    }

    /// Where a stretch of the batch between run boundaries lies among the frames.
    fn framed(&self, gap: Range<usize>) -> Range<usize> {
        self.position(gap.start)..self.position(gap.end)
    }

    fn position(&self, in_batch: usize) -> usize {
        if in_batch >= self.batch_len {
            return self.bytes.len();
        }
        match self
            .run_starts
            .binary_search_by_key(&in_batch, |&(start, _)| start)
        {
            Ok(i) => self.run_starts[i].1,
            // Not a run boundary: cannot happen for a gap; the nearest run before it keeps
            // the frames whole.
            Err(i) => self.run_starts[i.saturating_sub(1)].1,
        }
    }

    /// Forgets the frames (keeping the memory, within its bound) after the hand-out.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.run_starts.clear();
        self.built = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::batch::Sender;
    use std::time::Duration;

    #[test]
    fn a_sender_gets_the_frames_of_everyone_elses_lines() {
        let mut batch = Batch::new(1 << 20, 1 << 16, Duration::ZERO);
        for (sender, bytes) in [
            (1, &b"a1\n"[..]),
            (2, b"b1\n\xff\n"),
            (1, b"a2\n"),
            (3, b"c1\n"),
        ] {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count();
            batch.append(Sender::Client(sender), bytes, lines);
        }
        let mut framed = FramedBatch::default();
        framed.build(&batch);
        let text = |s: &[u8]| [&[0x81, s.len() as u8][..], s].concat();
        assert_eq!(
            framed.whole(),
            [
                text(b"a1"),
                text(b"b1"),
                vec![0x82, 1, 0xff],
                text(b"a2"),
                text(b"c1")
            ]
            .concat()
        );
        batch.index_senders();
        let one = batch
            .senders()
            .find(|s| s.sender() == Sender::Client(1))
            .unwrap();
        let parts: Vec<&[u8]> = framed.parts_for(&one).collect();
        assert_eq!(
            parts,
            [[text(b"b1"), vec![0x82, 1, 0xff]].concat(), text(b"c1")]
        );
        let three = batch
            .senders()
            .find(|s| s.sender() == Sender::Client(3))
            .unwrap();
        assert_eq!(
            framed.parts_for(&three).collect::<Vec<_>>().concat(),
            &framed.whole()[..framed.whole().len() - 4]
        );
        framed.clear();
        assert!(framed.whole().is_empty());
    }
}
