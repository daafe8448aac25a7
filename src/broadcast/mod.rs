//! The fan-out, pure and without mio: the batch of lines framed in one turn, its WebSocket
//! framing, and the history kept for newcomers.

pub mod batch;
pub mod framed_batch;
pub mod history;
