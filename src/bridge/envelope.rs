//! What each NATS message carries besides its lines, and which messages a receiver
//! believes. Pure: no socket, no clock.
//!
//! A message an instance publishes is one envelope line, then whole lines:
//!
//! ```text
//! ~bcast1 <tag: 64 hex digits, or -> <origin: 16 hex digits> <sequence>\n
//! <line>\n<line>\n...
//! ```
//!
//! The envelope rides in the payload, not in NATS headers: the bridge connects without
//! header support, so nats-server strips whatever headers a stranger publishes.
//!
//! **Forged messages.** Anyone who can publish on the subject can write an envelope naming
//! another instance. With a shared key (`--nats-key`), the tag is HMAC-SHA256, under a key
//! derived from the shared one and the subject, over everything after the tag (origin,
//! sequence, lines), and a message without a valid tag is refused outright: a stranger can
//! neither inject lines nor touch an instance's sequence. Without a key nothing can be
//! verified, so a sequence is believed only within [`WINDOW`] of the last one believed from
//! that origin: a forged far-off number (the probe's 18446744073709551615) is dropped and
//! moves nothing; a forged number inside the window costs that origin at most
//! [`WINDOW`] messages, once. A real gap wider than the window (a long partition between
//! NATS servers) is believed after [`RESYNC_RUN`] consecutive numbers beyond it.

use std::collections::HashMap;

use ring::hmac;

/// How every envelope starts.
const MAGIC: &[u8] = b"~bcast1 ";
/// The tag's place in a message without a key.
const NO_TAG: &[u8] = b"-";
/// Longest envelope line: magic, tag, origin, a u64, separators and the line end.
pub const MAX_ENVELOPE: usize = 8 + 64 + 1 + 16 + 1 + 20 + 1;
/// Without a key: how far past the last believed sequence a new one may be.
pub const WINDOW: u64 = 256;
/// Without a key: consecutive sequence numbers outside the window that are believed (the
/// origin's numbers really moved on, or a forged one was believed).
pub const RESYNC_RUN: u32 = 16;
/// Origins whose last sequence a receiver remembers; past this it forgets one.
const MAX_ORIGINS: usize = 4096;

/// The key that authenticates messages on one subject, derived from the shared secret
/// (`--nats-key`) and the subject: a message cannot be replayed onto another subject.
#[derive(Clone)]
pub struct MessageKey {
    key: hmac::Key,
    /// The derived key's bytes: two configurations compare equal by them.
    derived: Vec<u8>,
}

impl MessageKey {
    pub fn new(secret: &[u8], subject: &str) -> MessageKey {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(
            &master,
            format!("broadcast-server subject {subject}").as_bytes(),
        );
        MessageKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            derived: derived.as_ref().to_vec(),
        }
    }
}

impl PartialEq for MessageKey {
    fn eq(&self, other: &Self) -> bool {
        self.derived == other.derived
    }
}

impl Eq for MessageKey {}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKey(..)")
    }
}

/// The envelope line of message `sequence` from `origin` carrying `lines`.
pub fn seal(origin: u64, sequence: u64, key: Option<&MessageKey>, lines: &[u8]) -> Vec<u8> {
    let signed_head = format!(" {origin:016x} {sequence}\n");
    let mut head = MAGIC.to_vec();
    match key {
        Some(key) => {
            let mut context = hmac::Context::with_key(&key.key);
            context.update(signed_head.as_bytes());
            context.update(lines);
            for byte in context.sign().as_ref() {
                head.extend_from_slice(format!("{byte:02x}").as_bytes());
            }
        }
        None => head.extend_from_slice(NO_TAG),
    }
    head.extend_from_slice(signed_head.as_bytes());
    head
}

/// A message taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened<'a> {
    /// From an instance (verified when a key is set): its id, number and lines.
    Instance {
        origin: u64,
        sequence: u64,
        lines: &'a [u8],
    },
    /// No envelope: a plain publisher's lines (accepted only without a key).
    Foreign(&'a [u8]),
    /// A bad envelope or tag, or no envelope where a key requires one.
    Forged,
}

/// Takes the envelope off `payload` and checks it (and its tag, with `key`).
pub fn open<'a>(payload: &'a [u8], key: Option<&MessageKey>) -> Opened<'a> {
    let Some(rest) = payload.strip_prefix(MAGIC) else {
        return match key {
            Some(_) => Opened::Forged,
            None => Opened::Foreign(payload),
        };
    };
    let Some(tag_end) = memchr::memchr(b' ', &rest[..rest.len().min(65)]) else {
        return Opened::Forged;
    };
    let (tag, signed) = (&rest[..tag_end], &rest[tag_end..]);
    let Some(head_end) = memchr::memchr(b'\n', &signed[..signed.len().min(MAX_ENVELOPE)]) else {
        return Opened::Forged;
    };
    let (head, lines) = (&signed[1..head_end], &signed[head_end + 1..]);
    let Some((origin, sequence)) = parse_head(head) else {
        return Opened::Forged;
    };
    let genuine = match key {
        None => true, // a tag, if any, cannot be checked: the number is judged by its window
        Some(key) => parse_hex(tag).is_some_and(|tag| hmac::verify(&key.key, signed, &tag).is_ok()),
    };
    if !genuine {
        return Opened::Forged;
    }
    Opened::Instance {
        origin,
        sequence,
        lines,
    }
}

/// The lines a message carries besides its envelope line, for counting one that cannot be
/// opened (at least one: a message is one drop).
pub fn carried_lines(payload: &[u8]) -> usize {
    let lines = memchr::memchr_iter(b'\n', payload).count();
    let envelope = usize::from(payload.starts_with(MAGIC) && lines > 0);
    (lines - envelope).max(1)
}

/// `<origin> <sequence>`, each in its one spelling (what is tagged is what is read).
fn parse_head(head: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(head).ok()?;
    let (origin, sequence) = text.split_once(' ')?;
    let number: u64 = sequence.parse().ok()?;
    (number.to_string() == sequence).then_some(())?;
    Some((parse_origin(origin)?, number))
}

/// An instance id: exactly 16 lowercase hex digits.
fn parse_origin(origin: &str) -> Option<u64> {
    let hex = origin.len() == 16
        && origin
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| u64::from_str_radix(origin, 16).ok()).flatten()
}

/// 64 lowercase hex digits as 32 bytes.
fn parse_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// What to do with a message from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Not newer than one already delivered from that instance (late, after a stall).
    Stale,
    /// A number no instance would send next (without a key: beyond the window).
    Unbelieved,
}

/// The last sequence number believed from each instance.
#[derive(Debug, Default)]
pub struct Sequences {
    marks: HashMap<u64, Mark>,
    /// Messages are verified by a key: every number is believed as it is.
    keyed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    last: u64,
    /// Consecutive numbers outside the window: the next one expected and how many so far.
    run: Option<(u64, u32)>,
}

impl Sequences {
    pub fn new(keyed: bool) -> Sequences {
        Sequences {
            marks: HashMap::new(),
            keyed,
        }
    }

    /// Forgets every origin (the receiver missed an unknown stretch: after a reconnect).
    /// With a key, marks are kept: a verified number is never a stranger's.
    pub fn forget_unverified(&mut self) {
        if !self.keyed {
            self.marks.clear();
        }
    }

    /// Judges message `sequence` from `origin`, and remembers it if it is delivered.
    pub fn judge(&mut self, origin: u64, sequence: u64) -> Verdict {
        if self.marks.len() >= MAX_ORIGINS
            && !self.marks.contains_key(&origin)
            && let Some(&evicted) = self.marks.keys().next()
        {
            self.marks.remove(&evicted);
        }
        let Some(mark) = self.marks.get_mut(&origin) else {
            self.marks.insert(
                origin,
                Mark {
                    last: sequence,
                    run: None,
                },
            );
            return Verdict::Deliver;
        };
        let ahead = sequence.wrapping_sub(mark.last);
        if sequence > mark.last && (self.keyed || ahead <= WINDOW) {
            *mark = Mark {
                last: sequence,
                run: None,
            };
            return Verdict::Deliver;
        }
        if self.keyed {
            return Verdict::Stale;
        }
        let stale = sequence <= mark.last && mark.last - sequence < WINDOW;
        if stale {
            // Late: inside the window behind. A run only counts numbers outside the window.
            return Verdict::Stale;
        }
        let run = match mark.run {
            Some((next, len)) if next == sequence => (sequence.wrapping_add(1), len + 1),
            _ => (sequence.wrapping_add(1), 1),
        };
        if run.1 >= RESYNC_RUN {
            *mark = Mark {
                last: sequence,
                run: None,
            };
            return Verdict::Deliver;
        }
        mark.run = Some(run);
        if sequence <= mark.last {
            Verdict::Stale
        } else {
            Verdict::Unbelieved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0x00ff_00ff_00ff_00ff;

    fn message(head: Vec<u8>, lines: &[u8]) -> Vec<u8> {
        [head, lines.to_vec()].concat()
    }

    #[test]
    fn envelopes_open_as_sealed_and_tags_catch_any_change() {
        let lines = b"one\ntwo\n";
        let plain = message(seal(A, 7, None, lines), lines);
        assert_eq!(plain, b"~bcast1 - 00ff00ff00ff00ff 7\none\ntwo\n");
        assert_eq!(
            open(&plain, None),
            Opened::Instance {
                origin: A,
                sequence: 7,
                lines
            }
        );
        let key = MessageKey::new(b"0123456789abcdef0123456789abcdef", "s");
        let sealed = message(seal(A, 7, Some(&key), lines), lines);
        assert!(matches!(
            open(&sealed, Some(&key)),
            Opened::Instance { sequence: 7, .. }
        ));
        assert!(matches!(
            open(&sealed, None),
            Opened::Instance { sequence: 7, .. }
        ));
        let other_subject = MessageKey::new(b"0123456789abcdef0123456789abcdef", "t");
        assert_eq!(open(&sealed, Some(&other_subject)), Opened::Forged);
        assert_eq!(open(&plain, Some(&key)), Opened::Forged, "no tag");
        assert_eq!(open(b"hello\n", Some(&key)), Opened::Forged, "no envelope");
        let other = MessageKey::new(b"another key, just as long as it..", "s");
        assert_eq!(open(&sealed, Some(&other)), Opened::Forged);
        for at in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[at] ^= 0x01;
            assert!(
                !matches!(open(&changed, Some(&key)), Opened::Instance { .. }),
                "byte {at} changed and still believed"
            );
        }
    }

    #[test]
    fn a_message_that_cannot_be_opened_counts_its_lines_less_the_envelope() {
        assert_eq!(carried_lines(b"~bcast1 - x 1\na\nb\n"), 2);
        assert_eq!(carried_lines(b"a\nb\n"), 2);
        assert_eq!(carried_lines(b"~bcast1 -"), 1);
        assert_eq!(carried_lines(b"~bcast1 - x 1\n"), 1);
    }

    #[test]
    fn bad_envelopes_are_forged_and_plain_messages_foreign() {
        assert_eq!(open(b"hello\n", None), Opened::Foreign(b"hello\n"));
        for bad in [
            &b"~bcast1 - 00FF00FF00FF00FF 1\nx\n"[..],
            b"~bcast1 - 00ff00ff00ff00ff x\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 01\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 1 2\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 1",
            b"~bcast1 -",
        ] {
            assert_eq!(
                open(bad, None),
                Opened::Forged,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_forged_far_off_number_moves_nothing() {
        let mut seen = Sequences::new(false);
        assert_eq!(seen.judge(A, 10), Verdict::Deliver);
        assert_eq!(seen.judge(A, u64::MAX), Verdict::Unbelieved);
        for sequence in 11..20 {
            assert_eq!(seen.judge(A, sequence), Verdict::Deliver);
        }
        assert_eq!(seen.judge(A, 15), Verdict::Stale);
    }

    #[test]
    fn a_forged_number_inside_the_window_costs_at_most_the_window() {
        let mut seen = Sequences::new(false);
        seen.judge(A, 1);
        assert_eq!(
            seen.judge(A, 1 + WINDOW),
            Verdict::Deliver,
            "forged, believed"
        );
        let lost = (2..=WINDOW + 1)
            .filter(|&s| seen.judge(A, s) != Verdict::Deliver)
            .count() as u64;
        assert!(lost <= WINDOW, "{lost}");
        assert_eq!(seen.judge(A, WINDOW + 2), Verdict::Deliver);
    }

    #[test]
    fn a_real_gap_wider_than_the_window_is_believed_after_a_run() {
        let mut seen = Sequences::new(false);
        seen.judge(A, 1);
        let start = 1 + WINDOW * 100;
        let delivered: Vec<Verdict> = (start..start + u64::from(RESYNC_RUN) + 3)
            .map(|s| seen.judge(A, s))
            .collect();
        let first = delivered
            .iter()
            .position(|v| *v == Verdict::Deliver)
            .unwrap();
        assert_eq!(first, RESYNC_RUN as usize - 1);
        assert!(delivered[first..].iter().all(|v| *v == Verdict::Deliver));
        // And a forged far-ahead run is followed back the same way.
        let mut seen = Sequences::new(false);
        seen.judge(A, 1);
        for s in 0..u64::from(RESYNC_RUN) {
            seen.judge(A, u64::MAX / 2 + s);
        }
        let back: Vec<Verdict> = (2..2 + u64::from(RESYNC_RUN) + 1)
            .map(|s| seen.judge(A, s))
            .collect();
        assert_eq!(back.last(), Some(&Verdict::Deliver));
    }

    #[test]
    fn with_a_key_every_newer_number_is_believed_and_older_ones_are_stale() {
        let mut seen = Sequences::new(true);
        seen.judge(A, 1);
        assert_eq!(seen.judge(A, 1_000_000), Verdict::Deliver);
        assert_eq!(seen.judge(A, 999_999), Verdict::Stale);
        seen.forget_unverified();
        assert_eq!(
            seen.judge(A, 999_999),
            Verdict::Stale,
            "kept across reconnects"
        );
    }
}
