//! Latency histogram: log-linear buckets (1 µs exact below 64 µs, then 32 buckets per power of
//! two, about 3% wide), so recording is one index computation and percentiles stay accurate.

use std::time::Duration;

const EXACT: u64 = 64;
const SUB_BUCKETS: usize = 32;
const BUCKETS: usize = 64 + 40 * SUB_BUCKETS;

/// Counts of latencies in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u32::MAX)) as u64;
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// The latency below which `q` (0..=1) of the samples fall, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound_us(i).min(self.max_us) as f64 / 1000.0;
            }
        }
        self.max_ms()
    }

    pub fn max_ms(&self) -> f64 {
        self.max_us as f64 / 1000.0
    }
}

fn index(us: u64) -> usize {
    if us < EXACT {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros() as usize; // >= 6
    let shift = exponent - 5;
    let mantissa = (us >> shift) as usize; // 32..64
    (64 + (shift - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)).min(BUCKETS - 1)
}

fn upper_bound_us(index: usize) -> u64 {
    if index < EXACT as usize {
        return index as u64;
    }
    let shift = (index - 64) / SUB_BUCKETS + 1;
    let mantissa = ((index - 64) % SUB_BUCKETS + SUB_BUCKETS) as u64;
    ((mantissa + 1) << shift) - 1
}
