//! RFC 6455 WebSocket frames, pure: client bytes in, lines and control replies out; lines
//! in, server frames out. No sockets, no mio, no knowledge of other clients.
//!
//! Each data message a client sends (text or binary, possibly fragmented, with control
//! frames between the fragments) becomes its payload plus `\n`, so an embedded `\n` splits
//! it into several lines, exactly as the same bytes sent over plain TCP would be. A message
//! is delivered only once it is complete: one longer than `max_line` is refused from its
//! frame header, before any of it is buffered, and none of it is ever broadcast.
//!
//! Cost: each payload byte is unmasked once, straight into the caller's line buffer when a
//! whole unfragmented frame is at hand (the common case); only a message split across reads
//! or frames is held here, bounded by `max_line`.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key before hashing it.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Longest control frame payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header a client sends: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: usize = 14;

/// The `Sec-WebSocket-Accept` value answering a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut hash = Sha1::new();
    hash.update(client_key.trim().as_bytes());
    hash.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(hash.finalize())
}

/// Frame opcodes (RFC 6455 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Close status codes this server sends (RFC 6455 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal = 1000,
    GoingAway = 1001,
    ProtocolError = 1002,
    InvalidPayload = 1007,
    MessageTooBig = 1009,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// Why decoding stopped: the client closed, or broke the protocol (answer with the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The client sent a Close frame, with this status code if it gave one.
    Closed(Option<u16>),
    /// A violation: the connection must be closed with this code.
    Fail(CloseCode, &'static str),
}

/// What one call to [`Decoder::push`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Lines appended to the caller's buffer (each with its `\n`).
    pub lines: usize,
    /// Pings to answer: their payloads were appended to the caller's pong buffer as frames.
    pub pongs: usize,
    /// Set when the client is done (Close) or must be closed; nothing after it was decoded.
    pub stop: Option<Stop>,
}

/// The frame being received: its header is decoded, `remaining` payload bytes are to come.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: Opcode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes already unmasked (the mask's phase).
    done: usize,
    remaining: usize,
}

/// One client's decoding state between reads.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The start of a frame header split across reads (at most `MAX_HEADER` bytes).
    header: Vec<u8>,
    frame: Option<Frame>,
    /// The data message being assembled from fragments or across reads; never longer than
    /// `max_line`. Empty (and unallocated) between messages.
    message: Vec<u8>,
    /// The opcode of the data message in progress (Text or Binary), if any.
    message_kind: Option<Opcode>,
    /// The payload of a control frame split across reads (at most 125 bytes).
    control: Vec<u8>,
}

impl Decoder {
    /// Bytes of an unfinished message held here.
    pub fn unfinished_len(&self) -> usize {
        self.message.len()
    }

    /// Decodes `input`: each complete data message is appended to `lines_out` as its payload
    /// plus `\n`; each ping is answered by a pong frame appended to `pongs_out`. Stops at a
    /// Close frame or a violation (the rest of `input` is ignored: the client is leaving).
    pub fn push(
        &mut self,
        mut input: &[u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
        pongs_out: &mut Vec<u8>,
    ) -> Decoded {
        let mut decoded = Decoded {
            lines: 0,
            pongs: 0,
            stop: None,
        };
        while !input.is_empty() {
            let frame = match self.frame {
                Some(frame) => frame,
                None => match self.take_header(&mut input, max_line) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break, // the header's rest is in a later read
                    Err(stop) => {
                        decoded.stop = Some(stop);
                        break;
                    }
                },
            };
            match self.take_payload(frame, &mut input, lines_out, pongs_out, &mut decoded) {
                Ok(()) => {}
                Err(stop) => {
                    decoded.stop = Some(stop);
                    break;
                }
            }
        }
        if decoded.stop.is_some() {
            *self = Decoder::default();
        }
        decoded
    }

    /// Takes a frame header from the front of `input` (completing one split across reads)
    /// and checks it against the protocol and `max_line`. `Ok(None)`: incomplete, all of
    /// `input` kept.
    fn take_header(&mut self, input: &mut &[u8], max_line: usize) -> Result<Option<Frame>, Stop> {
        let carried = self.header.len();
        let available: &[u8] = if carried == 0 {
            input
        } else {
            let take = input.len().min(MAX_HEADER - carried);
            self.header.extend_from_slice(&input[..take]);
            &self.header
        };
        let Some((frame, header_len)) = parse_header(available)? else {
            if carried == 0 {
                self.header.extend_from_slice(input);
            }
            *input = &[];
            return Ok(None);
        };
        // Bytes of `input` that belonged to the header.
        let used = header_len - carried;
        *input = &input[used..];
        self.header.clear();
        self.check_frame(&frame, max_line)?;
        if !frame.opcode.is_control() && frame.opcode != Opcode::Continuation {
            self.message_kind = Some(frame.opcode);
        }
        self.frame = Some(frame);
        Ok(Some(frame))
    }

    /// The rules a frame header must meet given the message in progress.
    fn check_frame(&self, frame: &Frame, max_line: usize) -> Result<(), Stop> {
        let protocol = |why| Err(Stop::Fail(CloseCode::ProtocolError, why));
        match frame.opcode {
            Opcode::Continuation if self.message_kind.is_none() => {
                protocol("continuation frame without a message in progress")
            }
            Opcode::Text | Opcode::Binary if self.message_kind.is_some() => {
                protocol("new message before the previous one ended")
            }
            op if op.is_control() && !frame.fin => protocol("fragmented control frame"),
            op if op.is_control() && frame.remaining > MAX_CONTROL_PAYLOAD => {
                protocol("control frame longer than 125 bytes")
            }
            op if !op.is_control()
                && self.message.len().saturating_add(frame.remaining) > max_line =>
            {
                Err(Stop::Fail(CloseCode::MessageTooBig, "message too long"))
            }
            _ => Ok(()),
        }
    }

    /// Takes what `input` holds of the current frame's payload; completes the frame (and
    /// its message) when all of it is there.
    fn take_payload(
        &mut self,
        mut frame: Frame,
        input: &mut &[u8],
        lines_out: &mut Vec<u8>,
        pongs_out: &mut Vec<u8>,
        decoded: &mut Decoded,
    ) -> Result<(), Stop> {
        let take = input.len().min(frame.remaining);
        let (chunk, rest) = input.split_at(take);
        *input = rest;
        let whole_frame_here = frame.done == 0 && take == frame.remaining;
        if frame.opcode.is_control() {
            let start = self.control.len();
            self.control.extend_from_slice(chunk);
            unmask(&mut self.control[start..], frame.mask, frame.done);
        } else if whole_frame_here && frame.fin && self.message.is_empty() {
            // The common case: a whole message in one frame in one read, unmasked straight
            // into the lines.
            let start = lines_out.len();
            lines_out.extend_from_slice(chunk);
            unmask(&mut lines_out[start..], frame.mask, 0);
            // The message's kind, not the frame's: a fragmented Text message may end here
            // in a Continuation frame.
            let text = self.message_kind == Some(Opcode::Text);
            if text && std::str::from_utf8(&lines_out[start..]).is_err() {
                lines_out.truncate(start);
                return Err(invalid_utf8());
            }
            decoded.lines += memchr::memchr_iter(b'\n', &lines_out[start..]).count() + 1;
            lines_out.push(b'\n');
            self.message_kind = None;
            self.frame = None;
            return Ok(());
        } else {
            let start = self.message.len();
            self.message.extend_from_slice(chunk);
            unmask(&mut self.message[start..], frame.mask, frame.done);
        }
        frame.done += take;
        frame.remaining -= take;
        if frame.remaining > 0 {
            self.frame = Some(frame);
            return Ok(());
        }
        self.frame = None;
        match frame.opcode {
            Opcode::Ping => {
                encode_header(Opcode::Pong, self.control.len(), pongs_out);
                pongs_out.extend_from_slice(&self.control);
                decoded.pongs += 1;
                self.control.clear();
            }
            Opcode::Pong => self.control.clear(),
            Opcode::Close => return Err(close_status(&std::mem::take(&mut self.control))),
            _ if frame.fin => decoded.lines += self.finish_message(lines_out)?,
            _ => {}
        }
        Ok(())
    }

    /// Appends the completed message (plus `\n`) to `lines_out`; returns its line count.
    fn finish_message(&mut self, lines_out: &mut Vec<u8>) -> Result<usize, Stop> {
        let kind = self.message_kind.take();
        let message = std::mem::take(&mut self.message);
        if kind == Some(Opcode::Text) && std::str::from_utf8(&message).is_err() {
            return Err(invalid_utf8());
        }
        lines_out.extend_from_slice(&message);
        lines_out.push(b'\n');
        Ok(memchr::memchr_iter(b'\n', &message).count() + 1)
    }
}

fn invalid_utf8() -> Stop {
    Stop::Fail(CloseCode::InvalidPayload, "text message is not valid UTF-8")
}

/// Parses a client frame header at the start of `bytes`: `Ok(None)` if incomplete.
fn parse_header(bytes: &[u8]) -> Result<Option<(Frame, usize)>, Stop> {
    let protocol = |why| Err(Stop::Fail(CloseCode::ProtocolError, why));
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return protocol("reserved bits set (no extension was negotiated)");
    }
    let Some(opcode) = Opcode::from_bits(first & 0x0F) else {
        return protocol("unknown opcode");
    };
    if second & 0x80 == 0 {
        return protocol("client frame not masked");
    }
    let (length, at) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut be = [0; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if length >> 63 != 0 {
        return protocol("payload length with its top bit set");
    }
    let Some(mask) = bytes.get(at..at + 4) else {
        return Ok(None);
    };
    let frame = Frame {
        opcode,
        fin: first & 0x80 != 0,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        done: 0,
        // Saturating: a length past usize fails the max_line check anyway.
        remaining: usize::try_from(length).unwrap_or(usize::MAX),
    };
    Ok(Some((frame, at + 4)))
}

/// The status of a Close frame's payload: none, or a valid code (and UTF-8 reason).
fn close_status(payload: &[u8]) -> Stop {
    match payload {
        [] => Stop::Closed(None),
        [_] => Stop::Fail(
            CloseCode::ProtocolError,
            "close frame with a 1-byte payload",
        ),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                Stop::Fail(CloseCode::ProtocolError, "invalid close code")
            } else if std::str::from_utf8(reason).is_err() {
                invalid_utf8()
            } else {
                Stop::Closed(Some(code))
            }
        }
    }
}

/// XORs `data` with `mask`, `offset` bytes into the payload (four bytes at a time: the
/// compiler turns this into wide XORs).
fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let phase = offset % 4;
    let mask: [u8; 4] = std::array::from_fn(|j| mask[(phase + j) % 4]);
    let mut words = data.chunks_exact_mut(4);
    for word in &mut words {
        for (byte, m) in word.iter_mut().zip(mask) {
            *byte ^= m;
        }
    }
    for (byte, m) in words.into_remainder().iter_mut().zip(mask) {
        *byte ^= m;
    }
}

/// Appends a server frame header (final, unmasked) for a payload of `len` bytes.
pub fn encode_header(opcode: Opcode, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode as u8);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends one line (its `\n` left off) as one message: Text when it is valid UTF-8 (what
/// a browser can show), Binary otherwise (bytes unchanged).
pub fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    let payload = line.strip_suffix(b"\n").unwrap_or(line);
    let opcode = if std::str::from_utf8(payload).is_ok() {
        Opcode::Text
    } else {
        Opcode::Binary
    };
    encode_header(opcode, payload.len(), out);
    out.extend_from_slice(payload);
}

/// A Close frame with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    // A control payload is at most 125 bytes: 2 for the code, the rest for the reason.
    let reason = &reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    encode_header(Opcode::Close, 2 + reason.len(), &mut frame);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// A Ping frame (empty payload): asks an idle client to prove it is still there.
pub fn ping_frame() -> [u8; 2] {
    [0x80 | Opcode::Ping as u8, 0]
}

#[cfg(test)]
mod tests;
