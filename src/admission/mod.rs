//! Who gets in: `--allow`/`--deny` rules, the per-address places, the descriptor limit.

pub mod access;
pub mod fd_limit;
