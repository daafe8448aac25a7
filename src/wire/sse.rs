//! Server-Sent Events (`GET /events`), pure: each line as one event with its id, the event
//! that tells a returning reader how many lines it missed, the ids themselves, and where a
//! returning reader's replay starts.
//!
//! An event id is `EPOCH-SEQ`: `EPOCH` (16 hex digits) names one stream, a room in one run
//! of one instance (it is drawn at random when the room is made), and `SEQ` numbers the
//! lines handed out in it from 1. An id from another run, instance or room (or one that is
//! not ours) therefore never matches: its reader is told that it missed lines, and how
//! many of this stream's it will not get.
//!
//! A line is an event's `data:` as it is (its `\n` left off) when it is UTF-8 without a
//! `\r` (SSE would split a line at a `\r`, and browsers replace invalid UTF-8); any other
//! line is an event of type `binary` whose `data:` is the line's bytes in standard base64:
//! every line arrives, whole, either way.

use base64::Engine as _;

/// One event's id: the stream (`epoch`) and the line's number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

/// What an id that cannot be read stands for: one of another stream (an epoch of 0 is
/// never checked against: it only has to differ, and [`resume`] also takes an unknown
/// sequence as not ours).
pub const NOT_OURS: EventId = EventId {
    epoch: 0,
    seq: u64::MAX,
};

impl EventId {
    /// Reads an id as [`write_id`] writes it; `None` for anything else.
    pub fn parse(text: &str) -> Option<EventId> {
        let (epoch, seq) = text.trim().split_once('-')?;
        let hex = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !hex(epoch) || !digits(seq) {
            return None;
        }
        Some(EventId {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Appends `id` as it is written in an `id:` field.
fn write_id(id: EventId, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:016x}-{}", id.epoch, id.seq);
}

/// Appends one line (with or without its `\n`) as the event `id`.
pub fn encode_line(id: EventId, line: &[u8], out: &mut Vec<u8>) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    out.extend_from_slice(b"id: ");
    write_id(id, out);
    if !line.contains(&b'\r') && std::str::from_utf8(line).is_ok() {
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(line);
    } else {
        out.extend_from_slice(b"\nevent: binary\ndata: ");
        let start = out.len();
        out.resize(
            start + base64::encoded_len(line.len(), true).unwrap_or(0),
            0,
        );
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(line, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
    }
    out.extend_from_slice(b"\n\n");
}

/// Most bytes an event of a line of `len` bytes takes (for reserving).
pub fn encoded_len_at_most(len: usize) -> usize {
    EVENT_OVERHEAD + len.div_ceil(3) * 4
}

/// The fields around a line's data: `id: ` (4), the id (16 + 1 + 20), `\nevent: binary`
/// (14), `\ndata: ` (7), `\n\n` (2).
const EVENT_OVERHEAD: usize = 64;

/// Appends the `missed` event: `lines` lines of this stream that the reader will not get
/// (`exact`: its id was of this stream, so that is all it missed; else it also missed what
/// its own stream sent after its id, which is not known here). Its id is the last line it
/// missed, so that a reconnect after it is not told again.
pub fn encode_missed(id: EventId, lines: u64, exact: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"id: ");
    write_id(id, out);
    let data = format!("\nevent: missed\ndata: {{\"lines\":{lines},\"exact\":{exact}}}\n\n");
    out.extend_from_slice(data.as_bytes());
}

/// Where a reader's replay from the history starts, given the id it last saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// History lines to leave out (it has them).
    pub skip: usize,
    /// The `missed` event it gets first, if any: (lines, exact).
    pub missed: Option<(u64, bool)>,
}

impl Resume {
    /// A new reader's: the whole history, nothing missed.
    pub const WHOLE: Resume = Resume {
        skip: 0,
        missed: None,
    };
}

/// Where the replay starts for a reader whose last event was `since` (`None`: a new reader,
/// which gets the whole history), in a stream `epoch` that has handed out `handed_out`
/// lines, the last `kept` of them in its history.
pub fn resume(since: Option<EventId>, epoch: u64, handed_out: u64, kept: usize) -> Resume {
    // The first kept line's number (a history never holds more than was handed out).
    let kept_from = handed_out.saturating_sub(kept as u64) + 1;
    let Some(since) = since else {
        return Resume::WHOLE;
    };
    if since.epoch != epoch || since.seq > handed_out {
        // Another stream's id (or a future one): this stream's lines before the history
        // are missed too, at least.
        return Resume {
            skip: 0,
            missed: Some((kept_from - 1, false)),
        };
    }
    if since.seq + 1 >= kept_from {
        return Resume {
            skip: (since.seq + 1 - kept_from) as usize,
            missed: None,
        };
    }
    Resume {
        skip: 0,
        missed: Some((kept_from - 1 - since.seq, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: u64 = 0x0123_4567_89ab_cdef;

    /// A minimal SSE reader, as the WHATWG spec parses a stream: (event type, data, id)
    /// per event.
    fn parse_events(stream: &str) -> Vec<(String, String, String)> {
        let mut events = Vec::new();
        let (mut kind, mut data, mut id) = (String::new(), Vec::<String>::new(), String::new());
        for line in stream.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    events.push((std::mem::take(&mut kind), data.join("\n"), id.clone()));
                    data.clear();
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_string(),
                "data" => data.push(value.to_string()),
                "id" => id = value.to_string(),
                _ => {}
            }
        }
        events
    }

    #[test]
    fn a_line_is_an_event_with_its_id_and_others_go_as_base64() {
        let mut out = Vec::new();
        let id = |seq| EventId { epoch: EPOCH, seq };
        encode_line(id(1), b"hello world\n", &mut out);
        encode_line(id(2), b" leading space\n", &mut out);
        encode_line(id(3), b"\n", &mut out);
        encode_line(id(18_446_744_073_709_551_615), b"cr\r here\n", &mut out);
        encode_line(id(5), b"\xff\xfe\n", &mut out);
        let text = String::from_utf8(out.clone()).expect("events are UTF-8");
        assert!(text.starts_with("id: 0123456789abcdef-1\ndata: hello world\n\n"));
        assert_eq!(
            parse_events(&text),
            [
                ("", "hello world", "0123456789abcdef-1"),
                ("", " leading space", "0123456789abcdef-2"),
                ("", "", "0123456789abcdef-3"),
                (
                    "binary",
                    "Y3INIGhlcmU=",
                    "0123456789abcdef-18446744073709551615"
                ),
                ("binary", "//4=", "0123456789abcdef-5"),
            ]
            .map(|(k, d, i)| (k.to_string(), d.to_string(), i.to_string()))
        );
    }

    #[test]
    fn the_missed_event_says_how_many_and_whether_exactly() {
        let mut out = Vec::new();
        encode_missed(
            EventId {
                epoch: EPOCH,
                seq: 7,
            },
            3,
            true,
            &mut out,
        );
        assert_eq!(
            out,
            b"id: 0123456789abcdef-7\nevent: missed\ndata: {\"lines\":3,\"exact\":true}\n\n"
        );
    }

    #[test]
    fn ids_read_back_and_nothing_else_does() {
        let mut out = Vec::new();
        let id = EventId {
            epoch: 0xa,
            seq: 42,
        };
        write_id(id, &mut out);
        assert_eq!(out, b"000000000000000a-42");
        assert_eq!(EventId::parse("000000000000000a-42"), Some(id));
        for bad in [
            "",
            "a-1",
            "000000000000000a-",
            "000000000000000a-x",
            "000000000000000g-1",
            "000000000000000a-99999999999999999999",
            "000000000000000a-1-2",
            "-1",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_reader_resumes_after_its_last_event_or_hears_what_it_missed() {
        // 10 lines handed out, the last 4 (7..=10) kept.
        let at = |seq| Some(EventId { epoch: EPOCH, seq });
        let resume = |since| resume(since, EPOCH, 10, 4);
        let plain = |skip| Resume { skip, missed: None };
        assert_eq!(resume(None), plain(0), "a new reader gets it all");
        assert_eq!(resume(at(10)), plain(4), "up to date");
        assert_eq!(resume(at(8)), plain(2), "9 and 10 again");
        assert_eq!(resume(at(6)), plain(0), "7.. is just what it lacks");
        let missed = |lines, exact| Resume {
            skip: 0,
            missed: Some((lines, exact)),
        };
        assert_eq!(resume(at(4)), missed(2, true), "5 and 6 are gone");
        assert_eq!(resume(at(0)), missed(6, true));
        assert_eq!(
            resume(at(11)),
            missed(6, false),
            "not yet handed out: not ours"
        );
        let other = Some(EventId { epoch: 1, seq: 3 });
        assert_eq!(resume(other), missed(6, false), "another stream");
        // No history: a returning reader hears of every line since.
        assert_eq!(super::resume(at(7), EPOCH, 10, 0), missed(3, true));
        assert_eq!(super::resume(at(10), EPOCH, 10, 0), plain(0));
    }

    proptest! {
        #[test]
        fn any_line_arrives_whole(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let line: Vec<u8> = line.into_iter().filter(|&b| b != b'\n').collect();
            let mut out = Vec::new();
            encode_line(EventId { epoch: EPOCH, seq: 9 }, &line, &mut out);
            prop_assert!(out.len() <= encoded_len_at_most(line.len()));
            let text = String::from_utf8(out).expect("events are UTF-8");
            let events = parse_events(&text);
            prop_assert_eq!(events.len(), 1);
            let (kind, data, id) = &events[0];
            prop_assert_eq!(id.as_str(), "0123456789abcdef-9");
            let got = match kind.as_str() {
                "" => data.as_bytes().to_vec(),
                "binary" => base64::engine::general_purpose::STANDARD.decode(data).expect("base64"),
                other => panic!("unexpected event type {other}"),
            };
            prop_assert_eq!(got, line);
        }

        #[test]
        fn a_resume_never_skips_past_the_history(
            handed_out in 0u64..1000, kept in 0usize..100, seq in 0u64..1100, same in any::<bool>()
        ) {
            let kept = kept.min(handed_out as usize);
            let since = EventId { epoch: if same { EPOCH } else { 5 }, seq };
            let r = resume(Some(since), EPOCH, handed_out, kept);
            prop_assert!(r.skip <= kept);
            // What it gets and what it is told it missed cover every line after its id.
            if same && seq <= handed_out {
                let told = r.missed.map_or(0, |(lines, _)| lines);
                prop_assert_eq!(seq + told + (kept - r.skip) as u64, handed_out);
            }
        }
    }
}
