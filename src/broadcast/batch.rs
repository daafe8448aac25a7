//! The lines framed since the last hand-out, waiting to be sent to everyone, and when they
//! are due.
//!
//! Collecting them first and handing them out once is what makes fan-out cheap: a client that
//! sent nothing receives the whole batch as one slice (one `write` per hand-out, however many
//! senders spoke), and a client that did send gets the stretches between its own runs, so
//! at most its runs + 1 slices. Nothing is copied per recipient.

use std::ops::Range;
use std::time::{Duration, Instant};

/// Who sent a stretch of the batch. The batch knows no sockets: the loop names its clients
/// by their own numbers (it uses their poll tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    /// A client of this server.
    Client(usize),
    /// Another instance, through NATS: its lines go to every client here.
    Remote,
}

/// A stretch of the batch sent by one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    sender: Sender,
    start: usize,
    end: usize,
    lines: usize,
}

/// Complete lines in arrival order, tagged with who sent them, with a hard size bound.
#[derive(Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    lines: usize,
    /// Indices into `runs`, grouped by sender (in order within a sender); rebuilt by
    /// [`Batch::index_senders`] before each hand-out.
    by_sender: Vec<usize>,
    /// Hand the batch out before a read could take it past this many bytes.
    limit: usize,
    /// What `bytes` may ever hold: `limit` plus one full line and its newline (the most a
    /// read can complete beyond `limit` with a unfinished line carried in).
    capacity_bound: usize,
    hold: AdaptiveHold,
}

impl Batch {
    /// A batch handed out at `limit` bytes, for lines of at most `max_line` bytes, held for
    /// at most `max_hold` (see [`Batch::due_at`]).
    pub fn new(limit: usize, max_line: usize, max_hold: Duration) -> Batch {
        Batch {
            bytes: Vec::new(),
            runs: Vec::new(),
            lines: 0,
            by_sender: Vec::new(),
            limit,
            capacity_bound: limit.saturating_add(max_line).saturating_add(1),
            hold: AdaptiveHold::new(max_hold),
        }
    }

    /// The byte count at which the batch must be handed out.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many bytes a read may take before the batch must be handed out (0: now).
    pub fn free_space(&self) -> usize {
        self.limit.saturating_sub(self.bytes.len())
    }

    /// The buffer to append complete lines to, with capacity for `incoming` more bytes, grown
    /// by doubling but never past the batch's bound; call [`Batch::record`] afterwards.
    pub fn bytes_for(&mut self, incoming: usize) -> &mut Vec<u8> {
        let needed = self.bytes.len() + incoming;
        if needed > self.bytes.capacity() {
            let target = needed.max((self.bytes.capacity() * 2).min(self.capacity_bound));
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        &mut self.bytes
    }

    /// Total bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Lines waiting, from every sender.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Every byte of the batch: what a client that sent none of it receives.
    pub fn whole(&self) -> &[u8] {
        &self.bytes
    }

    /// Appends `bytes` (`lines` complete lines) from `sender`: [`Batch::bytes_for`] and
    /// [`Batch::record`] in one, for lines that are already whole elsewhere.
    pub fn append(&mut self, sender: Sender, bytes: &[u8], lines: usize) {
        let start = self.bytes.len();
        self.bytes_for(bytes.len()).extend_from_slice(bytes);
        self.record(sender, start, lines);
    }

    /// Takes back everything after `start` that was appended but not yet recorded (see
    /// [`Batch::bytes_for`]): lines that turned out to need a closer look.
    pub fn take_unrecorded(&mut self, start: usize) -> Vec<u8> {
        debug_assert!(self.runs.last().is_none_or(|run| run.end <= start));
        self.bytes.split_off(start.min(self.bytes.len()))
    }

    /// Notes that `sender` appended everything after `start` (`lines` lines). Consecutive
    /// appends by one sender merge into one run.
    pub fn record(&mut self, sender: Sender, start: usize, lines: usize) {
        let end = self.bytes.len();
        if end == start {
            return;
        }
        self.lines += lines;
        match self.runs.last_mut() {
            Some(run) if run.sender == sender && run.end == start => {
                run.end = end;
                run.lines += lines;
            }
            _ => self.runs.push(Run {
                sender,
                start,
                end,
                lines,
            }),
        }
    }

    /// Where each run starts, in order: the first is 0, and each run ends where the next
    /// starts (the last at [`Batch::len`]).
    pub fn run_starts(&self) -> impl Iterator<Item = usize> + '_ {
        self.runs.iter().map(|run| run.start)
    }

    /// Groups the runs by sender, for [`Batch::senders`]. O(R log R) for R runs, once per
    /// hand-out; R is the number of (sender, read) pairs, not of lines.
    pub fn index_senders(&mut self) {
        self.by_sender.clear();
        self.by_sender.extend(0..self.runs.len());
        let runs = &self.runs;
        self.by_sender
            .sort_unstable_by_key(|&i| (runs[i].sender, i));
    }

    /// Every client with lines in the batch, with what it should receive of the others'.
    /// Call [`Batch::index_senders`] first.
    pub fn senders(&self) -> impl Iterator<Item = SenderShare<'_>> {
        self.by_sender
            .chunk_by(|&a, &b| self.runs[a].sender == self.runs[b].sender)
            .map(|own| SenderShare { batch: self, own })
    }

    /// When this batch should be handed out, given that it is `now`; `None` when empty. A
    /// full batch is due at once.
    pub fn due_at(&mut self, now: Instant) -> Option<Instant> {
        if self.is_empty() {
            return None;
        }
        let due = self.hold.due_at(now);
        Some(if self.free_space() == 0 { now } else { due })
    }

    /// Empties the batch after it was handed out at `now`. Its memory is kept: it never
    /// exceeds the batch's bound.
    pub fn clear(&mut self, now: Instant) {
        self.hold.sent(now);
        self.runs.clear();
        self.by_sender.clear();
        self.bytes.clear();
        self.lines = 0;
    }
}

/// One sender's view of the batch: everything but its own runs.
pub struct SenderShare<'a> {
    batch: &'a Batch,
    /// Indices of the sender's runs, in order.
    own: &'a [usize],
}

impl<'a> SenderShare<'a> {
    pub fn sender(&self) -> Sender {
        self.batch.runs[self.own[0]].sender
    }

    /// Lines the sender receives: everyone else's.
    pub fn lines_for_sender(&self) -> usize {
        let own: usize = self.own.iter().map(|&i| self.batch.runs[i].lines).sum();
        self.batch.lines - own
    }

    /// The stretches between the sender's own runs: others' adjacent runs come as one slice,
    /// so there are at most (own runs + 1) of them.
    pub fn parts(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let bytes = &self.batch.bytes;
        self.gaps().map(move |gap| &bytes[gap])
    }

    /// Where [`SenderShare::parts`] lie in the batch: each starts at 0 or a run's end and
    /// ends at a run's start or the batch's end.
    pub fn gaps(&self) -> impl Iterator<Item = Range<usize>> + use<'a> {
        let batch = self.batch;
        let end = batch.bytes.len();
        self.own
            .iter()
            .map(|&i| (batch.runs[i].start, batch.runs[i].end))
            .chain(std::iter::once((end, end)))
            .scan(0, |from, (start, end)| {
                let gap: Range<usize> = *from..start;
                *from = end;
                Some(gap)
            })
            .filter(|gap| !gap.is_empty())
    }
}

/// How long a batch may wait for more lines: nothing for a line after a quiet spell, longer
/// (doubling up to a maximum) while batches keep arriving back to back.
///
/// Every hand-out costs one write per client, so under load holding lines a little and
/// sending several per write is what keeps the cost per delivery low; a lone line gains
/// nothing from waiting and leaves at once.
#[derive(Debug)]
struct AdaptiveHold {
    max: Duration,
    /// The hold in force: from `max / 4` up to `max`.
    current: Duration,
    /// When the previous batch was handed out.
    last_sent: Instant,
    /// When this batch was first seen waiting (once per batch: the hold adapts then).
    started: Option<Instant>,
}

impl AdaptiveHold {
    fn new(max: Duration) -> AdaptiveHold {
        AdaptiveHold {
            max,
            current: max / 4,
            last_sent: Instant::now(),
            started: None,
        }
    }

    /// When the waiting batch is due: one hold after the previous hand-out. The hold resets
    /// when the batch started after a quiet spell (at least the hold in force since the last
    /// hand-out, so the batch is due at once), and doubles, up to `max`, when it started
    /// sooner.
    fn due_at(&mut self, now: Instant) -> Instant {
        if self.started.is_none() {
            self.started = Some(now);
            let quiet = now.saturating_duration_since(self.last_sent);
            self.current = if quiet >= self.current {
                self.max / 4
            } else {
                (self.current * 2).min(self.max)
            };
        }
        self.last_sent + self.current
    }

    fn sent(&mut self, now: Instant) {
        self.last_sent = now;
        self.started = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(batch: &mut Batch, sender: usize, bytes: &[u8]) {
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        batch.append(Sender::Client(sender), bytes, lines);
    }

    fn batch() -> Batch {
        Batch::new(1 << 20, 1 << 16, Duration::from_millis(1))
    }

    /// (sender, its lines, what it receives) for every sender.
    fn shares(batch: &mut Batch) -> Vec<(usize, usize, Vec<Vec<u8>>)> {
        batch.index_senders();
        batch
            .senders()
            .map(|s| {
                let parts = s.parts().map(<[u8]>::to_vec).collect();
                let Sender::Client(sender) = s.sender() else {
                    unreachable!("the tests record clients only")
                };
                (sender, s.lines_for_sender(), parts)
            })
            .collect()
    }

    #[test]
    fn each_sender_gets_everyone_elses_lines_in_order_and_others_get_all() {
        let mut batch = batch();
        append(&mut batch, 1, b"a1\n");
        append(&mut batch, 2, b"b1\n");
        append(&mut batch, 1, b"a2\na3\n");
        assert_eq!(batch.whole(), b"a1\nb1\na2\na3\n");
        assert_eq!(batch.lines(), 4);
        assert_eq!(
            shares(&mut batch),
            vec![
                (1, 1, vec![b"b1\n".to_vec()]),
                (2, 3, vec![b"a1\n".to_vec(), b"a2\na3\n".to_vec()]),
            ]
        );
    }

    #[test]
    fn other_senders_runs_next_to_each_other_come_as_one_slice() {
        let mut batch = batch();
        for sender in [1, 2, 3, 4, 5, 3, 6, 7] {
            append(&mut batch, sender, format!("from {sender}\n").as_bytes());
        }
        let shares = shares(&mut batch);
        let three = shares.iter().find(|s| s.0 == 3).unwrap();
        assert_eq!(three.1, 6);
        assert_eq!(
            three.2,
            vec![
                b"from 1\nfrom 2\n".to_vec(),
                b"from 4\nfrom 5\n".to_vec(),
                b"from 6\nfrom 7\n".to_vec()
            ]
        );
        let one = shares.iter().find(|s| s.0 == 1).unwrap();
        assert_eq!(
            one.2.len(),
            1,
            "a sender's first run leaves one slice after it"
        );
    }

    #[test]
    fn consecutive_appends_by_one_sender_share_a_run() {
        let mut batch = batch();
        append(&mut batch, 1, b"a\n");
        append(&mut batch, 1, b"b\n");
        append(&mut batch, 1, b"");
        append(&mut batch, 2, b"c\n");
        let shares = shares(&mut batch);
        assert_eq!(shares[1], (2, 2, vec![b"a\nb\n".to_vec()]));
        batch.clear(Instant::now());
        assert!(batch.is_empty());
        assert_eq!(batch.lines(), 0);
        batch.index_senders();
        assert_eq!(batch.senders().count(), 0);
    }

    #[test]
    fn the_buffer_never_grows_past_the_limit_plus_one_line() {
        let mut batch = Batch::new(1000, 100, Duration::ZERO);
        while batch.free_space() > 0 {
            let take = batch.free_space().min(64);
            append(&mut batch, 1, &vec![b'x'; take]);
        }
        append(&mut batch, 2, &[b'y'; 101]);
        assert!(batch.bytes.capacity() <= 1101, "{}", batch.bytes.capacity());
    }

    #[test]
    fn a_lone_line_is_due_at_once_and_a_busy_stream_is_held_longer_up_to_the_maximum() {
        let max = Duration::from_millis(1);
        let mut hold = AdaptiveHold::new(max);
        let t0 = Instant::now() + Duration::from_secs(1); // long after the "previous" send
        assert_eq!(hold.due_at(t0), hold.last_sent + max / 4);
        assert!(hold.due_at(t0) <= t0, "after a quiet spell: due at once");
        hold.sent(t0);
        // Batches starting right after each hand-out: the hold doubles, then stays at max.
        let mut now = t0;
        for expected in [max / 2, max, max, max] {
            now += Duration::from_micros(10);
            assert_eq!(hold.due_at(now), hold.last_sent + expected);
            now = hold.due_at(now);
            hold.sent(now);
        }
        // A quiet spell longer than the hold: back to the start, and due at once.
        now += max + Duration::from_micros(1);
        assert!(hold.due_at(now) <= now);
        assert_eq!(hold.current, max / 4);
    }

    #[test]
    fn no_hold_means_every_batch_is_due_at_once() {
        let mut batch = Batch::new(1000, 10, Duration::ZERO);
        let now = Instant::now();
        assert_eq!(batch.due_at(now), None, "nothing to send");
        append(&mut batch, 1, b"a\n");
        assert!(batch.due_at(now).unwrap() <= now);
    }
}
