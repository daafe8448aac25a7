//! Pure codecs: lines, WebSocket frames, HTTP requests and answers. No sockets.

pub mod framing;
pub mod http;
pub mod websocket;
