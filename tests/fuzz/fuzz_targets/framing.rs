//! Line framing: whatever the bytes and however a socket splits them, the lines are the
//! same, none is longer than `--max-line`, and nothing is lost or altered.
#![no_main]

use broadcast_server::wire::framing::LineFramer;
use libfuzzer_sys::fuzz_target;

/// What framing `chunks` came to: the lines, whether a line was too long, and the
/// unfinished line `finish` gave (if no error).
fn frame(chunks: &[&[u8]], max_line: usize) -> (Vec<u8>, bool, Vec<u8>) {
    let mut framer = LineFramer::default();
    let mut out = Vec::new();
    for chunk in chunks {
        let before = out.len();
        match framer.push(chunk, max_line, &mut out) {
            Ok(lines) => assert_eq!(lines, out[before..].iter().filter(|&&b| b == b'\n').count()),
            Err(_) => return (out, true, Vec::new()),
        }
        assert!(framer.unfinished_len() <= max_line, "held past --max-line");
    }
    let mut rest = Vec::new();
    framer.finish(&mut rest);
    (out, false, rest)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b, c], input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max_line = usize::from(u16::from_le_bytes([a, b])) % 300;
    let at = usize::from(c) * input.len() / 255;
    let whole = frame(&[input], max_line);
    let split = frame(&[&input[..at], &input[at..]], max_line);
    assert_eq!(whole, split, "a split at {at} changed the framing");
    let (out, too_long, rest) = whole;
    for line in out.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.ends_with(b"\n") && line.len() <= max_line + 1,
            "a line over --max-line"
        );
    }
    assert!(input.starts_with(&out), "lines altered or reordered");
    if too_long {
        // The line after the last one given is the one over the limit.
        let next = &input[out.len()..];
        let len = next.iter().position(|&b| b == b'\n').unwrap_or(next.len());
        assert!(len > max_line, "refused a line within --max-line");
    } else {
        // Everything comes out: the lines, then the unfinished one with a `\n` added.
        let tail = rest.strip_suffix(b"\n").unwrap_or(&rest);
        assert_eq!([&out[..], tail].concat(), input, "bytes lost");
    }
});
