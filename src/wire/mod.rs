//! Pure codecs: lines, WebSocket frames, HTTP requests and answers, `HOST[:PORT]`, and the
//! line port's commands for rooms (parsed here, not yet served: issue 17). No sockets.

pub mod commands;
pub mod framing;
pub mod host_port;
pub mod http;
pub mod websocket;
