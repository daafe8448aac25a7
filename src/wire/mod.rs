//! Pure codecs: lines, WebSocket frames, HTTP requests and answers. No sockets.

pub mod framing;
pub mod host_port;
pub mod http;
pub mod websocket;
