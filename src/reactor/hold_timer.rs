//! A microsecond timer in the poller, for holding a batch: `Poll::poll` timeouts are whole
//! milliseconds (epoll_wait rounds up), far too coarse for holding lines for a few hundred
//! microseconds. A timerfd registered in the same `Poll` fires as an ordinary event.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// A one-shot monotonic timer whose expiry is a readable event.
pub struct HoldTimer {
    fd: OwnedFd,
    armed: bool,
}

impl HoldTimer {
    /// Creates the timer and registers it under `token`.
    pub fn register(registry: &Registry, token: Token) -> io::Result<HoldTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
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
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed = true;
        Ok(())
    }

    /// Consumes the expiry after the timer's event, so the next expiry raises a new edge.
    pub fn acknowledge(&mut self) {
        let mut expirations = [0u8; 8];
        // A failure (EAGAIN: nothing expired) needs no handling: there is nothing to consume.
        let _ = rustix::io::read(&self.fd, &mut expirations);
        self.armed = false;
    }
}
