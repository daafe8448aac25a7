//! What the NATS bridge takes from a server: its protocol split at any byte decodes to the
//! same operations (or the same error), its buffer stays within its bounds, and every
//! message's envelope is opened (with and without a key) without a panic, its lines a part
//! of its payload.
#![no_main]

use broadcast_server::bridge::envelope::{MessageKey, Opened, Sequences, open};
use broadcast_server::bridge::protocol::{MAX_CONTROL_LINE, ServerOp, decode};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Most payload bytes a message may have here (small, to reach the bound).
const MAX_PAYLOAD: usize = 4096;

/// The operations `chunks` decode to, and the error that ended them, if any.
fn decode_all(chunks: &[&[u8]]) -> (Vec<ServerOp>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf, MAX_PAYLOAD) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => return (ops, Some(e.to_string())),
            }
        }
        // Waiting: for the end of a control line, or a payload within its bound.
        assert!(
            buf.len() <= MAX_CONTROL_LINE + 2 + MAX_PAYLOAD + 2,
            "buffered past the bounds"
        );
    }
    (ops, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a], input)) = data.split_first_chunk::<1>() else {
        return;
    };
    let at = usize::from(a) * input.len() / 255;
    let whole = decode_all(&[input]);
    assert_eq!(
        whole,
        decode_all(&[&input[..at], &input[at..]]),
        "a split at {at} changed it"
    );
    let key = MessageKey::new(b"fuzzing secret", "chat");
    let mut sequences = Sequences::default();
    for op in whole.0 {
        if let ServerOp::Msg { subject, payload } = op {
            assert!(payload.len() <= MAX_PAYLOAD, "a payload over the bound");
            for key in [None, Some(&key)] {
                match open(&payload, key, &subject) {
                    Opened::Instance {
                        origin,
                        sequence,
                        sent_ms,
                        lines,
                    } => {
                        assert!(payload.ends_with(lines));
                        let _ = sequences.judge(origin, sequence, sent_ms, sent_ms);
                    }
                    Opened::Foreign(lines) => assert!(key.is_none() && lines == &payload[..]),
                    Opened::Forged => {}
                }
            }
        }
    }
});
