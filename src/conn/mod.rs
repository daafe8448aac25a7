//! One client connection: its queue, sends and flushes, interest, and how it leaves.

pub mod connection;
pub mod reason;
pub mod socket;
pub mod socket_queues;
pub mod wire;
