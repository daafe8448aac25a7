//! Server-Sent Events: any line arrives whole (as `data:` or base64), an event id reads
//! back, and a reader's resume point never skips past the history nor leaves a gap.
#![no_main]

use base64::Engine as _;
use broadcast_server::wire::sse::{EventId, encode_line, resume};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((numbers, line)) = data.split_first_chunk::<24>() else {
        return;
    };
    let word =
        |i: usize| u64::from_le_bytes(numbers[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let (epoch, seq, extra) = (word(0), word(1), word(2));
    let line: Vec<u8> = line.iter().copied().filter(|&b| b != b'\n').collect();
    let mut event = Vec::new();
    encode_line(EventId { epoch, seq }, &line, &mut event);
    let text = String::from_utf8(event).expect("an event is UTF-8");
    let body = text
        .strip_suffix("\n\n")
        .expect("an event ends with a blank line");
    let mut fields = body.split('\n');
    let id = fields
        .next()
        .and_then(|f| f.strip_prefix("id: "))
        .expect("the id first");
    assert_eq!(
        EventId::parse(id),
        Some(EventId { epoch, seq }),
        "the id does not read back"
    );
    let got = match (fields.next(), fields.next(), fields.next()) {
        (Some(data), None, None) => data
            .strip_prefix("data: ")
            .expect("data")
            .as_bytes()
            .to_vec(),
        (Some("event: binary"), Some(data), None) => base64::engine::general_purpose::STANDARD
            .decode(data.strip_prefix("data: ").expect("data"))
            .expect("base64"),
        other => panic!("unexpected fields {other:?}"),
    };
    assert_eq!(got, line, "the line did not arrive whole");
    // Resume: what it gets and what it is told it missed cover every line after its id.
    let handed_out = seq % 1_000_000;
    let kept = (extra % 1000).min(handed_out) as usize;
    let since = extra / 1000 % (handed_out + 2);
    let r = resume(Some(EventId { epoch, seq: since }), epoch, handed_out, kept);
    assert!(r.skip <= kept);
    if since <= handed_out {
        let told = r.missed.map_or(0, |(lines, _)| lines);
        assert_eq!(
            since + told + (kept - r.skip) as u64,
            handed_out,
            "a gap or a repeat"
        );
    } else {
        assert!(
            r.missed.is_some_and(|(_, exact)| !exact),
            "a future id taken as ours"
        );
    }
});
