//! Rate limiting for operator messages that a storm can repeat thousands of times a second
//! (a full server refusing a connection flood, `accept` failing for want of descriptors):
//! the first one of each window is logged, the rest are counted and reported in one summary
//! line when the window closes.

use std::time::{Duration, Instant};

/// How often a limited message may be logged.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One kind of message under a rate limit.
#[derive(Debug)]
pub struct RateLimit {
    /// When the current window opened (with a logged message); `None` before the first.
    window_start: Option<Instant>,
    /// Messages logged in the current window, and how many may be.
    admitted: u64,
    burst: u64,
    /// Messages held back in the current window.
    suppressed: u64,
}

impl Default for RateLimit {
    /// One message a window.
    fn default() -> Self {
        RateLimit::with_burst(1)
    }
}

impl RateLimit {
    /// Up to `burst` messages a window (at least one), then a summary.
    pub fn with_burst(burst: u64) -> RateLimit {
        RateLimit {
            window_start: None,
            admitted: 0,
            burst: burst.max(1),
            suppressed: 0,
        }
    }

    /// Whether to log this occurrence at `now`. When a new window opens, the count held back
    /// in the previous one is handed over first through [`RateLimit::take_summary`], so the
    /// caller must call that (it is due at [`RateLimit::summary_due_at`]).
    pub fn admit(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW || self.suppressed > 0 => {
                if self.suppressed == 0 && self.admitted < self.burst {
                    self.admitted += 1;
                    return true;
                }
                self.suppressed += 1;
                false
            }
            _ => {
                self.window_start = Some(now);
                self.admitted = 1;
                true
            }
        }
    }

    /// When the held-back count should be reported: at the end of a window that held some.
    pub fn summary_due_at(&self) -> Option<Instant> {
        match self.window_start {
            Some(start) if self.suppressed > 0 => Some(start + WINDOW),
            _ => None,
        }
    }

    /// The count held back in a window that has closed by `now` (reported once), and opens
    /// the next window: the summary line counts as that window's one message.
    pub fn take_summary(&mut self, now: Instant) -> Option<u64> {
        let due = self.summary_due_at()?;
        if now < due {
            return None;
        }
        self.window_start = Some(now);
        // The summary line counts as this window's messages.
        self.admitted = self.burst;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_logs_one_line_and_one_summary_per_window() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        assert!(limit.admit(t0));
        for i in 1..=1000 {
            assert!(!limit.admit(t0 + Duration::from_micros(i)));
        }
        assert_eq!(
            limit.take_summary(t0 + WINDOW / 2),
            None,
            "window still open"
        );
        assert_eq!(limit.summary_due_at(), Some(t0 + WINDOW));
        let t1 = t0 + WINDOW;
        // The storm goes on past the window: held back until the summary is taken.
        assert!(!limit.admit(t1));
        assert_eq!(limit.take_summary(t1), Some(1001));
        assert_eq!(limit.take_summary(t1), None, "reported once");
        assert!(!limit.admit(t1 + WINDOW / 2), "the summary opened a window");
        assert_eq!(limit.take_summary(t1 + WINDOW), Some(1));
    }

    #[test]
    fn a_burst_is_logged_whole_then_the_rest_is_summed() {
        let mut limit = RateLimit::with_burst(3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(limit.admit(t0 + Duration::from_millis(i)));
        }
        assert!(!limit.admit(t0 + Duration::from_millis(3)));
        assert_eq!(limit.take_summary(t0 + WINDOW), Some(1));
        assert!(!limit.admit(t0 + WINDOW), "the summary used up its window");
        assert_eq!(limit.take_summary(t0 + WINDOW * 2), Some(1));
        for i in 1..=3 {
            assert!(limit.admit(t0 + WINDOW * 3 + Duration::from_millis(i)));
        }
    }

    #[test]
    fn messages_a_window_apart_are_all_logged() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limit.admit(t0 + WINDOW * i));
            assert_eq!(limit.summary_due_at(), None);
        }
    }
}
