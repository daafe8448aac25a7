//! The WebSocket client side the generator needs (RFC 6455): the upgrade, and a streaming
//! reader that turns the server's frames back into the lines they carry. Frame headers are
//! parsed and frames written by tungstenite's codec; what is here is only the streaming
//! (payloads passed on as they arrive, without a copy per frame).
//!
//! broadcast-server sends each line as one final, unmasked frame whose payload is the line
//! without its `\n`: Text (0x81) when it is valid UTF-8, Binary (0x82) otherwise. Every
//! line of the bench is ASCII, so every data frame must be a whole Text frame; its payload
//! plus `\n` is handed to the same line checks as a TCP reader's bytes. Payload bytes are
//! passed on as they arrive and the `\n` when the frame is complete, so a frame split
//! across reads leaves an unfinished line, carried like a TCP reader's: a line counts in
//! the read that completes its frame, at that read's arrival time.

use std::io::Cursor;
use std::net::{SocketAddr, TcpStream};

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::frames;

/// Longest server frame header: 2 + 8 (length) + 4 (a mask, which a server must not send).
const MAX_HEADER: usize = 14;
/// Longest control frame payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// The mask of the client's pongs (a client must mask every frame; any key will do).
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x8e];

const TEXT: OpCode = OpCode::Data(Data::Text);
const CLOSE: OpCode = OpCode::Control(Control::Close);
const PING: OpCode = OpCode::Control(Control::Ping);
const PONG: OpCode = OpCode::Control(Control::Pong);

/// Asks the web listener at `addr` for an upgrade on `stream` and reads the response head
/// (no frame after it); fails unless it is `101`.
pub fn handshake(stream: &mut TcpStream, addr: SocketAddr) -> Result<(), String> {
    let request = frames::upgrade_request(&addr.to_string(), "");
    crate::net::ask(stream, &request, "HTTP/1.1 101 ", "WebSocket upgrade")
}

/// What the frame whose payload is arriving is, and so what becomes of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// A line: passed on, then its `\n`.
    Line,
    /// A ping's: answered by a pong with the same payload.
    Ping,
    /// Skipped: a pong's, or that of a frame counted as malformed.
    Skip,
}

/// The frame being received: its header is decoded, `remaining` payload bytes are to come.
#[derive(Clone, Copy, Debug)]
struct Frame {
    payload: Payload,
    remaining: u64,
}

/// What one call to [`Deframer::push`] found besides the lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Frames whose header no correct server sends the bench (not a final Text frame, or a
    /// ping or pong, or a control frame longer than 125 bytes, or masked): their payloads
    /// are dropped, so their lines count as lost too.
    pub malformed: u64,
    /// The server sent a Close frame; nothing after it was decoded.
    pub closed: bool,
}

/// One WebSocket reader's place in the server's frames, between reads.
#[derive(Debug, Default)]
pub struct Deframer {
    /// The start of a frame header split across reads (at most `MAX_HEADER` bytes).
    header: Vec<u8>,
    frame: Option<Frame>,
    /// The payload of a ping split across reads (at most 125 bytes).
    ping: Vec<u8>,
}

impl Deframer {
    /// Decodes `input`: each data frame's payload is appended to `lines` as it arrives and
    /// its `\n` once the frame is complete; each ping is answered by a masked pong appended
    /// to `pongs`. Stops at a Close frame.
    pub fn push(&mut self, mut input: &[u8], lines: &mut Vec<u8>, pongs: &mut Vec<u8>) -> Decoded {
        let mut decoded = Decoded::default();
        while !input.is_empty() {
            let frame = match self.frame {
                Some(frame) => frame,
                None => match self.take_header(&mut input) {
                    Header::Frame(frame) => frame,
                    Header::Incomplete => break,
                    Header::Close => {
                        decoded.closed = true;
                        break;
                    }
                    Header::Malformed(frame) => {
                        decoded.malformed += 1;
                        frame
                    }
                },
            };
            self.take_payload(frame, &mut input, lines, pongs);
        }
        decoded
    }

    /// Takes a frame header from the front of `input`, completing one split across reads.
    fn take_header(&mut self, input: &mut &[u8]) -> Header {
        let carried = self.header.len();
        let available: &[u8] = if carried == 0 {
            input
        } else {
            let take = input.len().min(MAX_HEADER - carried);
            self.header.extend_from_slice(&input[..take]);
            &self.header
        };
        let Some((header, header_len)) = parse_header(available) else {
            if carried == 0 {
                self.header.extend_from_slice(input);
            }
            *input = &[];
            return Header::Incomplete;
        };
        *input = &input[header_len - carried..];
        self.header.clear();
        header
    }

    /// Takes what `input` holds of the current frame's payload.
    fn take_payload(
        &mut self,
        mut frame: Frame,
        input: &mut &[u8],
        lines: &mut Vec<u8>,
        pongs: &mut Vec<u8>,
    ) {
        let take = input
            .len()
            .min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let (chunk, rest) = input.split_at(take);
        *input = rest;
        match frame.payload {
            Payload::Line => lines.extend_from_slice(chunk),
            Payload::Ping => self.ping.extend_from_slice(chunk),
            Payload::Skip => {}
        }
        frame.remaining -= take as u64;
        if frame.remaining > 0 {
            self.frame = Some(frame);
            return;
        }
        self.frame = None;
        match frame.payload {
            Payload::Line => lines.push(b'\n'),
            Payload::Ping => {
                pong(&self.ping, pongs);
                self.ping.clear();
            }
            Payload::Skip => {}
        }
    }
}

/// A frame header as [`Deframer::take_header`] found it.
enum Header {
    /// More bytes are needed.
    Incomplete,
    Frame(Frame),
    /// A Close frame.
    Close,
    /// A frame a correct server does not send the bench; its payload is to be skipped.
    Malformed(Frame),
}

/// Parses a server frame header at the start of `bytes` (tungstenite's parser): `None` if
/// incomplete, else the header and its length. Its first byte is judged as sent (RSV bits
/// and reserved opcodes make a frame malformed); the length is read from a copy whose first
/// byte names a valid opcode, since tungstenite stops at a reserved one and its payload
/// must still be skipped whole.
fn parse_header(bytes: &[u8]) -> Option<(Header, usize)> {
    let (&first, _) = bytes.split_first()?;
    let mut head = [0u8; MAX_HEADER];
    let len = bytes.len().min(MAX_HEADER);
    head[..len].copy_from_slice(&bytes[..len]);
    head[0] = first & 0x80 | 0x02; // FIN as sent, Binary: parses whatever the opcode was
    let mut cursor = Cursor::new(&head[..len]);
    let (header, remaining) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return None,
        // No error is left for tungstenite to find in the copy; should one come, the two
        // bytes count as a malformed frame rather than jam the reader.
        Err(_) => {
            let skip = Frame {
                payload: Payload::Skip,
                remaining: 0,
            };
            return Some((Header::Malformed(skip), 2.min(bytes.len())));
        }
    };
    let header_len = cursor.position() as usize;
    let frame = |payload| Frame { payload, remaining };
    let control = remaining <= MAX_CONTROL_PAYLOAD;
    let reserved_bits = first & 0x70 != 0;
    let header = match (first & 0x80 != 0, OpCode::from(first & 0x0f)) {
        _ if header.mask.is_some() || reserved_bits => Header::Malformed(frame(Payload::Skip)),
        (true, OpCode::Data(Data::Text)) => Header::Frame(frame(Payload::Line)),
        (true, OpCode::Control(Control::Ping)) if control => Header::Frame(frame(Payload::Ping)),
        (true, OpCode::Control(Control::Pong)) if control => Header::Frame(frame(Payload::Skip)),
        (true, OpCode::Control(Control::Close)) if control => Header::Close,
        _ => Header::Malformed(frame(Payload::Skip)),
    };
    Some((header, header_len))
}

/// Appends one final frame with `opcode`, masked with `mask`.
fn frame_into(opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8], out: &mut Vec<u8>) {
    frames::frame_into(u8::from(opcode), true, mask, payload, out);
}

/// Appends a masked pong carrying `payload` (at most 125 bytes).
fn pong(payload: &[u8], out: &mut Vec<u8>) {
    frame_into(OpCode::Control(Control::Pong), Some(MASK), payload, out);
}

/// Appends a server frame (final, unmasked) with `opcode`.
fn server_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    frame_into(opcode, None, payload, out);
}

/// Decodes a hand-made run of server frames cut into reads of every size from 1 byte to
/// all of it, and checks the lines, pongs and faults; like [`crate::line::self_check`], run
/// at every start because benches compile no tests.
pub fn self_check() -> Result<(), String> {
    let short = b"a line of 63 bytes, as in the scenario, with a 2-byte header..";
    let long = [b'y'; 300];
    let mut stream = Vec::new();
    let mut want = Vec::new();
    // Two lines with 2-byte headers, a ping (the server's are empty; this one is not), a
    // line with a 4-byte header, an empty line, five malformed frames (Binary, masked Text,
    // two reserved opcodes, an RSV bit: skipped), a pong (skipped), a last line, a Close,
    // and bytes after it.
    for payload in [&short[..], b"second"] {
        server_frame(TEXT, payload, &mut stream);
        want.extend_from_slice(payload);
        want.push(b'\n');
    }
    server_frame(PING, b"are you there", &mut stream);
    server_frame(TEXT, &long, &mut stream);
    want.extend_from_slice(&long);
    want.push(b'\n');
    server_frame(TEXT, b"", &mut stream);
    want.push(b'\n');
    server_frame(OpCode::Data(Data::Binary), b"binary", &mut stream);
    frame_into(TEXT, Some([1, 2, 3, 4]), b"mask", &mut stream);
    // A reserved data opcode and a reserved control opcode, each with a payload that looks
    // like a frame (skipped whole, not decoded), and a Text frame with an RSV bit set.
    frames::frame_into(0x3, true, None, &[0x81, 0x02, b'h', b'i'], &mut stream);
    frames::frame_into(0xb, true, None, &[0x81, 0x00, 0x00], &mut stream);
    let rsv = stream.len();
    server_frame(TEXT, b"rsv", &mut stream);
    stream[rsv] |= 0x40;
    server_frame(PONG, b"", &mut stream);
    server_frame(TEXT, b"last", &mut stream);
    want.extend_from_slice(b"last\n");
    server_frame(CLOSE, &1000u16.to_be_bytes(), &mut stream);
    server_frame(TEXT, b"after the close", &mut stream);
    let mut want_pong = Vec::new();
    pong(b"are you there", &mut want_pong);
    for read_len in 1..=stream.len() {
        let mut deframer = Deframer::default();
        let (mut lines, mut pongs) = (Vec::new(), Vec::new());
        let mut found = Decoded::default();
        for read in stream.chunks(read_len) {
            let decoded = deframer.push(read, &mut lines, &mut pongs);
            found.malformed += decoded.malformed;
            if decoded.closed {
                found.closed = true;
                break;
            }
        }
        let expected = Decoded {
            malformed: 5,
            closed: true,
        };
        if lines != want || pongs != want_pong || found != expected {
            return Err(format!(
                "websocket deframer, reads of {read_len} bytes: {} line bytes (want {}), \
                 {} pong bytes (want {}), {found:?} (want {expected:?})",
                lines.len(),
                want.len(),
                pongs.len(),
                want_pong.len()
            ));
        }
    }
    Ok(())
}
