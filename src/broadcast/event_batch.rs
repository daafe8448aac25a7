//! The batch as Server-Sent Events: built once per hand-out, for every `/events` reader,
//! each line an event numbered in its room's stream (see [`crate::wire::sse`]).
//!
//! Like the WebSocket framing, it is built only when a reader takes it, and shared: a
//! reader's `writev` is one slice of it. Readers send no lines, so no reader ever needs a
//! sender's share of it. Bound: a line of n bytes becomes at most
//! [`sse::encoded_len_at_most`]`(n)` bytes (4/3 n + 64 for a line sent as base64).

use std::hash::{BuildHasher, Hasher};

use crate::broadcast::batch::Batch;
use crate::broadcast::history::History;
use crate::wire::sse::{self, EventId, Resume};

/// The events buffer's capacity a room keeps between hand-outs.
pub const KEPT_CAPACITY: usize = 64 * 1024;

/// A room's stream of numbered lines: which stream it is, and how many lines it has handed
/// out (the last one's number).
#[derive(Debug, Clone, Copy)]
pub struct LineNumbers {
    pub epoch: u64,
    pub handed_out: u64,
}

impl LineNumbers {
    /// A new stream: an epoch no other room, run or instance is likely to have drawn (64
    /// random bits from the standard library's per-process hash keys, with the clock and
    /// the process id).
    pub fn new_stream() -> LineNumbers {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        LineNumbers {
            epoch: hasher.finish(),
            handed_out: 0,
        }
    }

    /// The id of line number `seq` of this stream.
    pub fn id(&self, seq: u64) -> EventId {
        EventId {
            epoch: self.epoch,
            seq,
        }
    }
}

/// The events of one batch.
#[derive(Debug, Default)]
pub struct EventBatch {
    bytes: Vec<u8>,
    built: bool,
}

impl EventBatch {
    /// Encodes `batch` as events, numbered on from `numbers`, unless this hand-out did.
    pub fn build(&mut self, batch: &Batch, numbers: &LineNumbers) {
        if self.built {
            return;
        }
        self.built = true;
        self.bytes.reserve(batch.len() + 48 * batch.lines());
        let whole = batch.whole();
        let mut seq = numbers.handed_out;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', whole) {
            seq += 1;
            sse::encode_line(numbers.id(seq), &whole[start..end], &mut self.bytes);
            start = end + 1;
        }
    }

    /// Every event: what each reader receives.
    pub fn whole(&self) -> &[u8] {
        &self.bytes
    }

    /// Forgets the events after the hand-out, keeping at most [`KEPT_CAPACITY`] of the
    /// memory: a batch of tiny lines makes events many times its size, and a room that had
    /// one such batch must not hold its buffer for good.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.shrink_to(KEPT_CAPACITY);
        self.built = false;
    }
}

/// Appends what a reader of a stream numbered by `numbers` is replayed from `history` (if
/// the room keeps one): the `missed` event `resume` calls for, then the kept lines it
/// lacks, each its event.
pub fn history_events(
    history: Option<&History>,
    numbers: &LineNumbers,
    resume: Resume,
    out: &mut Vec<u8>,
) {
    let kept = history.map_or(0, History::lines);
    let before_kept = numbers.handed_out.saturating_sub(kept as u64);
    if let Some((lines, exact)) = resume.missed {
        // Its id: the last line it will not get.
        let last_missed = before_kept + resume.skip as u64;
        sse::encode_missed(numbers.id(last_missed), lines, exact, out);
    }
    let Some(history) = history.filter(|_| resume.skip < kept) else {
        return; // nothing kept that it lacks
    };
    out.reserve(history.len() + 48 * (kept - resume.skip));
    let mut index = 0;
    history.for_each_line(|line| {
        index += 1;
        if index > resume.skip {
            sse::encode_line(numbers.id(before_kept + index as u64), line, out);
        }
    });
}

/// Where the replay of a reader whose last event was `since` (as it said; `None` for a new
/// reader) starts in a stream numbered by `numbers`: after that event if it is still kept
/// (see [`sse::resume`]), in all at most `max_bytes` of events (see [`within`]).
pub fn resume_for(
    history: Option<&History>,
    numbers: &LineNumbers,
    since: Option<&str>,
    max_bytes: usize,
) -> Resume {
    let kept = history.map_or(0, History::lines);
    let returning = since.is_some();
    let since = since.map(|id| EventId::parse(id).unwrap_or(sse::NOT_OURS));
    let resume = sse::resume(since, numbers.epoch, numbers.handed_out, kept);
    within(history, resume, max_bytes, returning)
}

/// `resume`, leaving out the oldest kept lines whose events would pass `max_bytes` (at
/// most: each line counted at its largest event): a `returning` reader is told of them in
/// its `missed` event, a new one just gets the newest lines.
pub fn within(
    history: Option<&History>,
    resume: Resume,
    max_bytes: usize,
    returning: bool,
) -> Resume {
    let Some(history) = history else {
        return resume;
    };
    // No walk of the history when what is owed surely fits (each line's event is at most
    // 64 bytes more than 4/3 of it), as for a reader that comes back up to date.
    let owed = history.lines().saturating_sub(resume.skip);
    if owed
        .saturating_mul(68)
        .saturating_add(history.len() / 3 * 4)
        <= max_bytes
    {
        return resume;
    }
    let mut total = 0usize;
    let mut index = 0;
    history.for_each_line(|line| {
        index += 1;
        if index > resume.skip {
            total += sse::encoded_len_at_most(line.len());
        }
    });
    if total <= max_bytes {
        return resume;
    }
    let (mut index, mut dropped) = (0, 0);
    history.for_each_line(|line| {
        index += 1;
        if index > resume.skip && total > max_bytes {
            total -= sse::encoded_len_at_most(line.len());
            dropped += 1;
        }
    });
    let missed = match resume.missed {
        Some((lines, exact)) => Some((lines + dropped as u64, exact)),
        None if returning => Some((dropped as u64, true)),
        None => None,
    };
    Resume {
        skip: resume.skip + dropped,
        missed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::batch::Sender;
    use std::time::Duration;

    #[test]
    fn a_batch_becomes_events_numbered_on_from_the_last_hand_out() {
        let mut batch = Batch::new(1 << 20, 1 << 16, Duration::ZERO);
        batch.append(Sender::Client(1), b"a\n", 1);
        batch.append(Sender::Client(2), b"b\n\xff\n", 2);
        let numbers = LineNumbers {
            epoch: 0xff,
            handed_out: 41,
        };
        let mut events = EventBatch::default();
        events.build(&batch, &numbers);
        events.build(&batch, &numbers); // once per hand-out
        assert_eq!(
            events.whole(),
            b"id: 00000000000000ff-42\ndata: a\n\nid: 00000000000000ff-43\ndata: b\n\n\
              id: 00000000000000ff-44\nevent: binary\ndata: /w==\n\n"
        );
        events.clear();
        assert!(events.whole().is_empty());
        // A large batch's buffer is given back, down to what a room keeps.
        let mut big = Batch::new(1 << 20, 1 << 16, Duration::ZERO);
        big.append(Sender::Client(1), &[b'\n'; 100_000], 100_000);
        events.build(&big, &numbers);
        assert!(events.whole().len() > 30 * 100_000);
        events.clear();
        assert!(events.bytes.capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn a_replay_is_the_missed_event_then_the_kept_lines_it_lacks() {
        let mut history = History::new(3, 1 << 20);
        history.keep(b"l1\nl2\nl3\nl4\nl5\n"); // 3, 4 and 5 kept
        let numbers = LineNumbers {
            epoch: 0xab,
            handed_out: 5,
        };
        let replay = |resume| {
            let mut out = Vec::new();
            history_events(Some(&history), &numbers, resume, &mut out);
            String::from_utf8(out).expect("UTF-8")
        };
        assert_eq!(
            replay(Resume::WHOLE),
            "id: 00000000000000ab-3\ndata: l3\n\nid: 00000000000000ab-4\ndata: l4\n\n\
             id: 00000000000000ab-5\ndata: l5\n\n"
        );
        let after_4 = Resume {
            skip: 2,
            missed: None,
        };
        assert_eq!(replay(after_4), "id: 00000000000000ab-5\ndata: l5\n\n");
        let missed = Resume {
            skip: 0,
            missed: Some((1, true)),
        };
        assert!(replay(missed).starts_with(
            "id: 00000000000000ab-2\nevent: missed\ndata: {\"lines\":1,\"exact\":true}\n\n\
             id: 00000000000000ab-3\n"
        ));
        let mut out = Vec::new();
        history_events(None, &numbers, missed, &mut out);
        assert!(
            out.starts_with(b"id: 00000000000000ab-5\nevent: missed\n"),
            "no history"
        );
    }

    #[test]
    fn a_replay_keeps_within_its_bound_and_says_what_it_left_out() {
        let mut history = History::new(100, 1 << 20);
        history.keep(b"l1\nl2\nl3\nl4\nl5\n");
        let numbers = LineNumbers {
            epoch: 0xab,
            handed_out: 5,
        };
        let one = sse::encoded_len_at_most(3);
        // A new reader: the newest lines that fit, nothing said.
        let newest = within(Some(&history), Resume::WHOLE, 2 * one, false);
        assert_eq!(
            newest,
            Resume {
                skip: 3,
                missed: None
            }
        );
        // A returning reader after line 1: lines 2 and 3 are left out, and it is told.
        let after_1 = Resume {
            skip: 1,
            missed: None,
        };
        let told = within(Some(&history), after_1, 2 * one, true);
        assert_eq!(
            told,
            Resume {
                skip: 3,
                missed: Some((2, true))
            }
        );
        let mut out = Vec::new();
        history_events(Some(&history), &numbers, told, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: 00000000000000ab-3\nevent: missed\ndata: {\"lines\":2,\"exact\":true}\n\n\
             id: 00000000000000ab-4\ndata: l4\n\nid: 00000000000000ab-5\ndata: l5\n\n"
        );
        // One that missed lines already: its count grows, its exactness stays.
        let foreign = Resume {
            skip: 0,
            missed: Some((7, false)),
        };
        assert_eq!(
            within(Some(&history), foreign, one, true),
            Resume {
                skip: 4,
                missed: Some((11, false))
            }
        );
        assert_eq!(
            within(Some(&history), after_1, 1 << 20, true),
            after_1,
            "all fits"
        );
    }

    #[test]
    fn every_stream_draws_its_own_epoch() {
        let epochs: std::collections::HashSet<u64> =
            (0..1000).map(|_| LineNumbers::new_stream().epoch).collect();
        assert_eq!(epochs.len(), 1000);
    }
}
