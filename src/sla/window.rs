//! Good/total counts over rolling windows, in fixed memory: rings of time buckets.
//!
//! A window of `k` buckets is the current bucket and the `k - 1` before it, so its span
//! lies between `(k - 1) × bucket` and `k × bucket`. Each slot carries the number of the
//! bucket it holds, so a slot left over from an earlier lap is told apart without being
//! cleared, and a quiet hour costs nothing.

use std::time::Duration;

/// Good and total events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub good: u64,
    pub total: u64,
}

impl Counts {
    pub fn bad(self) -> u64 {
        self.total - self.good
    }

    fn add(&mut self, other: Counts) {
        self.good += other.good;
        self.total += other.total;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    bucket: u64,
    counts: Counts,
}

/// `slots.len()` buckets of `width` each.
#[derive(Debug)]
pub struct Ring {
    width: u64,
    slots: Box<[Slot]>,
}

impl Ring {
    pub fn new(width: Duration, slots: usize) -> Self {
        let width = u64::try_from(width.as_nanos()).expect("bucket width fits in u64 nanoseconds").max(1);
        // Bucket numbers start at 0, so a fresh slot must claim a bucket that never comes.
        Self { width, slots: vec![Slot { bucket: u64::MAX, counts: Counts::default() }; slots].into() }
    }

    fn bucket(&self, now: Duration) -> u64 {
        (now.as_nanos() / u128::from(self.width)) as u64
    }

    pub fn add(&mut self, now: Duration, counts: Counts) {
        let bucket = self.bucket(now);
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(bucket % len) as usize];
        if slot.bucket != bucket {
            *slot = Slot { bucket, counts: Counts::default() };
        }
        slot.counts.add(counts);
    }

    /// The counts of the last `k` buckets up to `now`'s, `k` at most the ring's length.
    pub fn sum(&self, now: Duration, k: usize) -> Counts {
        debug_assert!(k <= self.slots.len());
        let current = self.bucket(now);
        let len = self.slots.len() as u64;
        let mut sum = Counts::default();
        for bucket in current.saturating_sub(k as u64 - 1)..=current {
            let slot = &self.slots[(bucket % len) as usize];
            if slot.bucket == bucket {
                sum.add(slot.counts);
            }
        }
        sum
    }

    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// The buckets that hold counts: `[bucket, good, total]` each.
    pub fn export(&self) -> Vec<[u64; 3]> {
        let live = self.slots.iter().filter(|s| s.bucket != u64::MAX && s.counts.total > 0);
        live.map(|s| [s.bucket, s.counts.good, s.counts.total]).collect()
    }

    /// Puts exported buckets back, those still within the ring's span at `now`; a bucket
    /// from later than `now`, or with more good than total, is no count of this ring's and
    /// is left out. Returns how many were put back.
    pub fn import(&mut self, now: Duration, buckets: &[[u64; 3]]) -> usize {
        let current = self.bucket(now);
        let len = self.slots.len() as u64;
        let mut kept = 0;
        for &[bucket, good, total] in buckets {
            if bucket > current || current - bucket >= len || good > total {
                continue;
            }
            self.slots[(bucket % len) as usize] = Slot { bucket, counts: Counts { good, total } };
            kept += 1;
        }
        kept
    }
}

/// The burn-rate windows, each read from the finest ring that spans it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    M5,
    M30,
    H1,
    H2,
    H6,
    D1,
    D3,
}

impl Window {
    pub const ALL: [Window; 7] = [Self::M5, Self::M30, Self::H1, Self::H2, Self::H6, Self::D1, Self::D3];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::M5 => "5m",
            Self::M30 => "30m",
            Self::H1 => "1h",
            Self::H2 => "2h",
            Self::H6 => "6h",
            Self::D1 => "1d",
            Self::D3 => "3d",
        }
    }

    /// (ring, buckets): 10 s buckets up to an hour, 1 min up to 6 h, 10 min up to 3 d.
    fn ring(self) -> (usize, usize) {
        match self {
            Self::M5 => (0, 30),
            Self::M30 => (0, 180),
            Self::H1 => (0, 360),
            Self::H2 => (1, 120),
            Self::H6 => (1, 360),
            Self::D1 => (2, 144),
            Self::D3 => (2, 432),
        }
    }
}

/// Buckets of the SLA window's ring.
pub const WINDOW_BUCKETS: usize = 720;

/// Every window of one SLI: the burn-rate windows and the SLA window.
#[derive(Debug)]
pub struct Windows {
    burn: [Ring; 3],
    sla: Ring,
}

impl Windows {
    pub fn new(sla_window: Duration) -> Self {
        Self {
            burn: [
                Ring::new(Duration::from_secs(10), 360),
                Ring::new(Duration::from_secs(60), 360),
                Ring::new(Duration::from_secs(600), 432),
            ],
            sla: Ring::new(sla_window / WINDOW_BUCKETS as u32, WINDOW_BUCKETS),
        }
    }

    pub fn add(&mut self, now: Duration, counts: Counts) {
        if counts.total == 0 {
            return;
        }
        for ring in &mut self.burn {
            ring.add(now, counts);
        }
        self.sla.add(now, counts);
    }

    pub fn over(&self, now: Duration, window: Window) -> Counts {
        let (ring, k) = window.ring();
        self.burn[ring].sum(now, k)
    }

    pub fn over_sla_window(&self, now: Duration) -> Counts {
        self.sla.sum(now, WINDOW_BUCKETS)
    }

    /// Every ring's buckets that hold counts: the burn-rate rings, then the SLA window's.
    pub fn export(&self) -> [Vec<[u64; 3]>; 4] {
        [self.burn[0].export(), self.burn[1].export(), self.burn[2].export(), self.sla.export()]
    }

    /// Puts exported rings back (see [`Ring::import`]); returns how many buckets were kept.
    pub fn import(&mut self, now: Duration, rings: &[Vec<[u64; 3]>; 4]) -> usize {
        let [a, b, c] = &mut self.burn;
        [a, b, c, &mut self.sla].into_iter().zip(rings).map(|(ring, buckets)| ring.import(now, buckets)).sum()
    }

    /// The memory this SLI's windows hold: fixed when built, whatever the traffic.
    pub fn bytes(&self) -> usize {
        self.burn.iter().map(Ring::bytes).sum::<usize>() + self.sla.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn c(good: u64, total: u64) -> Counts {
        Counts { good, total }
    }

    #[test]
    fn a_window_is_the_current_bucket_and_those_before_it() {
        let mut ring = Ring::new(10 * S, 6);
        ring.add(5 * S, c(1, 1)); // bucket 0
        ring.add(15 * S, c(0, 1)); // bucket 1
        ring.add(59 * S, c(2, 2)); // bucket 5
        assert_eq!(ring.sum(59 * S, 6), c(3, 4));
        assert_eq!(ring.sum(59 * S, 5), c(2, 3));
        assert_eq!(ring.sum(59 * S, 1), c(2, 2));
        // Bucket 6 takes bucket 0's slot: the old counts are gone, not added.
        ring.add(61 * S, c(1, 1));
        assert_eq!(ring.sum(61 * S, 6), c(3, 4));
        // Long after, nothing is left in the window, without any slot being cleared.
        assert_eq!(ring.sum(1000 * S, 6), c(0, 0));
    }

    #[test]
    fn a_ring_exported_and_imported_later_keeps_only_what_is_still_in_its_span() {
        let mut ring = Ring::new(10 * S, 6);
        ring.add(5 * S, c(1, 1)); // bucket 0
        ring.add(25 * S, c(2, 3)); // bucket 2
        let exported = ring.export();
        assert_eq!(exported, [[0, 1, 1], [2, 2, 3]]);
        // 60 s on, bucket 0 has left the six-bucket span; bucket 2 has not.
        let mut fresh = Ring::new(10 * S, 6);
        assert_eq!(fresh.import(65 * S, &exported), 1);
        assert_eq!(fresh.sum(65 * S, 6), c(2, 3));
        // Nothing from the future, nor counts that cannot be.
        assert_eq!(Ring::new(10 * S, 6).import(5 * S, &[[2, 1, 1], [0, 2, 1]]), 0);
    }

    #[test]
    fn windows_read_the_ring_that_spans_them() {
        let mut w = Windows::new(Duration::from_secs(30 * 86400));
        w.add(Duration::ZERO, c(90, 100));
        let hour = Duration::from_secs(3600);
        w.add(hour, c(9, 10));
        assert_eq!(w.over(hour, Window::M5), c(9, 10));
        assert_eq!(w.over(hour, Window::H1), c(9, 10)); // 360 × 10 s: t = 0 fell out
        assert_eq!(w.over(hour, Window::H2), c(99, 110));
        assert_eq!(w.over(hour, Window::D3), c(99, 110));
        assert_eq!(w.over_sla_window(hour), c(99, 110));
        assert_eq!(w.over_sla_window(hour * 24 * 31), c(0, 0));
    }
}
