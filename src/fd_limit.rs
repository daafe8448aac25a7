//! The file-descriptor budget: every client is one descriptor, and the default soft limit
//! (often 1024) is far below what a broadcast server needs.

use std::io;

/// Descriptors the server needs besides its clients: stdio, the listener, epoll, the signal
/// pipe, and headroom for a connection being refused.
pub const RESERVED_FDS: u64 = 16;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as the Go runtime and NATS do, and
/// returns the soft limit now in force.
pub fn raise_to_hard_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` behind the pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
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
