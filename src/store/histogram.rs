//! A histogram made of atomics, for distributions the stores report
//! (checks per Redis call, time waiting for a batch): observing is a few
//! relaxed adds, with no lock shared between requests.
//!
//! May depend on: nothing but std.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Fixed buckets, chosen at construction.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; the last bucket (+Inf) is implicit.
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, in millionths of the unit (µs for seconds),
    /// so it can be one atomic integer.
    sum_micros: AtomicU64,
}

/// A histogram's values at one instant, with its name, for `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub name: &'static str,
    pub help: &'static str,
    pub sum: f64,
    pub count: u64,
    /// (upper bound, observations in this bucket, not cumulative).
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one value, `n` times.
    pub fn observe_n(&self, value: f64, n: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(n, Relaxed);
        }
        // Saturating float-to-int conversion is what is wanted here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let micros = (value * 1e6) as u64;
        self.sum_micros.fetch_add(micros.saturating_mul(n), Relaxed);
    }

    pub fn observe(&self, value: f64) {
        self.observe_n(value, 1);
    }

    pub fn snapshot(&self, name: &'static str, help: &'static str) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        HistogramSnapshot {
            name,
            help,
            sum,
            count,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[1.0, 4.0]);
        h.observe(1.0);
        h.observe_n(3.0, 2);
        h.observe(100.0);
        let s = h.snapshot("h", "help");
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets, vec![(1.0, 1), (4.0, 2), (f64::INFINITY, 1)]);
        assert!((s.sum - 107.0).abs() < 1e-6);
    }
}
