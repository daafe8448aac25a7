//! WebSocket frames for tests and the bench (dev-only; the bench includes this file by
//! path), written by tungstenite's encoder: well-formed ones, and broken ones on purpose
//! (unmasked, a reserved opcode, an over-long control frame), which the encoder writes as
//! asked. Also the upgrade request both send.

use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// The key clients send; the server must answer with [`ACCEPT`], its RFC 6455 digest.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket upgrade request for `/ws` with this `Host`, and `extra` headers (each ending
/// in `\r\n`) before the upgrade's own.
pub fn upgrade_request(host: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Appends one frame with `opcode` (any of the sixteen), `fin`, masked with `mask` (a
/// client must mask; a server must not) to `out`.
pub fn frame_into(opcode: u8, fin: bool, mask: Option<[u8; 4]>, payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: fin,
        opcode: OpCode::from(opcode),
        mask,
        ..FrameHeader::default()
    };
    Frame::from_payload(header, payload.to_vec().into())
        .format(out)
        .expect("formatting into a Vec cannot fail");
}
