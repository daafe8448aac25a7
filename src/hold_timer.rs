//! A microsecond timer in the poller, for coalescing: `Poll::poll` timeouts are whole
//! milliseconds (epoll_wait rounds up), far too coarse for holding a batch of lines for
//! 200 µs. A timerfd registered in the same `Poll` fires as an ordinary event.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A one-shot monotonic timer whose expiry is a readable event.
pub struct HoldTimer {
    fd: OwnedFd,
    armed: bool,
}

impl HoldTimer {
    /// Creates the timer and registers it under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<HoldTimer> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd that
        // we own from here on.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(HoldTimer { fd, armed: false })
    }

    /// Whether the timer is set and has not fired yet.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Sets the timer to fire once, `after` from now (at least 1 ns: zero would disarm it).
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: timerfd_settime reads one itimerspec from a live local; the old-value
        // pointer may be null.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = true;
        Ok(())
    }

    /// Consumes the expiry after the timer's event, so the next expiry raises a new edge.
    pub fn acknowledge(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: read writes at most 8 bytes into a live 8-byte buffer. A failure
        // (EAGAIN: nothing expired) needs no handling: there is nothing to consume.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        self.armed = false;
    }
}
