//! The reactor: the `Poll`, the turn, timers and signals. It knows no protocol: it hands
//! readiness to the connection it names and asks components for their deadlines.

pub mod connections;
pub mod event_loop;
pub mod hold_timer;
pub mod shutdown;
pub mod signals;

pub use event_loop::{EventLoop, Exit};
pub mod listeners;
