//! A fixed-size, log-bucketed histogram of latencies in microseconds.
//!
//! Layout: values below 128 each have their own bucket (exact). Every power-of-two range above
//! that, `[2^e, 2^(e+1))` for `e` in 7..=63, is split into 64 equal sub-buckets, so a bucket is at
//! most 1/64 of its lower bound wide.
//!
//! Invariants:
//! - memory is fixed (3,776 counters, about 30 KiB) whatever the number of values recorded;
//! - [`Histogram::value_at_quantile`] never reports less than the true quantile and at most
//!   1/64 (1.6 %) more; it is exact below 128 and never above the largest value recorded;
//! - count, minimum, maximum and sum are exact.

use std::time::Duration;

/// Sub-buckets per power of two, as a power of two.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Values below this are recorded exactly.
const EXACT_BELOW: u64 = SUB_BUCKETS * 2;
/// The exponent of `EXACT_BELOW`.
const FIRST_EXPONENT: u32 = SUB_BUCKET_BITS + 1;
/// Number of buckets: the exact ones plus 64 per power of two from 2^7 to 2^63.
const BUCKETS: usize = EXACT_BELOW as usize + (64 - FIRST_EXPONENT as usize) * SUB_BUCKETS as usize;

/// Bucket of `value`.
fn bucket_of(value: u64) -> usize {
    if value < EXACT_BELOW {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= FIRST_EXPONENT
    let shift = exponent - SUB_BUCKET_BITS;
    let top = value >> shift; // in [SUB_BUCKETS, 2 * SUB_BUCKETS)
    EXACT_BELOW as usize
        + (exponent - FIRST_EXPONENT) as usize * SUB_BUCKETS as usize
        + (top - SUB_BUCKETS) as usize
}

/// Smallest and largest value that land in `bucket`.
fn bucket_bounds(bucket: usize) -> (u64, u64) {
    let bucket = bucket as u64;
    if bucket < EXACT_BELOW {
        return (bucket, bucket);
    }
    let rest = bucket - EXACT_BELOW;
    let exponent = (rest / SUB_BUCKETS) as u32 + FIRST_EXPONENT;
    let top = rest % SUB_BUCKETS + SUB_BUCKETS;
    let shift = exponent - SUB_BUCKET_BITS;
    let low = top << shift;
    (low, low | ((1u64 << shift) - 1))
}

/// A latency histogram; see the module documentation for its precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Records a duration in whole microseconds (rounded down; saturating at `u64::MAX`).
    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value recorded, or 0 if none.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value recorded, or 0 if none.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded, or 0 if none.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.5 for the median, 0.999 for p99.9): the smallest recorded
    /// value `v` such that at least `ceil(q × count)` values are `<= v`, rounded up to its
    /// bucket's upper bound (never past the maximum). 0 if nothing was recorded. `q` is clamped
    /// to `[0, 1]`; quantile 0 gives the minimum.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // Integer rank arithmetic: 0.99 × 100 must be exactly 99, not 99.00000000000001.
        let ppm = (q.clamp(0.0, 1.0) * 1e6).round() as u128;
        let rank = ((u128::from(self.count) * ppm).div_ceil(1_000_000)).max(1);
        let mut seen = 0u128;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += u128::from(n);
            if seen >= rank {
                let (_, high) = bucket_bounds(bucket);
                return high.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_1_to_100_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.value_at_quantile(0.5), 50);
        assert_eq!(h.value_at_quantile(0.99), 99);
        assert_eq!(h.value_at_quantile(0.999), 100);
        assert_eq!(h.value_at_quantile(1.0), 100);
        assert_eq!(h.value_at_quantile(0.0), 1);
        assert_eq!((h.count(), h.min(), h.max()), (100, 1, 100));
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::new();
        assert_eq!(h.value_at_quantile(0.99), 0);
        assert_eq!((h.count(), h.min(), h.max()), (0, 0, 0));
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn large_values_are_within_one_sixty_fourth_and_never_under() {
        for v in [128u64, 129, 1000, 1023, 1024, 65_537, 1_000_000, 123_456_789, u64::MAX / 3] {
            let mut h = Histogram::new();
            h.record(1);
            h.record(v);
            h.record(u64::MAX);
            let got = h.value_at_quantile(0.5);
            assert!(got >= v, "{got} < {v}");
            assert!(got - v <= v / 64, "{got} too far above {v}");
        }
    }

    #[test]
    fn buckets_tile_the_whole_range_in_order() {
        let mut expected_low = 0u64;
        for bucket in 0..BUCKETS {
            let (low, high) = bucket_bounds(bucket);
            assert_eq!(low, expected_low, "bucket {bucket}");
            assert!(high >= low);
            assert_eq!(bucket_of(low), bucket);
            assert_eq!(bucket_of(high), bucket);
            if bucket > EXACT_BELOW as usize {
                assert!((high - low) <= low / SUB_BUCKETS, "bucket {bucket} too wide");
            }
            expected_low = high.wrapping_add(1);
        }
        assert_eq!(expected_low, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let v = v * v % 100_003;
            if v % 2 == 0 {
                a.record(v);
            } else {
                b.record(v);
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.value_at_quantile(q), all.value_at_quantile(q));
        }
    }

    #[test]
    fn durations_are_recorded_in_microseconds() {
        let mut h = Histogram::new();
        h.record_duration(Duration::from_nanos(1_999));
        h.record_duration(Duration::from_millis(2));
        assert_eq!((h.min(), h.max()), (1, 2000));
    }
}
