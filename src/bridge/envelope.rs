//! What each NATS message carries besides its lines, and which messages a receiver
//! believes. Pure: no socket, no clock.
//!
//! A message an instance publishes is one envelope line, then whole lines:
//!
//! ```text
//! ~bcast1 <tag: 64 hex digits, or -> <origin: 16 hex digits> <sequence> <sent: ms since 1970>\n
//! <line>\n<line>\n...
//! ```
//!
//! The envelope rides in the payload, not in NATS headers: the bridge connects without
//! header support, so nats-server strips whatever headers a stranger publishes.
//!
//! **Forged messages.** Anyone who can publish on the subject can write an envelope naming
//! another instance, so a receiver may act on an envelope's claims only if it can verify
//! them. With a shared key (`--nats-key`), the tag is HMAC-SHA256, under a key derived from
//! the shared one and the subject, over everything after the tag (origin, sequence, time,
//! lines); a message without a valid tag is refused outright, and only then are sequence
//! numbers trusted: a message not newer than the last one delivered from its origin is
//! dropped as late (reordering after a stalled connection), and the first message heard
//! from an origin must be fresh (sent within [`FRESH`] of our clock), so a recording cannot
//! be replayed to a new instance later. Without a key nothing can be verified, and any
//! drop decided by an envelope's numbers could be steered by a forger (one forged number
//! could make an instance's real ones look late): so nothing is dropped for its numbers,
//! and a stranger can neither stop, delay nor reorder an instance's lines, only add its own.

use std::collections::HashMap;

use ring::hmac;

/// How every envelope starts.
const MAGIC: &[u8] = b"~bcast1 ";
/// The tag's place in a message without a key.
const NO_TAG: &[u8] = b"-";
/// Bytes of an HMAC-SHA256 tag (written as twice as many hex digits).
const TAG_LEN: usize = ring::digest::SHA256_OUTPUT_LEN;
/// Longest envelope line: magic, tag, origin, two u64s, separators and the line end.
pub const MAX_ENVELOPE: usize = 8 + 2 * TAG_LEN + 1 + 16 + 1 + 20 + 1 + 20 + 1;
/// With a key: how far the first message heard from an origin may be from our clock (a
/// replay of older recordings is refused; clocks must agree this well).
pub const FRESH: std::time::Duration = std::time::Duration::from_secs(300);
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

/// What a tag covers before the envelope's signed part: for room NAME (`--rooms`, its
/// subject `SUBJECT.NAME`) `room NAME\n`, so that a signed message cannot be replayed into
/// another room; nothing for the subject itself (room `main`, or no rooms). The signed
/// part starts with a space, so the two never read alike.
fn room_prefix(room: &[u8]) -> Option<[&[u8]; 3]> {
    (!room.is_empty()).then_some([b"room ", room, b"\n"])
}

/// Appends to `out` the envelope line of message `sequence` from `origin`, sent at
/// `sent_ms` (ms since 1970), carrying `lines` of room `room` (empty: the subject itself).
/// Nothing is allocated once `out` has grown: the tag's place is reserved, then filled in
/// from the signed part written after it.
pub fn seal_into(
    out: &mut Vec<u8>,
    origin: u64,
    sequence: u64,
    sent_ms: u64,
    key: Option<&MessageKey>,
    room: &[u8],
    lines: &[u8],
) {
    use std::io::Write as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(MAGIC);
    let tag_at = out.len();
    match key {
        Some(_) => out.resize(tag_at + 2 * TAG_LEN, b'0'),
        None => out.extend_from_slice(NO_TAG),
    }
    let signed_at = out.len();
    // Writing into a Vec cannot fail.
    let _ = writeln!(out, " {origin:016x} {sequence} {sent_ms}");
    if let Some(key) = key {
        let mut context = hmac::Context::with_key(&key.key);
        for part in room_prefix(room).iter().flatten() {
            context.update(part);
        }
        context.update(&out[signed_at..]);
        context.update(lines);
        let tag = context.sign();
        for (hex, byte) in out[tag_at..signed_at].chunks_exact_mut(2).zip(tag.as_ref()) {
            hex.copy_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
        }
    }
}

/// The envelope line alone (see [`seal_into`]), e.g. for a test that publishes as an
/// instance would.
pub fn seal(
    origin: u64,
    sequence: u64,
    sent_ms: u64,
    key: Option<&MessageKey>,
    room: &[u8],
    lines: &[u8],
) -> Vec<u8> {
    let mut head = Vec::new();
    seal_into(&mut head, origin, sequence, sent_ms, key, room, lines);
    head
}

/// A message taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened<'a> {
    /// From an instance (verified when a key is set): its id, number, time and lines.
    Instance {
        origin: u64,
        sequence: u64,
        sent_ms: u64,
        lines: &'a [u8],
    },
    /// No envelope: a plain publisher's lines (accepted only without a key).
    Foreign(&'a [u8]),
    /// A bad envelope or tag, or no envelope where a key requires one.
    Forged,
}

/// Takes the envelope off `payload`, a message for room `room` (see [`seal_into`]), and
/// checks it (and its tag, with `key`).
pub fn open<'a>(payload: &'a [u8], key: Option<&MessageKey>, room: &[u8]) -> Opened<'a> {
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
    let Some((origin, sequence, sent_ms)) = parse_head(head) else {
        return Opened::Forged;
    };
    let genuine = match key {
        None => true, // nothing to check it with: numbers then decide nothing (see above)
        Some(key) => parse_hex(tag).is_some_and(|tag| match room_prefix(room) {
            None => hmac::verify(&key.key, signed, &tag).is_ok(),
            Some(prefix) => {
                hmac::verify(&key.key, &[&prefix.concat(), signed].concat(), &tag).is_ok()
            }
        }),
    };
    if !genuine {
        return Opened::Forged;
    }
    Opened::Instance {
        origin,
        sequence,
        sent_ms,
        lines,
    }
}

/// `<origin> <sequence> <sent>`, each in its one spelling (what is tagged is what is read).
fn parse_head(head: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut fields = text.split(' ');
    let (origin, sequence, sent) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let number = |field: &str| {
        let n: u64 = field.parse().ok()?;
        (n.to_string() == field).then_some(n)
    };
    Some((parse_origin(origin)?, number(sequence)?, number(sent)?))
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

/// What to do with a verified message from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Not newer than one already delivered from that instance (late, after a stall).
    Late,
    /// The first heard from that instance, sent too far from our clock: a replay (or
    /// clocks that disagree).
    Unfresh,
}

/// With a key: the last sequence number delivered from each instance.
#[derive(Debug, Default)]
pub struct Sequences {
    last: HashMap<u64, u64>,
}

impl Sequences {
    /// Judges verified message `sequence` from `origin`, sent at `sent_ms` (its clock), at
    /// `now_ms` (ours), and remembers it if it is delivered.
    pub fn judge(&mut self, origin: u64, sequence: u64, sent_ms: u64, now_ms: u64) -> Verdict {
        if let Some(last) = self.last.get_mut(&origin) {
            if sequence <= *last {
                return Verdict::Late;
            }
            *last = sequence;
            return Verdict::Deliver;
        }
        if u128::from(sent_ms.abs_diff(now_ms)) > FRESH.as_millis() {
            return Verdict::Unfresh;
        }
        if self.last.len() >= MAX_ORIGINS
            && let Some(&evicted) = self.last.keys().next()
        {
            // Only instances that signed a fresh message get here: this is churn, not an
            // attack (a forgotten instance's next message must be fresh again).
            self.last.remove(&evicted);
        }
        self.last.insert(origin, sequence);
        Verdict::Deliver
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
        let plain = message(seal(A, 7, 99, None, b"", lines), lines);
        assert_eq!(plain, b"~bcast1 - 00ff00ff00ff00ff 7 99\none\ntwo\n");
        assert_eq!(
            open(&plain, None, b""),
            Opened::Instance {
                origin: A,
                sequence: 7,
                sent_ms: 99,
                lines
            }
        );
        let key = MessageKey::new(b"0123456789abcdef0123456789abcdef", "s");
        let sealed = message(seal(A, 7, 99, Some(&key), b"", lines), lines);
        assert!(matches!(
            open(&sealed, Some(&key), b""),
            Opened::Instance { sequence: 7, .. }
        ));
        assert!(matches!(
            open(&sealed, None, b""),
            Opened::Instance { sequence: 7, .. }
        ));
        let other_subject = MessageKey::new(b"0123456789abcdef0123456789abcdef", "t");
        assert_eq!(open(&sealed, Some(&other_subject), b""), Opened::Forged);
        assert_eq!(open(&plain, Some(&key), b""), Opened::Forged, "no tag");
        assert_eq!(
            open(b"hello\n", Some(&key), b""),
            Opened::Forged,
            "no envelope"
        );
        let other = MessageKey::new(b"another key, just as long as it..", "s");
        assert_eq!(open(&sealed, Some(&other), b""), Opened::Forged);
        for at in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[at] ^= 0x01;
            assert!(
                !matches!(open(&changed, Some(&key), b""), Opened::Instance { .. }),
                "byte {at} changed and still believed"
            );
        }
    }

    #[test]
    fn a_signed_message_opens_only_in_its_own_room() {
        let key = MessageKey::new(b"0123456789abcdef0123456789abcdef", "s");
        let lines = b"for ops only\n";
        let in_ops = message(seal(A, 1, 99, Some(&key), b"ops", lines), lines);
        assert!(matches!(
            open(&in_ops, Some(&key), b"ops"),
            Opened::Instance { .. }
        ));
        assert_eq!(open(&in_ops, Some(&key), b"lobby"), Opened::Forged);
        assert_eq!(open(&in_ops, Some(&key), b""), Opened::Forged, "not main");
        let in_main = message(seal(A, 2, 99, Some(&key), b"", lines), lines);
        assert_eq!(open(&in_main, Some(&key), b"ops"), Opened::Forged);
    }

    #[test]
    fn bad_envelopes_are_forged_and_plain_messages_foreign() {
        assert_eq!(open(b"hello\n", None, b""), Opened::Foreign(b"hello\n"));
        for bad in [
            &b"~bcast1 - 00FF00FF00FF00FF 1 1\nx\n"[..],
            b"~bcast1 - 00ff00ff00ff00ff x 1\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 01 1\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 1\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 1 2 3\nx\n",
            b"~bcast1 - 00ff00ff00ff00ff 1 1",
            b"~bcast1 -",
        ] {
            assert_eq!(
                open(bad, None, b""),
                Opened::Forged,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn with_a_key_newer_numbers_are_delivered_older_ones_are_late() {
        let mut seen = Sequences::default();
        let now = 1_000_000_000_000;
        assert_eq!(seen.judge(A, 1, now, now), Verdict::Deliver);
        assert_eq!(seen.judge(A, 1_000_000, now, now), Verdict::Deliver);
        assert_eq!(seen.judge(A, 999_999, now, now), Verdict::Late);
        assert_eq!(seen.judge(A, 1_000_000, now, now), Verdict::Late);
        // A known origin is judged by its numbers alone (its clock does not matter then).
        assert_eq!(seen.judge(A, 1_000_001, 0, now), Verdict::Deliver);
    }

    #[test]
    fn the_first_message_of_an_origin_must_be_fresh() {
        let mut seen = Sequences::default();
        let now = 1_000_000_000_000;
        let fresh = FRESH.as_millis() as u64;
        assert_eq!(
            seen.judge(A, 5, now - fresh - 1, now),
            Verdict::Unfresh,
            "a replay"
        );
        assert_eq!(seen.judge(A, 6, now + fresh + 1, now), Verdict::Unfresh);
        assert_eq!(seen.judge(A, 7, now - fresh, now), Verdict::Deliver);
        assert_eq!(seen.judge(A, 5, now, now), Verdict::Late);
    }
}
