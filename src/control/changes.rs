//! Changes waiting for a second person (`admin.approvals`, issue 24): the book of proposed
//! changes and the rules of their life, pure, over an injected clock (seconds since the UNIX
//! epoch, so that an expiry means the same after a restart).
//!
//! A change is proposed over one live version; it applies only while that version is still
//! live (else it is stale), once `approvers` distinct principals other than its proposer
//! approved it, and before it expires. A rejection, a withdrawal by its proposer, its
//! expiry or its going stale close it. The I/O (persisting the book in `admin.state_dir`,
//! applying the config) is at the control API's edge: this file only decides.
//!
//! Not wired into the control API yet: see issue 24.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a call changes, as `admin.approvals.required_for` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The whole config (`PUT /v1/config`).
    Config,
    /// A local quota of a route or of the service.
    Quota,
    /// A route's SLA.
    Sla,
    /// A quota whose old or new value has `scope: global`.
    GlobalQuota,
}

impl Kind {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "config" => Ok(Self::Config),
            "quota" => Ok(Self::Quota),
            "sla" => Ok(Self::Sla),
            "global_quota" => Ok(Self::GlobalQuota),
            _ => Err(format!("`{text}` is not a kind of change: use config, quota, sla or global_quota")),
        }
    }
}

/// `admin.approvals`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub required_for: Vec<Kind>,
    /// Distinct principals, none of them the proposer, who must approve.
    pub approvers: u32,
    /// How long a change may wait.
    pub expire: Duration,
}

/// Where a change is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    Pending,
    Applied {
        version: u64,
    },
    Rejected {
        by: String,
        comment: Option<String>,
    },
    Withdrawn,
    Expired,
    /// Another version went live before it was approved: it cannot apply.
    Stale {
        live_version: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub principal: String,
    pub at: f64,
    pub comment: Option<String>,
}

/// What a proposer's call would have done: kept until it is approved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub kind: Kind,
    /// The call, as the audit log names it (`PUT /v1/routes/a/quota`).
    pub action: String,
    pub proposer: String,
    /// The live version it was made over.
    pub base_version: u64,
    /// The whole config it makes (its `admin` section left out).
    pub config: Value,
    /// What it sets, as the audit record of the call says.
    pub set: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    #[serde(flatten)]
    pub proposal: Proposal,
    pub proposed_at: f64,
    pub expires_at: f64,
    /// Approvals needed (the policy's `approvers` when it was proposed).
    pub needed: u32,
    pub approvals: Vec<Approval>,
    #[serde(flatten)]
    pub state: State,
    pub closed_at: Option<f64>,
}

impl Change {
    pub fn pending(&self) -> bool {
        self.state == State::Pending
    }
}

/// Why a step on a change is refused, with the status the control API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    NotFound,
    /// It is closed already (applied, rejected, withdrawn, expired or stale).
    Closed(State),
    /// The proposer cannot approve their own change.
    OwnChange,
    /// This principal approved it already.
    ApprovedAlready,
    /// Only its proposer may withdraw it.
    NotProposer,
    /// A newer version is live: the change is closed as stale.
    Stale {
        live_version: u64,
    },
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::OwnChange | Self::NotProposer => 403,
            Self::Closed(_) | Self::ApprovedAlready | Self::Stale { .. } => 409,
        }
    }
}

/// An approval that counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approved {
    /// Recorded; this many more are needed.
    Waiting { remaining: u32 },
    /// This approval completes it: apply it now, then record that with [`Book::applied`].
    /// Nothing is recorded yet, so a change that fails to apply stays as it was.
    Ready,
}

/// A change closed by [`Book::sweep`].
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub id: String,
    pub state: State,
}

/// Closed changes kept for `GET /v1/changes`, newest last; pending ones are all kept.
pub const KEEP_CLOSED: usize = 100;

/// Every change, pending and recently closed: what `admin.state_dir` keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    /// The number of the next change: ids are never reused, across restarts too.
    next: u64,
    changes: Vec<Change>,
}

fn secs(now: Duration) -> f64 {
    now.as_secs_f64()
}

impl Book {
    /// Records `proposal` at `now` under `policy`: its id.
    pub fn propose(&mut self, proposal: Proposal, policy: &Policy, now: Duration) -> &Change {
        self.next += 1;
        let change = Change {
            id: format!("ch-{}", self.next),
            proposal,
            proposed_at: secs(now),
            expires_at: secs(now + policy.expire),
            needed: policy.approvers.max(1),
            approvals: Vec::new(),
            state: State::Pending,
            closed_at: None,
        };
        self.changes.push(change);
        self.changes.last().expect("just pushed")
    }

    pub fn get(&self, id: &str) -> Option<&Change> {
        self.changes.iter().find(|c| c.id == id)
    }

    /// Every change kept, oldest first.
    pub fn all(&self) -> &[Change] {
        &self.changes
    }

    /// A pending change, checked at `now` over `live_version`: one found expired or stale is
    /// closed so on the way.
    fn open(&mut self, id: &str, now: Duration, live_version: u64) -> Result<&mut Change, Refused> {
        let change = self.changes.iter_mut().find(|c| c.id == id).ok_or(Refused::NotFound)?;
        if change.pending() {
            if let Some(state) = lapsed(change, now, live_version) {
                close(change, state, now);
            }
        }
        match &change.state {
            State::Pending => Ok(change),
            State::Stale { live_version } => Err(Refused::Stale { live_version: *live_version }),
            other => Err(Refused::Closed(other.clone())),
        }
    }

    /// `principal`'s approval of change `id` at `now`, `live_version` being live.
    pub fn approve(
        &mut self,
        id: &str,
        principal: &str,
        comment: Option<String>,
        now: Duration,
        live_version: u64,
    ) -> Result<Approved, Refused> {
        let change = self.open(id, now, live_version)?;
        if change.proposal.proposer == principal {
            return Err(Refused::OwnChange);
        }
        if change.approvals.iter().any(|a| a.principal == principal) {
            return Err(Refused::ApprovedAlready);
        }
        let remaining = change.needed.saturating_sub(change.approvals.len() as u32 + 1);
        if remaining == 0 {
            return Ok(Approved::Ready);
        }
        change.approvals.push(Approval { principal: principal.into(), at: secs(now), comment });
        Ok(Approved::Waiting { remaining })
    }

    /// Change `id`, made [`Approved::Ready`] by `principal`, is live as `version`.
    pub fn applied(&mut self, id: &str, principal: &str, comment: Option<String>, version: u64, now: Duration) {
        if let Some(change) = self.changes.iter_mut().find(|c| c.id == id && c.pending()) {
            change.approvals.push(Approval { principal: principal.into(), at: secs(now), comment });
            close(change, State::Applied { version }, now);
        }
        self.prune();
    }

    /// `principal` rejects change `id`: closed.
    pub fn reject(
        &mut self,
        id: &str,
        principal: &str,
        comment: Option<String>,
        now: Duration,
        live_version: u64,
    ) -> Result<(), Refused> {
        let change = self.open(id, now, live_version)?;
        close(change, State::Rejected { by: principal.into(), comment }, now);
        self.prune();
        Ok(())
    }

    /// Its proposer withdraws change `id`: closed.
    pub fn withdraw(&mut self, id: &str, principal: &str, now: Duration, live_version: u64) -> Result<(), Refused> {
        let change = self.open(id, now, live_version)?;
        if change.proposal.proposer != principal {
            return Err(Refused::NotProposer);
        }
        close(change, State::Withdrawn, now);
        self.prune();
        Ok(())
    }

    /// Closes every pending change that expired by `now` or was made over a version other
    /// than `live_version`: those closed, to announce.
    pub fn sweep(&mut self, now: Duration, live_version: u64) -> Vec<Closed> {
        let mut closed = Vec::new();
        for change in self.changes.iter_mut().filter(|c| c.pending()) {
            if let Some(state) = lapsed(change, now, live_version) {
                close(change, state.clone(), now);
                closed.push(Closed { id: change.id.clone(), state });
            }
        }
        if !closed.is_empty() {
            self.prune();
        }
        closed
    }

    /// Keeps every pending change and the newest [`KEEP_CLOSED`] closed ones.
    fn prune(&mut self) {
        let closed = self.changes.iter().filter(|c| !c.pending()).count();
        let mut drop = closed.saturating_sub(KEEP_CLOSED);
        self.changes.retain(|c| {
            let goes = drop > 0 && !c.pending();
            drop -= usize::from(goes);
            !goes
        });
    }
}

/// Whether a pending change has lapsed at `now`: expired, or made stale by another version.
fn lapsed(change: &Change, now: Duration, live_version: u64) -> Option<State> {
    if secs(now) >= change.expires_at {
        Some(State::Expired)
    } else if change.proposal.base_version != live_version {
        Some(State::Stale { live_version })
    } else {
        None
    }
}

fn close(change: &mut Change, state: State, now: Duration) {
    change.state = state;
    change.closed_at = Some(secs(now));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn policy(approvers: u32) -> Policy {
        Policy { required_for: vec![Kind::Quota], approvers, expire: s(60) }
    }

    fn proposal(by: &str, base_version: u64) -> Proposal {
        Proposal {
            kind: Kind::Quota,
            action: "PUT /v1/routes/a/quota".into(),
            proposer: by.into(),
            base_version,
            config: serde_json::json!({ "service": "s" }),
            set: serde_json::json!({ "route": "a" }),
        }
    }

    #[test]
    fn one_approver_other_than_the_proposer_makes_it_ready_and_applied_closes_it() {
        let mut book = Book::default();
        let id = book.propose(proposal("ops", 3), &policy(1), s(1000)).id.clone();
        assert_eq!(id, "ch-1");
        assert_eq!(book.approve(&id, "ops", None, s(1001), 3), Err(Refused::OwnChange));
        assert_eq!(book.approve(&id, "cp", None, s(1001), 3), Ok(Approved::Ready));
        // Ready records nothing: a change that fails to apply is as it was.
        assert!(book.get(&id).unwrap().pending() && book.get(&id).unwrap().approvals.is_empty());
        book.applied(&id, "cp", Some("ok".into()), 4, s(1002));
        let change = book.get(&id).unwrap();
        assert_eq!(change.state, State::Applied { version: 4 });
        assert_eq!(change.approvals[0].principal, "cp");
        assert_eq!(change.closed_at, Some(1002.0));
        assert_eq!(book.approve(&id, "ann", None, s(1003), 4), Err(Refused::Closed(State::Applied { version: 4 })));
    }

    #[test]
    fn two_approvers_must_be_distinct_and_neither_the_proposer() {
        let mut book = Book::default();
        let id = book.propose(proposal("ops", 1), &policy(2), s(0)).id.clone();
        assert_eq!(book.approve(&id, "cp", None, s(1), 1), Ok(Approved::Waiting { remaining: 1 }));
        assert_eq!(book.approve(&id, "cp", None, s(2), 1), Err(Refused::ApprovedAlready));
        assert_eq!(book.approve(&id, "ops", None, s(2), 1), Err(Refused::OwnChange));
        assert_eq!(book.approve(&id, "ann", None, s(3), 1), Ok(Approved::Ready));
        assert_eq!(Refused::OwnChange.status(), 403);
        assert_eq!(Refused::ApprovedAlready.status(), 409);
    }

    #[test]
    fn another_version_makes_it_stale_and_time_expires_it() {
        let mut book = Book::default();
        let stale = book.propose(proposal("ops", 1), &policy(1), s(0)).id.clone();
        assert_eq!(book.approve(&stale, "cp", None, s(1), 2), Err(Refused::Stale { live_version: 2 }));
        assert_eq!(book.get(&stale).unwrap().state, State::Stale { live_version: 2 });
        assert_eq!(Refused::Stale { live_version: 2 }.status(), 409);

        let expiring = book.propose(proposal("ops", 2), &policy(1), s(10)).id.clone();
        assert!(book.sweep(s(69), 2).is_empty(), "not yet");
        assert_eq!(book.sweep(s(70), 2), [Closed { id: expiring.clone(), state: State::Expired }]);
        assert!(book.sweep(s(71), 2).is_empty(), "closed once");
        assert_eq!(book.approve(&expiring, "cp", None, s(71), 2), Err(Refused::Closed(State::Expired)));
        assert_eq!(book.approve("ch-99", "cp", None, s(71), 2), Err(Refused::NotFound));
    }

    #[test]
    fn a_rejection_or_the_proposers_withdrawal_closes_it() {
        let mut book = Book::default();
        let a = book.propose(proposal("ops", 1), &policy(1), s(0)).id.clone();
        let b = book.propose(proposal("ops", 1), &policy(1), s(0)).id.clone();
        book.reject(&a, "cp", Some("too high".into()), s(1), 1).unwrap();
        assert_eq!(book.get(&a).unwrap().state, State::Rejected { by: "cp".into(), comment: Some("too high".into()) });
        assert_eq!(book.withdraw(&b, "cp", s(1), 1), Err(Refused::NotProposer));
        book.withdraw(&b, "ops", s(2), 1).unwrap();
        assert_eq!(book.get(&b).unwrap().state, State::Withdrawn);
        assert_eq!(book.reject(&b, "cp", None, s(3), 1), Err(Refused::Closed(State::Withdrawn)));
    }

    #[test]
    fn the_book_survives_json_and_keeps_ids_and_pending_changes_through_pruning() {
        let mut book = Book::default();
        let pending = book.propose(proposal("ops", 1), &policy(1), s(0)).id.clone();
        for _ in 0..KEEP_CLOSED + 5 {
            let id = book.propose(proposal("ops", 1), &policy(1), s(0)).id.clone();
            book.withdraw(&id, "ops", s(1), 1).unwrap();
        }
        assert_eq!(book.all().len(), KEEP_CLOSED + 1);
        assert!(book.get(&pending).unwrap().pending(), "pending changes are never pruned");
        let text = serde_json::to_string(&book).unwrap();
        let mut again: Book = serde_json::from_str(&text).unwrap();
        assert_eq!(again, book);
        assert_eq!(again.propose(proposal("ops", 1), &policy(1), s(2)).id, format!("ch-{}", KEEP_CLOSED + 7));
        assert_eq!(Kind::parse("global_quota"), Ok(Kind::GlobalQuota));
        assert!(Kind::parse("routes").unwrap_err().contains("config, quota, sla or global_quota"));
    }
}
