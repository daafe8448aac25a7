//! A WebSocket client for tests that sends exactly the frames it means, broken ones
//! included, and reads exactly the frames the server sends: frames are written and parsed
//! by tungstenite's frame codec (`Frame::format`, `FrameHeader::parse`); only the choice of
//! what to send (an unmasked frame, a reserved opcode, a fragmented ping) is the test's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use tungstenite::protocol::frame::FrameHeader;

use super::DEADLINE;
pub use super::frames::upgrade_request;
use super::frames::{self, ACCEPT};

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One client frame, masked as a client must (`masked: false` breaks the protocol), with
/// any opcode (reserved ones too) and any payload length (over-long control frames too).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    let mask = masked.then_some([0x12, 0x34, 0x56, 0x78]);
    frames::frame_into(opcode, fin, mask, payload, &mut out);
    out
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub struct WsClient {
    pub stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    pending: Vec<u8>,
}

impl WsClient {
    /// Connects to the web listener at `addr` and completes the upgrade (checking the
    /// server's accept key); does not wait for the server to log it.
    pub fn connect_raw(addr: SocketAddr) -> WsClient {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        WsClient::upgrade(stream, addr)
    }

    /// Like `connect_raw`, from a chosen local address.
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> WsClient {
        let stream = super::Client::connect_from(addr, local).stream;
        WsClient::upgrade(stream, addr)
    }

    /// Like `connect_raw`, to `path` (`/ws/NAME`: into room NAME).
    pub fn connect_path(addr: SocketAddr, path: &str) -> WsClient {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        WsClient::upgrade_at(stream, addr, path)
    }

    /// Sends the upgrade request on `stream` and checks the `101` answer.
    fn upgrade(stream: TcpStream, addr: SocketAddr) -> WsClient {
        WsClient::upgrade_at(stream, addr, "/ws")
    }

    fn upgrade_at(mut stream: TcpStream, addr: SocketAddr, path: &str) -> WsClient {
        stream.set_nodelay(true).unwrap();
        let request =
            upgrade_request(&addr.to_string(), "").replacen("GET /ws ", &format!("GET {path} "), 1);
        stream
            .write_all(request.as_bytes())
            .expect("send the upgrade");
        let mut client = WsClient {
            stream,
            pending: Vec::new(),
        };
        let head = client.read_http_head();
        assert!(
            head.starts_with("HTTP/1.1 101 ")
                && head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
            "no upgrade: {head}"
        );
        client
    }

    /// Reads an HTTP response head (through its blank line); the rest stays pending.
    pub fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.pending.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(self.fill(), "connection closed before the response head");
        }
    }

    /// Reads more bytes into `pending`; false at end of stream. Fails at the deadline.
    fn fill(&mut self) -> bool {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for the server");
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read failed (a reset is not a close): {e}"),
            }
        }
    }

    /// Sends one frame, masked as a client must (`masked: false` breaks the protocol).
    pub fn send_frame_with(&mut self, opcode: u8, fin: bool, payload: &[u8], masked: bool) {
        let frame = client_frame(opcode, fin, payload, masked);
        self.stream.write_all(&frame).expect("send a frame");
    }

    /// Shrinks (or sets) the receive buffer, as `Client::set_receive_buffer` does.
    pub fn set_receive_buffer(&self, bytes: usize) {
        socket2::SockRef::from(&self.stream)
            .set_recv_buffer_size(bytes)
            .expect("SO_RCVBUF");
    }

    pub fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        self.send_frame_with(opcode, fin, payload, true);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(TEXT, true, text.as_bytes());
    }

    /// The next frame from the server, or `None` at end of stream. Fails at the deadline.
    pub fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.pending) {
                self.pending.drain(..used);
                return Some(frame);
            }
            if !self.fill() {
                assert!(self.pending.is_empty(), "stream ended inside a frame");
                return None;
            }
        }
    }

    /// The next data message (pings are answered, pongs skipped on the way).
    pub fn read_message(&mut self) -> Frame {
        loop {
            let frame = self
                .read_frame()
                .expect("a message, not the end of the stream");
            match frame.opcode {
                PING => self.send_frame(PONG, true, &frame.payload),
                PONG => {}
                _ => return frame,
            }
        }
    }

    /// Asserts the next message is Text `text`.
    pub fn expect_text(&mut self, text: &str) {
        let frame = self.read_message();
        assert_eq!(
            (
                frame.opcode,
                String::from_utf8_lossy(&frame.payload).into_owned(),
                frame.fin
            ),
            (TEXT, text.to_string(), true)
        );
    }

    /// Asserts the next frame is a Close with `code`, then that the server closes the stream.
    pub fn expect_close(&mut self, code: u16) {
        let frame = self.read_message();
        assert_eq!(frame.opcode, CLOSE, "expected a close frame, got {frame:?}");
        assert_eq!(
            frame.payload[..2],
            code.to_be_bytes(),
            "close code: {frame:?}"
        );
        assert_eq!(
            self.read_frame(),
            None,
            "the server did not close after its close frame"
        );
    }
}

/// Parses one server frame (never masked) at the start of `bytes`: the frame and the bytes
/// it took, or `None` while it is incomplete.
fn parse_server_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    let mut cursor = std::io::Cursor::new(bytes);
    let (header, len) = FrameHeader::parse(&mut cursor).expect("a well-formed frame header")?;
    assert_eq!(header.mask, None, "the server masked a frame");
    let at = cursor.position() as usize;
    let payload = bytes.get(at..at + len as usize)?.to_vec();
    Some((
        Frame {
            fin: header.is_final,
            opcode: u8::from(header.opcode),
            payload,
        },
        at + len as usize,
    ))
}
