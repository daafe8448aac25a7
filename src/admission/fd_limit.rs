//! The file-descriptor budget: every client is one descriptor, and the default soft limit
//! (often 1024) is far below what a broadcast server needs.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the server needs besides its clients: stdio, the listener, epoll, the signal
/// pipes, the timer, and headroom for a connection being refused.
pub const RESERVED_FDS: u64 = 16;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as the Go runtime and NATS do, and
/// returns the soft limit now in force (`u64::MAX` for no limit).
pub fn raise_to_hard_limit() -> io::Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    let maximum = limit.maximum.unwrap_or(u64::MAX);
    if current >= maximum {
        return Ok(current);
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Ok(maximum),
        // Not allowed to raise it (some sandboxes): the old limit is still in force.
        Err(_) => Ok(current),
    }
}

/// How many clients fit in `fd_limit` descriptors.
pub fn clients_that_fit(fd_limit: u64) -> u64 {
    fd_limit.saturating_sub(RESERVED_FDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_back() {
        assert_eq!(clients_that_fit(1024), 1008);
        assert_eq!(clients_that_fit(3), 0);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let first = raise_to_hard_limit().expect("getrlimit works on Linux");
        assert!(first >= 1);
        assert_eq!(
            raise_to_hard_limit().expect("getrlimit works on Linux"),
            first
        );
    }
}
