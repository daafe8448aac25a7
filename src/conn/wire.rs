//! How lines look on one client's wire, and what that wire alone decides: decoding input
//! into lines, which form of the batch the client takes, its farewell when sent away, and
//! (for WebSocket) whether a silent client is pinged or gone.
//!
//! The connection owns one [`Wire`] and the loop never asks which: a new wire (SSE, HTTP
//! chunks) is a new variant here and a new [`Form`] of the batch, nothing in the loop.

use std::time::{Duration, Instant};

use crate::broadcast::Form;
use crate::conn::reason::DisconnectReason;
use crate::wire::framing::{self, LineFramer};
use crate::wire::websocket::{self, CloseCode, Stop};

/// A client's wire: its decoder, and what it must remember between reads.
#[derive(Debug)]
pub enum Wire {
    /// Plain TCP (or TLS): newline-terminated lines both ways.
    Lines(LineWire),
    /// WebSocket: messages in, one frame per line out (boxed: line clients stay small).
    WebSocket(Box<WebSocketWire>),
    /// The body of `GET /lines`: the lines out as HTTP chunks (`chunked`), or as they are
    /// for an HTTP/1.0 reader (its body ends with the connection); nothing comes in (what
    /// a reader sends after its request is read and thrown away).
    HttpStream { chunked: bool },
    /// The body of `GET /events`: one Server-Sent Event per line out, the body ending with
    /// the connection; nothing comes in (as for `HttpStream`).
    EventStream,
}

/// A line client's framer, and whether its first line was screened for an HTTP request.
#[derive(Debug, Default)]
pub struct LineWire {
    framer: LineFramer,
    /// Whether its first line was checked for an HTTP request line (see
    /// [`DisconnectReason::HttpRequest`]).
    first_line_checked: bool,
}

/// A WebSocket client's decoder and liveness.
#[derive(Debug)]
pub struct WebSocketWire {
    decoder: websocket::Decoder,
    /// When the client last sent anything (any frame, a pong included).
    last_heard: Instant,
    /// Whether it was pinged since then.
    pinged: bool,
}

/// What a WebSocket client's silence calls for (see [`Wire::check_liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from recently enough, or already pinged and still within its time to answer.
    Fine,
    /// Silent for a ping interval: the caller queues a ping.
    Ping,
    /// Pinged, and silent for another interval: drop it.
    Gone,
}

impl Wire {
    /// The wire of a client accepted on the line port.
    pub fn lines() -> Wire {
        Wire::Lines(LineWire::default())
    }

    /// The wire of a client whose WebSocket upgrade was accepted just now.
    pub fn websocket() -> Wire {
        Wire::WebSocket(Box::new(WebSocketWire {
            decoder: websocket::Decoder::default(),
            last_heard: Instant::now(),
            pinged: false,
        }))
    }

    /// The form of the batch this client takes.
    pub fn form(&self) -> Form {
        match self {
            Wire::Lines(_) => Form::Lines,
            Wire::WebSocket(_) => Form::Frames,
            Wire::HttpStream { chunked: true } => Form::Chunks,
            Wire::HttpStream { chunked: false } => Form::Lines,
            Wire::EventStream => Form::Events,
        }
    }

    /// Turns one chunk of input into lines appended to `lines_out`; returns how many, and
    /// why the client must stop if it must. Replies the input calls for (a WebSocket
    /// client's pongs) are appended to `replies`.
    pub fn decode(
        &mut self,
        chunk: &[u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
        replies: &mut Vec<u8>,
    ) -> (usize, Option<DisconnectReason>) {
        match self {
            Wire::Lines(wire) => wire.push(chunk, max_line, lines_out),
            Wire::WebSocket(state) => {
                state.last_heard = Instant::now();
                state.pinged = false;
                let decoded = state.decoder.push(chunk, max_line, lines_out, replies);
                let stop = decoded.stop.map(|stop| match stop {
                    Stop::Closed(code) => DisconnectReason::WebSocketClosed { code },
                    Stop::Fail(CloseCode::MessageTooBig, _) => DisconnectReason::LineTooLong,
                    Stop::Fail(code, why) => DisconnectReason::WebSocketViolation {
                        code: code.code(),
                        why,
                    },
                });
                (decoded.lines, stop)
            }
            Wire::HttpStream { .. } | Wire::EventStream => (0, None),
        }
    }

    /// Bytes of the unfinished line (or message) held for the client.
    pub fn unfinished_line_len(&self) -> usize {
        match self {
            Wire::Lines(wire) => wire.framer.unfinished_len(),
            Wire::WebSocket(state) => state.decoder.unfinished_len(),
            Wire::HttpStream { .. } | Wire::EventStream => 0,
        }
    }

    /// Takes the unfinished line out (with a `\n`) into `lines_out`, so that nothing a
    /// client sent is lost when it goes. Returns how many lines it added. A WebSocket
    /// message is atomic: one the client never finished is not delivered.
    pub fn end_unfinished_line(&mut self, lines_out: &mut Vec<u8>) -> usize {
        match self {
            Wire::Lines(wire) => wire.finish(lines_out),
            Wire::WebSocket(_) | Wire::HttpStream { .. } | Wire::EventStream => 0,
        }
    }

    /// The line wire, to finish its unfinished line from the socket (WebSocket clients have
    /// none to finish).
    pub fn as_lines(&mut self) -> Option<&mut LineWire> {
        match self {
            Wire::Lines(wire) => Some(wire),
            Wire::WebSocket(_) | Wire::HttpStream { .. } | Wire::EventStream => None,
        }
    }

    /// Whether queued output is frames (or chunks), so that a farewell cannot follow a cut
    /// queue (where the frame being sent ends is not known).
    pub fn queues_frames(&self) -> bool {
        matches!(
            self,
            Wire::WebSocket(_) | Wire::HttpStream { chunked: true } | Wire::EventStream
        )
    }

    /// What the client is told as it is sent away for `reason`, on its own wire: an `ERR`
    /// line or a WebSocket Close frame (nothing when there is nothing to say).
    pub fn farewell(&self, reason: DisconnectReason, max_line: usize) -> Vec<u8> {
        match (self, reason) {
            (Wire::Lines(_), DisconnectReason::LineTooLong) => {
                format!("ERR line too long (max {max_line} bytes)\n").into_bytes()
            }
            (Wire::Lines(_), DisconnectReason::HttpRequest) => {
                b"ERR this port speaks lines, not HTTP (browsers use the --http listener)\n"
                    .to_vec()
            }
            (Wire::Lines(_), _) => Vec::new(),
            // The body's end: what it was owed is all there.
            (Wire::HttpStream { chunked: true }, DisconnectReason::Shutdown) => {
                b"0\r\n\r\n".to_vec()
            }
            (Wire::HttpStream { .. } | Wire::EventStream, _) => Vec::new(),
            (Wire::WebSocket(_), reason) => {
                let (code, why) = match reason {
                    DisconnectReason::LineTooLong => (
                        CloseCode::MessageTooBig.code(),
                        format!("message too long (max {max_line} bytes)"),
                    ),
                    DisconnectReason::WebSocketClosed { code } => {
                        (code.unwrap_or(CloseCode::Normal.code()), String::new())
                    }
                    DisconnectReason::WebSocketViolation { code, why } => (code, why.to_string()),
                    DisconnectReason::Shutdown => (
                        CloseCode::GoingAway.code(),
                        "server shutting down".to_string(),
                    ),
                    _ => return Vec::new(),
                };
                websocket::close_frame(code, &why)
            }
        }
    }

    /// For a WebSocket client silent for `interval`: a ping (once), or, if it was pinged
    /// and stayed silent for another `interval`, gone. A client still `behind` in what it
    /// is owed counts as heard (a ping would wait behind its queue: `--max-queue`, not
    /// silence, judges it). Line clients are always `Fine` (TCP keepalive watches them).
    pub fn check_liveness(&mut self, now: Instant, interval: Duration, behind: bool) -> Liveness {
        let Wire::WebSocket(state) = self else {
            return Liveness::Fine;
        };
        if behind {
            state.last_heard = now;
            state.pinged = false;
            return Liveness::Fine;
        }
        let silent = now.saturating_duration_since(state.last_heard);
        if silent < interval {
            return Liveness::Fine;
        }
        if state.pinged {
            return if silent >= interval * 2 {
                Liveness::Gone
            } else {
                Liveness::Fine
            };
        }
        state.pinged = true;
        Liveness::Ping
    }
}

impl LineWire {
    /// Frames `chunk` into `lines_out`; returns how many lines, and why the client must
    /// stop if it must (a line over `max_line`, or an HTTP request as its first line).
    pub fn push(
        &mut self,
        chunk: &[u8],
        max_line: usize,
        lines_out: &mut Vec<u8>,
    ) -> (usize, Option<DisconnectReason>) {
        let start = lines_out.len();
        let (lines, stop) = match self.framer.push(chunk, max_line, lines_out) {
            Ok(lines) => (lines, None),
            Err(too_long) => (too_long.lines_before, Some(DisconnectReason::LineTooLong)),
        };
        if self.refuse_http_first_line(lines_out, start, false) {
            return (0, Some(DisconnectReason::HttpRequest));
        }
        (lines, stop)
    }

    /// Bytes of the unfinished line.
    pub fn unfinished_len(&self) -> usize {
        self.framer.unfinished_len()
    }

    /// Ends the unfinished line with a `\n` into `lines_out`; returns how many lines.
    fn finish(&mut self, lines_out: &mut Vec<u8>) -> usize {
        let start = lines_out.len();
        let lines = self.framer.finish(lines_out);
        if self.refuse_http_first_line(lines_out, start, true) {
            return 0;
        }
        lines
    }

    /// Screens the client's first line (complete, or `unfinished` at its end), appended to
    /// `lines_out` from `start`: a web page's HTTP request (a no-cors POST to the line port)
    /// is taken out again, so none of it reaches anyone. True if it was.
    fn refuse_http_first_line(
        &mut self,
        lines_out: &mut Vec<u8>,
        start: usize,
        unfinished: bool,
    ) -> bool {
        if self.first_line_checked || lines_out.len() == start {
            return false;
        }
        self.first_line_checked = true;
        let first = lines_out[start..]
            .split(|&b| b == b'\n')
            .next()
            .unwrap_or_default();
        let http = match unfinished {
            false => framing::is_http_request_line(first),
            true => framing::starts_like_http_request(first),
        };
        if http {
            lines_out.truncate(start);
        }
        http
    }
}
