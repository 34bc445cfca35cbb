//! Top offenders: the heaviest keys of a keyed quota over the last interval (a minute), with
//! estimated rates, in fixed memory.
//!
//! Every request's key is counted, by its 64-bit fingerprint (the hash the rate table keys
//! on, so the key's bytes are hashed once per request), in a count-min sketch
//! (pingora-limits' `Estimator`) of the current interval; the one of the previous interval
//! is kept to estimate a sliding rate.
//! The keys themselves are not kept, except a short list of candidates: a key is offered to
//! the list only when its count in this interval passes a power of two and beats the
//! smallest candidate, so the list's lock is taken a few times per doubling of a key's
//! count, and never waited for. Estimates only ever overcount (a sketch never undercounts); the
//! error is bounded by the traffic of the interval over the sketch's width.
//!
//! Time is the caller's `now`, on the engines' clock; [`Offenders::roll`] turns the
//! interval over.
//!
//! What outlives a process ([`Offenders::export`]) is the list with each candidate's counts
//! in both intervals: taken into a fresh sketch, the heaviest keys and their rates carry
//! on; the lighter keys' counts start over.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use pingora_limits::estimator::Estimator;

use super::Key;

/// `began` before the first interval starts.
const NOT_YET: u64 = u64::MAX;

/// How many offenders a quota reports.
pub const TOP: usize = 10;
/// The counting interval, and so the window of the reported rates.
pub const INTERVAL: Duration = Duration::from_secs(60);

// 2 × 2048 counters per interval: 64 KiB for both, whatever the number of keys. Two rows,
// not pingora's four: each row is a hash and an atomic add on every keyed request, and
// two already single out keys that send much more than the interval's traffic / 2048.
const HASHES: usize = 2;
const SLOTS: usize = 2048;

pub struct Offenders {
    interval: Duration,
    sketches: [Estimator; 2],
    /// Which sketch counts the current interval.
    current: AtomicUsize,
    /// When the current interval began, in nanoseconds on the engines' clock; [`NOT_YET`]
    /// until the first [`Offenders::roll`] starts it (the clock does not start at zero).
    began: AtomicU64,
    /// The smallest candidate's count when the list is full, else 0.
    floor: AtomicU64,
    candidates: Mutex<Vec<Candidate>>,
}

/// A key on the short list: its bytes, its fingerprint, its count when last seen.
struct Candidate {
    key: Key,
    fingerprint: u64,
    count: u64,
}

/// The candidates as plain data, for a checkpoint or an upgrade's handoff.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OffendersState {
    /// When the current interval began (nanoseconds on the engines' clock), if it has.
    pub began_ns: Option<u64>,
    /// `[key bytes, fingerprint, count this interval, count the interval before]`.
    pub keys: Vec<(Vec<u8>, u64, u64, u64)>,
}

/// One heavy key, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Offender {
    /// The key's bytes ([`super::KeySpec::show`] makes them text).
    pub key: Vec<u8>,
    /// Requests per second over the last interval, estimated.
    pub rate: f64,
}

impl Default for Offenders {
    fn default() -> Self {
        Self::new(INTERVAL)
    }
}

impl Offenders {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            sketches: [Estimator::new(HASHES, SLOTS), Estimator::new(HASHES, SLOTS)],
            current: AtomicUsize::new(0),
            began: AtomicU64::new(NOT_YET),
            floor: AtomicU64::new(0),
            candidates: Mutex::new(Vec::with_capacity(TOP)),
        }
    }

    /// Counts one request of `key`, whose fingerprint is `fingerprint`.
    #[inline]
    pub fn observe(&self, key: &[u8], fingerprint: u64) {
        let count = self.sketches[self.current.load(Relaxed)].incr(fingerprint, 1).max(0) as u64;
        if near_power_of_two(count) && count > self.floor.load(Relaxed) {
            self.offer(key, fingerprint, count);
        }
    }

    #[cold]
    fn offer(&self, key: &[u8], fingerprint: u64, count: u64) {
        // Busy: the key gets another chance at its next power of two.
        let Ok(mut list) = self.candidates.try_lock() else { return };
        let candidate = || Candidate { key: Key::new(key), fingerprint, count };
        if let Some(entry) = list.iter_mut().find(|c| c.key.as_bytes() == key) {
            entry.count = count;
        } else if list.len() < TOP {
            list.push(candidate());
        } else if let Some(smallest) = list.iter_mut().min_by_key(|c| c.count) {
            *smallest = candidate();
        }
        self.floor.store(floor(&list), Relaxed);
    }

    /// Turns the interval over when it has run its length at `now`: the current sketch
    /// becomes the previous one, and the candidates keep their count in it. Called by the
    /// monitor every second.
    pub fn roll(&self, now: Duration) {
        if self.began.compare_exchange(NOT_YET, nanos(now), Relaxed, Relaxed).is_ok() {
            return; // the first interval starts now, with what was counted so far
        }
        let began = Duration::from_nanos(self.began.load(Relaxed));
        let elapsed = now.saturating_sub(began);
        if elapsed < self.interval {
            return;
        }
        let old = self.current.load(Relaxed);
        let new = 1 - old;
        self.sketches[new].reset();
        if elapsed >= self.interval * 2 {
            self.sketches[old].reset(); // a whole interval went by unseen
        }
        self.current.store(new, Relaxed);
        self.began.store(nanos(now), Relaxed);
        let mut list = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        for c in list.iter_mut() {
            c.count = self.sketches[old].get(c.fingerprint).max(0) as u64;
        }
        list.retain(|c| c.count > 0);
        self.floor.store(floor(&list), Relaxed);
    }

    /// The candidates with their counts in both intervals.
    pub fn export(&self) -> OffendersState {
        let current = self.current.load(Relaxed);
        let count = |sketch: usize, fingerprint| self.sketches[sketch].get(fingerprint).max(0) as u64;
        let list = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        let keys = list
            .iter()
            .map(|c| {
                (
                    c.key.as_bytes().to_vec(),
                    c.fingerprint,
                    count(current, c.fingerprint),
                    count(1 - current, c.fingerprint),
                )
            })
            .collect();
        let began_ns = Some(self.began.load(Relaxed)).filter(|&b| b != NOT_YET);
        OffendersState { began_ns, keys }
    }

    /// Takes `saved` (an [`export`](Self::export) from a table with the same fingerprint
    /// seed) into these fresh sketches.
    pub fn import(&self, saved: &OffendersState) {
        let current = self.current.load(Relaxed);
        let mut list = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        for (key, fingerprint, now, before) in saved.keys.iter().take(TOP) {
            let now = self.sketches[current].incr(fingerprint, (*now).min(isize::MAX as u64) as isize).max(0) as u64;
            self.sketches[1 - current].incr(fingerprint, (*before).min(isize::MAX as u64) as isize);
            list.push(Candidate { key: Key::new(key), fingerprint: *fingerprint, count: now });
        }
        self.floor.store(floor(&list), Relaxed);
        if let Some(began) = saved.began_ns {
            self.began.store(began, Relaxed);
        }
    }

    /// The heaviest keys at `now`, heaviest first: each key's rate over the last interval,
    /// the previous interval's count weighted by how much of it the window still covers.
    pub fn top(&self, now: Duration) -> Vec<Offender> {
        let began = match self.began.load(Relaxed) {
            NOT_YET => now,
            began => Duration::from_nanos(began),
        };
        let into = now.saturating_sub(began).min(self.interval).as_secs_f64() / self.interval.as_secs_f64();
        let current = self.current.load(Relaxed);
        let keys: Vec<(Key, u64)> = {
            let list = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
            list.iter().map(|c| (c.key.clone(), c.fingerprint)).collect()
        };
        let mut top: Vec<Offender> = keys
            .iter()
            .map(|(key, fingerprint)| {
                let now = self.sketches[current].get(fingerprint).max(0) as f64;
                let before = self.sketches[1 - current].get(fingerprint).max(0) as f64;
                Offender {
                    key: key.as_bytes().to_vec(),
                    rate: (now + before * (1.0 - into)) / self.interval.as_secs_f64(),
                }
            })
            .filter(|o| o.rate > 0.0)
            .collect();
        top.sort_by(|a, b| b.rate.total_cmp(&a.rate));
        top
    }
}

/// Whether `n` is a power of two or just past one. A key's estimate can step by more than
/// one (other keys share its counters), so an exact power of two could be skipped.
fn near_power_of_two(n: u64) -> bool {
    n > 0 && n - (1 << n.ilog2()) < 4
}

fn floor(list: &[Candidate]) -> u64 {
    if list.len() < TOP {
        return 0;
    }
    list.iter().map(|c| c.count).min().unwrap_or(0)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn observe(o: &Offenders, key: &str, times: usize) {
        for _ in 0..times {
            o.observe(key.as_bytes(), fingerprint(key.as_bytes()));
        }
    }

    fn fingerprint(key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::default().hash_one(key)
    }

    #[test]
    fn the_heaviest_keys_with_their_rates() {
        let o = Offenders::new(secs(60));
        observe(&o, "heavy", 6000);
        observe(&o, "medium", 600);
        for n in 0..50 {
            observe(&o, &format!("light-{n}"), 6);
        }
        let top = o.top(secs(60));
        assert_eq!(top.len(), TOP);
        // a sketch only overcounts: here by a few requests at most, when keys share counters
        assert_eq!(top[0].key, b"heavy");
        assert!((100.0..100.2).contains(&top[0].rate), "{top:?}");
        assert_eq!(top[1].key, b"medium");
        assert!((10.0..10.2).contains(&top[1].rate), "{top:?}");
    }

    #[test]
    fn rates_slide_with_the_window_and_fade() {
        let o = Offenders::new(secs(60));
        o.roll(secs(0)); // the first interval begins
        observe(&o, "k", 600);
        o.roll(secs(60)); // interval 2 begins: k had 600
        let rate = |t| o.top(secs(t)).first().map_or(0.0, |x| x.rate);
        assert_eq!(rate(60), 10.0);
        assert_eq!(rate(90), 5.0); // half of the previous interval still in the window
        observe(&o, "k", 60);
        assert_eq!(rate(90), 6.0);
        o.roll(secs(120));
        assert_eq!(rate(120), 1.0);
        o.roll(secs(240)); // two intervals without a roll: all gone
        assert!(o.top(secs(240)).is_empty());
    }

    #[test]
    fn what_comes_before_the_first_roll_counts_on_a_clock_far_from_zero() {
        let o = Offenders::new(secs(60));
        let start = secs(1_800_000_000);
        observe(&o, "early", 60);
        o.roll(start); // the first roll starts the interval: nothing is lost
        assert_eq!(o.top(start + secs(1)).first().map(|x| (x.key.as_slice(), x.rate)), Some((&b"early"[..], 1.0)));
        o.roll(start + secs(60));
        assert_eq!(o.top(start + secs(60)).first().map(|x| x.rate), Some(1.0));
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_the_heavy_one_in_fixed_memory() {
        let o = Offenders::new(secs(60));
        for n in 0..200_000u32 {
            o.observe(&n.to_be_bytes(), fingerprint(&n.to_be_bytes()));
            if n % 100 == 0 {
                o.observe(b"attacker", fingerprint(b"attacker"));
            }
        }
        assert_eq!(o.candidates.lock().unwrap().len(), TOP);
        assert_eq!(o.top(secs(60))[0].key, b"attacker");
    }

    #[test]
    fn the_heavy_keys_and_their_rates_carry_over_to_another_table() {
        let o = Offenders::new(secs(60));
        o.roll(secs(0));
        observe(&o, "heavy", 1200);
        o.roll(secs(60));
        observe(&o, "heavy", 600);
        observe(&o, "medium", 300);
        let saved: OffendersState = serde_json::from_str(&serde_json::to_string(&o.export()).unwrap()).unwrap();
        let fresh = Offenders::new(secs(60));
        fresh.import(&saved);
        assert_eq!(fresh.top(secs(90)), o.top(secs(90)));
        assert_eq!(fresh.top(secs(90))[0].rate, 20.0); // 600 now + half of 1200 before, over 60 s
                                                       // The interval turns over when the first one's would have.
        fresh.roll(secs(120));
        assert_eq!(fresh.top(secs(120))[0].rate, 10.0);
    }

    #[test]
    fn a_key_that_grows_late_still_gets_in() {
        let o = Offenders::new(secs(60));
        for n in 0..TOP {
            observe(&o, &format!("early-{n}"), 100);
        }
        observe(&o, "late", 1000);
        let top = o.top(secs(60));
        assert_eq!(top[0].key, b"late");
        assert_eq!(top.len(), TOP);
    }
}
