//! Unit and property tests of the WebSocket codec (RFC 6455's examples among them).

use super::*;
use proptest::prelude::*;

/// A client frame: masked with `mask`, final or not.
fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn decode(decoder: &mut Decoder, input: &[u8], max_line: usize) -> (Vec<u8>, Vec<u8>, Decoded) {
    let (mut lines, mut pongs) = (Vec::new(), Vec::new());
    let decoded = decoder.push(input, max_line, &mut lines, &mut pongs);
    (lines, pongs, decoded)
}

#[test]
fn the_rfc_examples_decode_and_the_accept_key_matches() {
    // RFC 6455 5.7: a masked "Hello", and the handshake's sample key (1.3).
    let hello = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let (lines, _, decoded) = decode(&mut Decoder::default(), &hello, 100);
    assert_eq!(lines, b"Hello\n");
    assert_eq!((decoded.lines, decoded.stop), (1, None));
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn fragments_with_a_ping_between_make_one_message_and_a_pong() {
    let mut input = client_frame(0x1, false, b"Hel", MASK);
    input.extend(client_frame(0x9, true, b"are you there", [1, 2, 3, 4]));
    input.extend(client_frame(0x0, false, b"lo\nwor", MASK));
    input.extend(client_frame(0x0, true, b"ld", MASK));
    let (lines, pongs, decoded) = decode(&mut Decoder::default(), &input, 100);
    assert_eq!(lines, b"Hello\nworld\n");
    assert_eq!(decoded.lines, 2);
    let mut pong = Vec::new();
    encode_header(Opcode::Pong, 13, &mut pong);
    pong.extend_from_slice(b"are you there");
    assert_eq!((pongs, decoded.pongs), (pong, 1));
}

#[test]
fn violations_stop_with_their_codes() {
    let fail = |input: Vec<u8>, max_line| decode(&mut Decoder::default(), &input, max_line).2.stop;
    let code = |stop: Option<Stop>| match stop {
        Some(Stop::Fail(code, _)) => Some(code),
        _ => None,
    };
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    assert_eq!(code(fail(unmasked, 100)), Some(CloseCode::ProtocolError));
    assert_eq!(
        code(fail(client_frame(0x3, true, b"", MASK), 100)),
        Some(CloseCode::ProtocolError)
    );
    assert_eq!(
        code(fail(client_frame(0x9, false, b"", MASK), 100)),
        Some(CloseCode::ProtocolError)
    );
    assert_eq!(
        code(fail(client_frame(0x9, true, &[0; 126], MASK), 1000)),
        Some(CloseCode::ProtocolError)
    );
    assert_eq!(
        code(fail(client_frame(0x0, true, b"x", MASK), 100)),
        Some(CloseCode::ProtocolError)
    );
    assert_eq!(
        code(fail(client_frame(0x1 | 0x40, true, b"x", MASK), 100)),
        Some(CloseCode::ProtocolError)
    );
    assert_eq!(
        code(fail(client_frame(0x1, true, &[0xff, 0xfe], MASK), 100)),
        Some(CloseCode::InvalidPayload)
    );
    assert_eq!(
        code(fail(client_frame(0x2, true, &[0; 101], MASK), 100)),
        Some(CloseCode::MessageTooBig)
    );
    // Bad UTF-8 in the last fragment of a Text message (after an empty first one).
    let mut split_text = client_frame(0x1, false, b"", MASK);
    split_text.extend(client_frame(0x0, true, b"\xff\xfe bad", MASK));
    assert_eq!(code(fail(split_text, 100)), Some(CloseCode::InvalidPayload));
    let mut split_binary = client_frame(0x2, false, b"", MASK);
    split_binary.extend(client_frame(0x0, true, b"\xff\xfe fine", MASK));
    assert_eq!(
        fail(split_binary, 100),
        None,
        "binary messages may hold any bytes"
    );
    let mut two = client_frame(0x1, false, b"a", MASK);
    two.extend(client_frame(0x1, true, b"b", MASK));
    assert_eq!(code(fail(two, 100)), Some(CloseCode::ProtocolError));
    // Too long across fragments: refused at the fragment that passes the limit.
    let mut long = client_frame(0x2, false, &[1; 60], MASK);
    long.extend(client_frame(0x0, true, &[1; 41], MASK));
    assert_eq!(code(fail(long, 100)), Some(CloseCode::MessageTooBig));
    // A 2^63+ length is a violation; a huge legal one is "too big" from the header alone.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(code(fail(huge, 100)), Some(CloseCode::ProtocolError));
    let mut big = vec![0x82, 0xFF];
    big.extend_from_slice(&(1u64 << 40).to_be_bytes());
    big.extend_from_slice(&MASK);
    assert_eq!(code(fail(big, 100)), Some(CloseCode::MessageTooBig));
}

#[test]
fn close_frames_give_their_code_and_bad_ones_are_violations() {
    let stop = |payload: &[u8]| {
        decode(
            &mut Decoder::default(),
            &client_frame(0x8, true, payload, MASK),
            100,
        )
        .2
        .stop
    };
    assert_eq!(stop(b""), Some(Stop::Closed(None)));
    assert_eq!(
        stop(&[0x03, 0xE8, b'b', b'y', b'e']),
        Some(Stop::Closed(Some(1000)))
    );
    assert!(matches!(
        stop(&[0x03]),
        Some(Stop::Fail(CloseCode::ProtocolError, _))
    ));
    assert!(matches!(
        stop(&[0x03, 0xED]),
        Some(Stop::Fail(CloseCode::ProtocolError, _))
    )); // 1005
    assert!(matches!(
        stop(&[0x03, 0xE8, 0xff]),
        Some(Stop::Fail(CloseCode::InvalidPayload, _))
    ));
}

#[test]
fn lines_encode_as_text_or_binary_and_lengths_pick_the_header_size() {
    let mut out = Vec::new();
    encode_line(b"hi\n", &mut out);
    assert_eq!(out, [0x81, 2, b'h', b'i']);
    out.clear();
    encode_line(&[0xff, b'\n'], &mut out);
    assert_eq!(out, [0x82, 1, 0xff]);
    for (len, header) in [(125, 2), (126, 4), (65535, 4), (65536, 10)] {
        out.clear();
        encode_header(Opcode::Binary, len, &mut out);
        assert_eq!(out.len(), header, "{len}");
    }
    assert_eq!(close_frame(1009, "too long")[..4], [0x88, 10, 0x03, 0xF1]);
}

proptest! {
    /// However the bytes are cut into reads, the same lines come out, and nothing is
    /// held between messages.
    #[test]
    fn any_chunking_gives_the_same_lines(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        fragment in 1usize..50,
        cuts in prop::collection::vec(1usize..40, 1..30),
    ) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for message in &messages {
            let pieces: Vec<&[u8]> = if message.is_empty() { vec![&[]] } else { message.chunks(fragment).collect() };
            for (i, piece) in pieces.iter().enumerate() {
                let opcode = if i == 0 { 0x2 } else { 0x0 };
                input.extend(client_frame(opcode, i + 1 == pieces.len(), piece, [i as u8, 7, 9, 200]));
                if i == 0 {
                    input.extend(client_frame(0x9, true, b"p", MASK));
                }
            }
            expected.extend_from_slice(message);
            expected.push(b'\n');
        }
        let mut decoder = Decoder::default();
        let (mut lines, mut pongs) = (Vec::new(), Vec::new());
        let mut rest = &input[..];
        let mut count = 0;
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
            let decoded = decoder.push(chunk, 300, &mut lines, &mut pongs);
            prop_assert_eq!(decoded.stop, None);
            count += decoded.lines;
            rest = tail;
        }
        prop_assert_eq!(&lines, &expected);
        prop_assert_eq!(count, expected.iter().filter(|&&b| b == b'\n').count());
        prop_assert_eq!(pongs.len(), 3 * messages.len());
        prop_assert_eq!(decoder.unfinished_len(), 0);
    }
}
