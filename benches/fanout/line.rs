//! The line every sender writes and every reader checks.
//!
//! `TTTTTTTTTTTTTTTT SSSSSSSS QQQQQQQQ xxx…x\n`, fixed length per scenario: the send time
//! (nanoseconds since the Unix epoch, 16 lowercase hex digits), the sender's id and the
//! sender's sequence number (8 hex digits each), padding, and the newline as the last byte.
//! The send time is wall-clock (`CLOCK_REALTIME`) because the kernel's receive timestamps,
//! which the readers compare it with, are wall-clock too.
//!
//! Readers parse every line they receive, so parsing is branch-light: every field sits at a
//! fixed offset and eight hex digits are decoded (and validated) as one `u64`.

/// Length of the header, separators included; padding follows up to the newline.
pub const HEADER_LEN: usize = 35;
/// The shortest line that still has room for the header and its newline.
pub const MIN_LINE_LEN: usize = HEADER_LEN + 1;

const SENDER_AT: usize = 17;
const SEQ_AT: usize = 26;

/// The fields of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Send time, nanoseconds since the Unix epoch.
    pub sent_ns: u64,
    /// Which sender of the swarm wrote it (0-based, in connection order).
    pub sender: u32,
    /// The sender's sequence number: 0, 1, 2, … over the swarm's lifetime.
    pub seq: u32,
}

/// A line of `len` bytes with its padding and newline in place, ready for [`stamp`].
pub fn template(len: usize) -> Vec<u8> {
    assert!(
        len >= MIN_LINE_LEN,
        "lines need at least {MIN_LINE_LEN} bytes"
    );
    let mut line = vec![b'x'; len];
    line[16] = b' ';
    line[SENDER_AT + 8] = b' ';
    line[SEQ_AT + 8] = b' ';
    line[len - 1] = b'\n';
    line
}

/// Writes `header` into a line made from [`template`].
pub fn stamp(line: &mut [u8], header: Header) {
    write_hex(&mut line[..16], header.sent_ns);
    write_hex(
        &mut line[SENDER_AT..SENDER_AT + 8],
        u64::from(header.sender),
    );
    write_hex(&mut line[SEQ_AT..SEQ_AT + 8], u64::from(header.seq));
}

/// Reads a line that should be exactly `line.len()` bytes long: `None` unless its header
/// fields are hex, its separators and padding are in place and its only newline is its last
/// byte. Every byte is checked, so a cut, merged or corrupted line is never taken for whole.
#[inline]
pub fn parse(line: &[u8]) -> Option<Header> {
    let (body, last) = line.split_at(line.len().checked_sub(1)?);
    if last != b"\n"
        || body.len() < HEADER_LEN
        || body[16] != b' '
        || body[SENDER_AT + 8] != b' '
        || body[SEQ_AT + 8] != b' '
        || !is_padding(&body[HEADER_LEN..])
    {
        return None;
    }
    let high = hex8(&line[..8])?;
    let low = hex8(&line[8..16])?;
    Some(Header {
        sent_ns: u64::from(high) << 32 | u64::from(low),
        sender: hex8(&line[SENDER_AT..SENDER_AT + 8])?,
        seq: hex8(&line[SEQ_AT..SEQ_AT + 8])?,
    })
}

/// Whether every byte is the padding byte, eight at a time and without early exit (this
/// runs for every line received).
#[inline]
fn is_padding(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut differ = 0u64;
    for word in &mut words {
        // chunks_exact yields 8 bytes; the zero fallback (never taken) would fail the check.
        let word: [u8; 8] = word.try_into().unwrap_or([0; 8]);
        differ |= u64::from_ne_bytes(word) ^ splat(b'x');
    }
    for &byte in words.remainder() {
        differ |= u64::from(byte ^ b'x');
    }
    differ == 0
}

fn write_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Every byte of a `u64` set to `byte`.
const fn splat(byte: u8) -> u64 {
    0x0101_0101_0101_0101 * byte as u64
}

/// Decodes eight lowercase hex digits at once (SWAR); `None` if any byte is not one.
#[inline(always)]
fn hex8(digits: &[u8]) -> Option<u32> {
    let bytes: [u8; 8] = digits.try_into().ok()?;
    let x = u64::from_be_bytes(bytes);
    const HIGH: u64 = splat(0x80);
    // With every byte below 0x80, adding a constant sets a byte's top bit exactly when the
    // byte is at least 0x80 minus that constant, and no carry crosses into the next byte.
    let at_least = |lowest: u8| x.wrapping_add(splat(0x80 - lowest)) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if x & HIGH != 0 || digit | letter != HIGH {
        return None;
    }
    // '0'..'9' → 0..9 from the low nibble; 'a'..'f' have bit 6 set and low nibbles 1..6.
    let mut v = (x & splat(0x0f)) + ((x >> 6) & splat(0x01)) * 9;
    // Fold pairs of nibbles into bytes, pairs of bytes into u16s, then u16s into the u32.
    v = (v | v >> 4) & 0x00ff_00ff_00ff_00ff;
    v = (v | v >> 8) & 0x0000_ffff_0000_ffff;
    v = (v | v >> 16) & 0x0000_0000_ffff_ffff;
    Some(v as u32)
}

/// Checks the encoder and the SWAR decoder against each other and `u32::from_str_radix`.
/// A `harness = false` bench never compiles `#[cfg(test)]` code, so this runs at every start
/// (microseconds) and keeps the parser honest in CI's `--quick` run.
pub fn self_check() -> Result<(), String> {
    let mut line = template(64);
    let header = Header {
        sent_ns: 0x1234_5678_9abc_def0,
        sender: 999,
        seq: 0xffff_fffe,
    };
    stamp(&mut line, header);
    if parse(&line) != Some(header) {
        return Err(format!("line format: {header:?} did not parse back"));
    }
    let mut cut = line.clone();
    cut[50] = b'\n';
    if parse(&cut).is_some() || parse(&line[..63]).is_some() {
        return Err("line format: a line with a newline inside or none at its end parsed".into());
    }
    for text in ["00000000", "0000abcd", "ffffffff", "12345678", "9a0b1c2d"] {
        if hex8(text.as_bytes()) != u32::from_str_radix(text, 16).ok() {
            return Err(format!("line format: hex8 decoded {text} wrongly"));
        }
    }
    let bad: [&[u8; 8]; 6] = [
        b"0000000g",
        b"ABCDEF01",
        b"1234 678",
        b"0000000/",
        b"0000000:",
        b"0000\x80000",
    ];
    for text in bad {
        if hex8(text).is_some() {
            return Err(format!("line format: hex8 accepted {text:?}"));
        }
    }
    Ok(())
}
