//! The WebSocket decoder: frames split at any byte decode the same (lines, pongs, and where
//! and why it stops), and no message is longer than `--max-line`.
#![no_main]

use broadcast_server::wire::websocket::{Decoder, Stop};
use libfuzzer_sys::fuzz_target;

/// Decodes `chunks` one after another until the decoder says stop.
fn decode(chunks: &[&[u8]], max_line: usize) -> (Vec<u8>, Vec<u8>, Option<Stop>, usize) {
    let mut decoder = Decoder::default();
    let (mut lines, mut pongs, mut count) = (Vec::new(), Vec::new(), 0);
    for chunk in chunks {
        let decoded = decoder.push(chunk, max_line, &mut lines, &mut pongs);
        count += decoded.lines;
        assert!(decoder.unfinished_len() <= max_line, "held past --max-line");
        if decoded.stop.is_some() {
            return (lines, pongs, decoded.stop, count);
        }
    }
    (lines, pongs, None, count)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_line = usize::from(a) * 4;
    let at = usize::from(b) * input.len() / 255;
    let whole = decode(&[input], max_line);
    let split = decode(&[&input[..at], &input[at..]], max_line);
    assert_eq!(whole, split, "a split at {at} changed the decoding");
    let (lines, _, _, count) = whole;
    assert_eq!(count, lines.iter().filter(|&&b| b == b'\n').count());
    // A message holding `\n`s is several lines, each within its message's bound.
    for line in lines.split_inclusive(|&b| b == b'\n') {
        assert!(
            line.ends_with(b"\n") && line.len() <= max_line + 1,
            "a line over --max-line"
        );
    }
});
