//! What an operator sees: counters, the one logger, rate-limited log lines.

pub mod log_limit;
pub mod logger;
pub mod stats;
