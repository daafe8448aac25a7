//! One client connection: its queue, sends and flushes, interest, and how it leaves.

pub mod connection;
pub mod socket_queues;
