//! What every reader checks, line by line: that each line is whole, where it came from, and
//! whether it is the next one from its sender.
//!
//! A reader keeps, per sender, the next sequence number it expects. A higher number opens a
//! gap (those lines are missing); a lower one either fills a gap (the line came late:
//! reordered) or repeats a line already received (a duplicate). Lines are never counted by
//! bytes, so a server that drops one line and duplicates another cannot balance out.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;

use hdrhistogram::Histogram;
use memchr::memchr;

use crate::line;

/// Latencies are recorded in microseconds, 1 µs to 100 s, to 3 significant figures.
const MAX_LATENCY_US: u64 = 100_000_000;

/// At most this many open gaps per (reader, sender) are remembered; beyond that the oldest
/// is forgotten (its lines stay lost, and one arriving later counts as a duplicate).
const MAX_GAPS: usize = 1024;

/// A fresh latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// The counts and latencies of one measured run, summed over every reader.
pub struct Tally {
    /// Distinct lines of the run received, once per reader that received them.
    pub delivered: u64,
    /// Lines received again after they had already arrived.
    pub duplicates: u64,
    /// Lines that arrived after a later line from the same sender (they filled a gap).
    pub reordered: u64,
    /// Lines of the wrong length, with a corrupt header, from an unknown sender, with a
    /// sequence number never sent, or the reader's own line echoed back; and WebSocket
    /// frames no correct server sends (see [`crate::ws::Decoded::malformed`]).
    pub malformed: u64,
    /// Send → kernel arrival on the reader's socket, µs, one sample per line.
    pub latency: Histogram<u64>,
    /// Kernel arrival → the generator's read, µs, one sample per line: how far behind the
    /// generator itself was reading.
    pub read_lag: Histogram<u64>,
    /// When the last line counted in `delivered` was read.
    pub last_arrival: Option<Instant>,
    /// Reads the kernel gave no arrival time for (the read time stood in).
    pub reads_without_kernel_time: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            delivered: 0,
            duplicates: 0,
            reordered: 0,
            malformed: 0,
            latency: histogram(),
            read_lag: histogram(),
            last_arrival: None,
            reads_without_kernel_time: 0,
        }
    }
}

impl Tally {
    /// Adds `other`'s counts and latencies to these (e.g. the readers of several servers).
    pub fn absorb(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.malformed += other.malformed;
        self.latency
            .add(&other.latency)
            .expect("tallies share histogram bounds");
        self.read_lag
            .add(&other.read_lag)
            .expect("tallies share histogram bounds");
        self.last_arrival = self.last_arrival.max(other.last_arrival);
        self.reads_without_kernel_time += other.reads_without_kernel_time;
    }
}

/// What received lines are checked against, for one read.
pub struct Expect<'a> {
    pub line_len: usize,
    /// Per sender, the lines it has written so far: a higher sequence number is corrupt.
    pub sent: &'a [u32],
    /// Kernel arrival time of this read's data, ns since the epoch.
    pub arrival_ns: u64,
}

/// One reader's place in its byte stream and in every sender's sequence.
pub struct Receiver {
    /// The start of a line still arriving (shorter than a line), kept between reads.
    carry: Vec<u8>,
    /// Inside a malformed stretch: the bytes up to the next newline belong to it.
    skipping: bool,
    /// This client's own sender id: without `--echo` its own lines must not come back.
    own: Option<u32>,
    /// Per sender, the next sequence number expected.
    next: Vec<u32>,
    /// Per sender, the ranges of sequence numbers skipped and not yet received.
    gaps: HashMap<u32, Vec<Range<u32>>>,
}

impl Receiver {
    /// A reader that expects, from each sender, the lines after those already `sent`.
    pub fn new(own: Option<u32>, sent: &[u32]) -> Receiver {
        Receiver {
            carry: Vec::new(),
            skipping: false,
            own,
            next: sent.to_vec(),
            gaps: HashMap::new(),
        }
    }

    /// A new sender joined the swarm: its lines start at 0.
    pub fn add_sender(&mut self) {
        self.next.push(0);
    }

    /// Starts a measured run: only lines written from now on are expected.
    /// The next sequence number expected from `sender`: every earlier line from it arrived
    /// or was skipped.
    pub fn expects(&self, sender: u32) -> u32 {
        self.next.get(sender as usize).copied().unwrap_or(0)
    }

    pub fn restart(&mut self, sent: &[u32]) {
        self.next.clear();
        self.next.extend_from_slice(sent);
        self.gaps.clear();
    }

    /// Bytes of an unfinished line from the previous read; the caller reads after them.
    pub fn carried(&self) -> &[u8] {
        &self.carry
    }

    /// Checks every whole line in `data` (the carried bytes, then this read's) and keeps the
    /// unfinished tail for the next read; returns how many lines were well-formed.
    pub fn scan(&mut self, data: &[u8], expect: &Expect, tally: &mut Tally) -> u64 {
        let line_len = expect.line_len;
        let mut pos = 0;
        let mut lines = 0;
        // Lines written in one generator tick share a send time, and a read shares one
        // arrival time: record equal latencies as one run, not one histogram call each.
        let mut run = (0u64, 0u64);
        self.carry.clear();
        if self.skipping {
            match memchr(b'\n', data) {
                Some(end) => {
                    pos = end + 1;
                    self.skipping = false;
                }
                None => return 0,
            }
        }
        while data.len() - pos >= line_len {
            let Some(header) = line::parse(&data[pos..pos + line_len]) else {
                // Cut, merged or corrupt: count it once and resume after its newline.
                tally.malformed += 1;
                match memchr(b'\n', &data[pos..]) {
                    Some(end) => pos += end + 1,
                    None => {
                        self.skipping = true;
                        pos = data.len();
                    }
                }
                continue;
            };
            pos += line_len;
            if let Some(latency_us) = self.accept(header, expect, tally) {
                lines += 1;
                if latency_us != run.0 && run.1 > 0 {
                    tally.latency.saturating_record_n(run.0, run.1);
                    run.1 = 0;
                }
                run.0 = latency_us;
                run.1 += 1;
            }
        }
        if run.1 > 0 {
            tally.latency.saturating_record_n(run.0, run.1);
        }
        if !self.skipping {
            self.carry.extend_from_slice(&data[pos..]);
        }
        lines
    }

    /// Counts one whole line against its sender's sequence; returns its latency (µs), or
    /// `None` if it could not have been sent to this reader (then it is malformed).
    fn accept(&mut self, header: line::Header, expect: &Expect, tally: &mut Tally) -> Option<u64> {
        let sender = header.sender as usize;
        let possible = sender < self.next.len()
            && Some(header.sender) != self.own
            && expect
                .sent
                .get(sender)
                .is_some_and(|&sent| header.seq < sent);
        if !possible {
            tally.malformed += 1;
            return None;
        }
        let next = self.next[sender];
        if header.seq >= next {
            if header.seq > next {
                self.open_gap(header.sender, next..header.seq);
            }
            self.next[sender] = header.seq + 1;
            tally.delivered += 1;
        } else if self.fill_gap(header.sender, header.seq) {
            tally.reordered += 1;
            tally.delivered += 1;
        } else {
            tally.duplicates += 1;
        }
        Some(expect.arrival_ns.saturating_sub(header.sent_ns) / 1000)
    }

    fn open_gap(&mut self, sender: u32, missing: Range<u32>) {
        let gaps = self.gaps.entry(sender).or_default();
        if gaps.len() >= MAX_GAPS {
            gaps.remove(0);
        }
        gaps.push(missing);
    }

    /// Removes `seq` from the sender's gaps; false if it was not missing (a duplicate).
    fn fill_gap(&mut self, sender: u32, seq: u32) -> bool {
        let Some(gaps) = self.gaps.get_mut(&sender) else {
            return false;
        };
        let Some(i) = gaps.iter().position(|gap| gap.contains(&seq)) else {
            return false;
        };
        let gap = gaps.remove(i);
        for part in [gap.start..seq, seq + 1..gap.end] {
            if !part.is_empty() {
                gaps.push(part);
            }
        }
        true
    }
}

/// Feeds a hand-made stream with every kind of fault through a [`Receiver`] and checks the
/// counts; like [`line::self_check`], run at every start because benches compile no tests.
pub fn self_check() -> Result<(), String> {
    let line_len = 40;
    let mut template = line::template(line_len);
    let mut stream = Vec::new();
    // Sender 0: 0, 1, 3 (2 missing), 2 (late), 1 (duplicate), 4, a line too short, 5.
    // Sender 1: 0. Sender 2 is the reader itself: its line must not come back.
    let lines = [
        (0, 0),
        (0, 1),
        (0, 3),
        (0, 2),
        (0, 1),
        (1, 0),
        (2, 0),
        (0, 4),
        (9, 9),
        (0, 5),
    ];
    for (sender, seq) in lines {
        if sender == 9 {
            stream.extend_from_slice(b"short line\n");
            continue;
        }
        let header = line::Header {
            sent_ns: 1_000,
            sender,
            seq,
        };
        line::stamp(&mut template, header);
        stream.extend_from_slice(&template);
    }
    let tail = stream.len() - 7;
    let sent = [10, 10, 10];
    let expect = Expect {
        line_len,
        sent: &sent,
        arrival_ns: 2_000,
    };
    let mut receiver = Receiver::new(Some(2), &[0, 0, 0]);
    let mut tally = Tally::default();
    // Split mid-line, so the carry is exercised too.
    receiver.scan(&stream[..tail], &expect, &mut tally);
    let mut rest = receiver.carried().to_vec();
    rest.extend_from_slice(&stream[tail..]);
    receiver.scan(&rest, &expect, &mut tally);
    let counts = (
        tally.delivered,
        tally.reordered,
        tally.duplicates,
        tally.malformed,
    );
    if counts != (7, 1, 1, 2) || tally.latency.max() != 1 {
        return Err(format!(
            "receiver: (delivered, reordered, duplicates, malformed) = {counts:?}, want (7, 1, 1, 2)"
        ));
    }
    Ok(())
}
