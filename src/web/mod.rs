//! The `--http` front door: the page and its policy, the metrics, the Origin check.

pub mod bodies;
pub mod front;
pub mod metrics;
pub mod origin;
pub mod page;
pub mod requests;
