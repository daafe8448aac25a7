//! The HTTP readers the generator needs: `GET /lines` (a chunked body of lines) and
//! `GET /events` (Server-Sent Events, one per line), each asked for on a fresh connection,
//! and a streaming decoder of each that turns what arrives back into the lines it carries,
//! for the same line checks as a TCP reader's.
//!
//! Chunk payloads are the lines themselves: passed on as they arrive, split anywhere. An
//! event's `data:` field is passed on with a `\n` once its line of the stream is complete;
//! its `id:` must number the lines one after another (a gap or a repeat is counted as
//! malformed), and any other field (`event: binary`, `event: missed`) is malformed here:
//! every line of the bench is ASCII and every reader is there from the start.

use std::net::{SocketAddr, TcpStream};

use crate::ws::Decoded;

/// What a reader asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// `GET /lines`: the lines as HTTP chunks.
    Chunks,
    /// `GET /events`: an event per line.
    Events,
}

impl Stream {
    pub fn path(self) -> &'static str {
        match self {
            Stream::Chunks => "/lines",
            Stream::Events => "/events",
        }
    }
}

/// Asks the web listener at `addr` for `stream` and reads the answer's head (nothing of
/// the body); fails unless it is `200`.
pub fn request(socket: &mut TcpStream, addr: SocketAddr, stream: Stream) -> Result<(), String> {
    let request = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n\r\n", stream.path());
    let what = format!("GET {}", stream.path());
    crate::net::ask(socket, &request, "HTTP/1.1 200 ", &what)
}

/// Where a chunked body is between reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Reading a chunk's size (hex digits so far), then its `\r\n`.
    Size {
        size: usize,
        digits: usize,
    },
    SizeEnd {
        size: usize,
    },
    /// `remaining` bytes of the chunk's data to come.
    Data {
        remaining: usize,
    },
    /// The `\r\n` after the data: `crlf` bytes of it seen.
    DataEnd {
        crlf: usize,
    },
    /// The last chunk came: the body is over.
    Over,
}

/// One reader's place in a chunked body, or in an event stream.
#[derive(Debug)]
pub enum Decoder {
    Chunks(Chunk),
    Events {
        /// The stream's line being received (`id: ...`, `data: ...`).
        line: Vec<u8>,
        /// The number of the last event's id, once one was seen.
        last_seq: Option<u64>,
    },
}

impl Decoder {
    pub fn new(stream: Stream) -> Decoder {
        match stream {
            Stream::Chunks => Decoder::Chunks(Chunk::Size { size: 0, digits: 0 }),
            Stream::Events => Decoder::Events {
                line: Vec::new(),
                last_seq: None,
            },
        }
    }

    /// Decodes `input` into the lines it carries, appended to `lines`.
    pub fn push(&mut self, input: &[u8], lines: &mut Vec<u8>) -> Decoded {
        match self {
            Decoder::Chunks(state) => push_chunks(state, input, lines),
            Decoder::Events { line, last_seq } => push_events(line, last_seq, input, lines),
        }
    }
}

fn push_chunks(state: &mut Chunk, mut input: &[u8], lines: &mut Vec<u8>) -> Decoded {
    let mut decoded = Decoded::default();
    while let Some((&byte, rest)) = input.split_first() {
        match *state {
            // The trailer after the last chunk, if any, is not looked at.
            Chunk::Over => break,
            Chunk::Data { remaining } => {
                let take = remaining.min(input.len());
                lines.extend_from_slice(&input[..take]);
                input = &input[take..];
                *state = match remaining - take {
                    0 => Chunk::DataEnd { crlf: 0 },
                    remaining => Chunk::Data { remaining },
                };
                continue;
            }
            Chunk::Size { size, digits } => match (byte as char).to_digit(16) {
                Some(digit) if digits < 16 => {
                    *state = Chunk::Size {
                        size: size * 16 + digit as usize,
                        digits: digits + 1,
                    }
                }
                None if byte == b'\r' && digits > 0 => *state = Chunk::SizeEnd { size },
                _ => return malformed(state, decoded),
            },
            Chunk::SizeEnd { size } if byte == b'\n' => {
                *state = match size {
                    0 => {
                        decoded.closed = true;
                        Chunk::Over
                    }
                    remaining => Chunk::Data { remaining },
                }
            }
            Chunk::DataEnd { crlf: 0 } if byte == b'\r' => *state = Chunk::DataEnd { crlf: 1 },
            Chunk::DataEnd { crlf: 1 } if byte == b'\n' => {
                *state = Chunk::Size { size: 0, digits: 0 }
            }
            _ => return malformed(state, decoded),
        }
        input = rest;
    }
    decoded
}

/// A body the decoder cannot follow: nothing more of it is decoded.
fn malformed(state: &mut Chunk, mut decoded: Decoded) -> Decoded {
    decoded.malformed += 1;
    *state = Chunk::Over;
    decoded
}

fn push_events(
    line: &mut Vec<u8>,
    last_seq: &mut Option<u64>,
    mut input: &[u8],
    lines: &mut Vec<u8>,
) -> Decoded {
    let mut decoded = Decoded::default();
    while !input.is_empty() {
        let Some(end) = memchr::memchr(b'\n', input) else {
            line.extend_from_slice(input);
            break;
        };
        let whole: &[u8] = if line.is_empty() {
            &input[..end]
        } else {
            line.extend_from_slice(&input[..end]);
            line
        };
        if let Some(data) = whole.strip_prefix(b"data: ") {
            lines.extend_from_slice(data);
            lines.push(b'\n');
        } else if let Some(id) = whole.strip_prefix(b"id: ") {
            let seq = id
                .iter()
                .position(|&b| b == b'-')
                .and_then(|dash| std::str::from_utf8(&id[dash + 1..]).ok())
                .and_then(|seq| seq.parse::<u64>().ok());
            match (seq, *last_seq) {
                (Some(seq), Some(last)) if seq == last + 1 => *last_seq = Some(seq),
                (Some(seq), None) => *last_seq = Some(seq),
                _ => decoded.malformed += 1,
            }
        } else if !whole.is_empty() {
            decoded.malformed += 1;
        }
        line.clear();
        input = &input[end + 1..];
    }
    decoded
}

/// Checks both decoders on bodies split at every byte. A `harness = false` bench never
/// compiles `#[cfg(test)]` code, so this runs at every start (like `line::self_check`) and
/// keeps the decoders honest in CI's `--quick` run.
pub fn self_check() -> Result<(), String> {
    let body = b"4\r\nab\nc\r\n2\r\nd\n\r\n0\r\n\r\n";
    let events = b"id: 00000000000000ab-7\ndata: one\n\nid: 00000000000000ab-8\ndata: two\n\n";
    for (stream, input, want, closed) in [
        (Stream::Chunks, &body[..], &b"ab\ncd\n"[..], true),
        (Stream::Events, &events[..], &b"one\ntwo\n"[..], false),
    ] {
        for at in 0..=input.len() {
            let mut decoder = Decoder::new(stream);
            let mut lines = Vec::new();
            let first = decoder.push(&input[..at], &mut lines);
            let second = decoder.push(&input[at..], &mut lines);
            let faults = first.malformed + second.malformed;
            if lines != want || faults > 0 || (first.closed || second.closed) != closed {
                return Err(format!(
                    "{} decoder: split at {at}: wrong lines",
                    stream.path()
                ));
            }
        }
    }
    let gap = b"id: 00000000000000ab-7\ndata: one\n\nid: 00000000000000ab-9\ndata: x\n\n";
    let bad_chunk = b"4\r\nab\ncXX";
    for (stream, input) in [(Stream::Events, &gap[..]), (Stream::Chunks, &bad_chunk[..])] {
        if Decoder::new(stream).push(input, &mut Vec::new()).malformed != 1 {
            return Err(format!("{} decoder: a fault went unseen", stream.path()));
        }
    }
    Ok(())
}
