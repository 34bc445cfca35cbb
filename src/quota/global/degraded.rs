//! When Redis is slow or gone: the circuit that keeps a Redis found down off the request
//! path, and the policy that decides meanwhile. Pure, over an injected clock.
//!
//! Every call is bounded by `global.timeout`. A failed call opens the circuit: from then on
//! requests make no call at all (they get the `on_error` policy at once), and one probe at a
//! time is let through every [`PROBE_EVERY`], in the background; the first that succeeds
//! closes the circuit, and the shared state rules again.

use std::time::Duration;

/// How often an open circuit lets one call through to see whether Redis is back.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What decides while Redis cannot (`global.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Requests pass, counted.
    Allow,
    /// Requests are refused: 503 with `Retry-After`, origin `quota_unavailable`.
    Deny,
    /// Each replica enforces its share of the rate locally: the rate over the replicas
    /// last counted.
    LocalShare,
}

impl OnError {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "local_share" => Ok(Self::LocalShare),
            _ => Err(format!("`{text}` is not a policy: use allow, deny or local_share")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::LocalShare => "local_share",
        }
    }
}

/// A replica's share of a global rate of `rate` per `per`, with `replicas` counted (the
/// last count kept while Redis is gone; at least 1).
pub fn local_share(rate: u32, replicas: u32) -> u32 {
    (rate / replicas.max(1)).max(1)
}

/// The circuit in front of Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Circuit {
    /// Since when calls fail, while they do.
    open_since: Option<Duration>,
    /// When the next probe may go.
    next_probe: Duration,
}

/// What the circuit says of a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Make it: Redis is thought up.
    Make,
    /// Make it as the probe, in the background; decide this request by the policy.
    Probe,
    /// Make none: decide by the policy.
    Skip,
}

/// A change of the circuit, to log, count and send as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Calls started to fail: the policy decides from now.
    Degraded,
    /// A call succeeded again, after `down` of failing.
    Recovered { down: Duration },
}

impl Circuit {
    /// Whether a request at `now` calls Redis.
    pub fn call(&mut self, now: Duration) -> Call {
        if self.open_since.is_none() {
            return Call::Make;
        }
        if now >= self.next_probe {
            self.next_probe = now + PROBE_EVERY;
            return Call::Probe;
        }
        Call::Skip
    }

    /// A call's outcome at `now`; a change of state, if any.
    pub fn result(&mut self, now: Duration, ok: bool) -> Option<Change> {
        match (self.open_since, ok) {
            (None, false) => {
                self.open_since = Some(now);
                self.next_probe = now + PROBE_EVERY;
                Some(Change::Degraded)
            }
            (Some(since), true) => {
                self.open_since = None;
                Some(Change::Recovered { down: now.saturating_sub(since) })
            }
            _ => None,
        }
    }

    /// Whether the policy decides now (`sluice_global_quota_degraded`).
    pub fn degraded(&self) -> bool {
        self.open_since.is_some()
    }

    /// Since when calls fail, while they do.
    pub fn since(&self) -> Option<Duration> {
        self.open_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_failure_opens_the_circuit_and_one_probe_at_a_time_closes_it() {
        let mut circuit = Circuit::default();
        assert_eq!(circuit.call(ms(0)), Call::Make);
        assert_eq!(circuit.result(ms(20), false), Some(Change::Degraded));
        assert!(circuit.degraded());
        // found down: no call at all, but a probe every PROBE_EVERY
        assert_eq!(circuit.call(ms(21)), Call::Skip);
        assert_eq!(circuit.call(ms(519)), Call::Skip);
        assert_eq!(circuit.call(ms(520)), Call::Probe);
        assert_eq!(circuit.call(ms(521)), Call::Skip, "one probe at a time");
        assert_eq!(circuit.result(ms(540), false), None, "still down");
        assert_eq!(circuit.call(ms(1020)), Call::Probe);
        assert_eq!(circuit.result(ms(1030), true), Some(Change::Recovered { down: ms(1010) }));
        assert!(!circuit.degraded());
        assert_eq!(circuit.call(ms(1031)), Call::Make);
        assert_eq!(circuit.result(ms(1032), true), None);
    }

    #[test]
    fn policies_and_shares() {
        assert_eq!(OnError::parse("local_share"), Ok(OnError::LocalShare));
        assert!(OnError::parse("panic").unwrap_err().contains("allow, deny or local_share"));
        assert_eq!(local_share(5000, 3), 1666);
        assert_eq!(local_share(2, 3), 1, "every replica may admit one");
        assert_eq!(local_share(100, 0), 100, "no count yet: the whole rate");
    }
}
