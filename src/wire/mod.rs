//! Pure codecs: lines, WebSocket frames, HTTP requests and answers, Server-Sent Events,
//! `HOST[:PORT]`, and the line port's commands for rooms. No sockets.

pub mod commands;
pub mod framing;
pub mod host_port;
pub mod http;
pub mod sse;
pub mod websocket;
