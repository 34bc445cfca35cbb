//! The audit log: one JSON line per mutating call, accepted or refused, appended to
//! `<state_dir>/audit.jsonl` and synced before the call returns. Each line carries `prev`,
//! the SHA-256 of the line before it (64 zeros for the first), so a changed, removed or
//! inserted line breaks the chain at the line after it; the chain's head (the record count
//! and the last line's hash) is kept beside it in `audit.head`, rewritten with each append,
//! so a log cut short is told apart from a whole one. [`verify`] checks both.
//!
//! Calls refused for want of a valid token are written at a bounded rate
//! ([`UNAUTHENTICATED_BURST`] at once, then one per [`UNAUTHENTICATED_EVERY`]): a flood of bad
//! tokens cannot fill the disk. The ones left out are counted, in a metric and in a
//! `suppressed` record written before the next record.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::overlay::{fingerprint as hash, write_atomically};

pub const FILE: &str = "audit.jsonl";
/// The chain's head, beside the log.
pub const HEAD: &str = "audit.head";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The action of the record sluice writes when it finds the log shorter than its head.
const TRUNCATED: &str = "audit_log_truncated";

/// Unauthenticated refusals written at once before the rate applies.
pub const UNAUTHENTICATED_BURST: u32 = 20;
/// After the burst, one unauthenticated refusal is written per this long.
pub const UNAUTHENTICATED_EVERY: Duration = Duration::from_secs(1);

pub struct Audit {
    path: PathBuf,
    tail: Mutex<Tail>,
    suppressed_total: IntCounter,
}

struct Tail {
    file: File,
    head: Head,
    /// The log's length after this process's last record: another length means another
    /// process (the other side of a binary upgrade) appended since, and `head` is re-read.
    len: u64,
    /// Unauthenticated refusals: GCRA over `now`, and those left out since the last record.
    allowance: Allowance,
    suppressed: u64,
}

/// The chain's head: how many records the log holds and the hash of the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    records: u64,
    last: String,
}

/// One call, as recorded.
pub struct Record {
    /// The token's name, when a valid one was sent; `file` for a change of the config file.
    pub principal: Option<String>,
    pub remote: String,
    pub action: String,
    pub version_before: u64,
    pub version_after: u64,
    pub status: u16,
    /// What an accepted change changed: the values pushed, or the new config's SHA-256.
    pub change: Option<Value>,
}

impl Audit {
    /// Opens `dir/audit.jsonl` for appending, continuing its chain. A log shorter than its
    /// head (lines removed from its end) is logged and recorded in the chain itself, so that
    /// `audit verify` keeps reporting it.
    pub fn open(dir: &Path, suppressed_total: IntCounter) -> io::Result<Self> {
        let path = dir.join(FILE);
        let found = read_head(&path)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        let tail = Tail { file, head: found.clone(), len, allowance: Allowance::default(), suppressed: 0 };
        let audit = Self { path, tail: Mutex::new(tail), suppressed_total };
        match read_stored_head(dir) {
            Some(stored) if stored.records > found.records || (stored.records == found.records && stored != found) => {
                tracing::error!(
                    log = %audit.path.display(),
                    records = found.records,
                    head_records = stored.records,
                    "the audit log is shorter than its head: records were removed"
                );
                let detail =
                    json!({ "head_records": stored.records, "head_last": stored.last, "found_records": found.records });
                let record = Record {
                    principal: None,
                    remote: String::new(),
                    action: TRUNCATED.into(),
                    version_before: 0,
                    version_after: 0,
                    status: 500,
                    change: Some(detail),
                };
                audit.append(record)?;
            }
            _ => audit.write_head(&found)?,
        }
        Ok(audit)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_head(&self, head: &Head) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        write_atomically(dir, HEAD, &serde_json::to_vec(head).map_err(io::Error::other)?)
    }

    /// Appends one record; returns once it and the new head are on disk.
    pub fn append(&self, record: Record) -> io::Result<()> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        self.write(&mut tail, record)
    }

    /// Appends a call refused for want of a valid token, unless more of them came at `now`
    /// (on any steady clock) than the bounded rate allows; those are counted instead.
    pub fn append_unauthenticated(&self, record: Record, now: Duration) -> io::Result<()> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if !tail.allowance.take(now) {
            tail.suppressed += 1;
            self.suppressed_total.inc();
            return Ok(());
        }
        self.write(&mut tail, record)
    }

    /// Appends `record` under an exclusive lock of the log, so that two processes sharing
    /// the state directory (the two sides of a binary upgrade) continue one chain.
    fn write(&self, tail: &mut Tail, record: Record) -> io::Result<()> {
        tail.file.lock()?;
        let written = self.write_locked(tail, record);
        tail.file.unlock()?;
        written
    }

    fn write_locked(&self, tail: &mut Tail, record: Record) -> io::Result<()> {
        let len = tail.file.metadata()?.len();
        if len != tail.len {
            tracing::debug!(log = %self.path.display(), "the audit log grew in another process: its chain goes on");
            tail.head = read_head(&self.path)?;
        }
        if tail.suppressed > 0 {
            let summary = Record {
                principal: None,
                remote: String::new(),
                action: "suppressed".into(),
                version_before: record.version_before,
                version_after: record.version_before,
                status: 401,
                change: Some(
                    json!({ "suppressed": tail.suppressed, "why": "calls without a valid token over the audit rate" }),
                ),
            };
            self.line(tail, summary)?;
            tail.suppressed = 0;
        }
        self.line(tail, record)?;
        tail.len = tail.file.metadata()?.len();
        self.write_head(&tail.head)
    }

    fn line(&self, tail: &mut Tail, record: Record) -> io::Result<()> {
        let mut line = json!({
            "time": humantime_now(),
            "principal": record.principal,
            "remote": record.remote,
            "action": record.action,
            "version_before": record.version_before,
            "version_after": record.version_after,
            "result": if record.status < 400 { "accepted" } else { "refused" },
            "status": record.status,
        });
        if let Some(change) = record.change {
            line["change"] = change;
        }
        line["prev"] = tail.head.last.clone().into();
        let line = line.to_string();
        tail.file.write_all(format!("{line}\n").as_bytes())?;
        tail.file.sync_data()?;
        tail.head = Head { records: tail.head.records + 1, last: hash(&line) };
        Ok(())
    }

    /// The last `limit` records, oldest first.
    pub fn tail(&self, limit: usize) -> io::Result<Vec<Value>> {
        let _writer = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<String> = BufReader::new(File::open(&self.path)?).lines().collect::<Result<_, _>>()?;
        let start = lines.len().saturating_sub(limit);
        Ok(lines[start..].iter().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

/// The head of the log at `path` as it is: its record count and last line's hash.
fn read_head(path: &Path) -> io::Result<Head> {
    let mut head = Head { records: 0, last: GENESIS.to_string() };
    if let Ok(file) = File::open(path) {
        for line in BufReader::new(file).lines() {
            let line = line?;
            if !line.is_empty() {
                head = Head { records: head.records + 1, last: hash(&line) };
            }
        }
    }
    Ok(head)
}

fn read_stored_head(dir: &Path) -> Option<Head> {
    serde_json::from_slice(&std::fs::read(dir.join(HEAD)).ok()?).ok()
}

/// A GCRA allowance of [`UNAUTHENTICATED_BURST`] at once, then one per
/// [`UNAUTHENTICATED_EVERY`].
#[derive(Default)]
struct Allowance {
    /// The theoretical arrival time of the next call.
    tat: Duration,
}

impl Allowance {
    fn take(&mut self, now: Duration) -> bool {
        let tolerance = UNAUTHENTICATED_EVERY * (UNAUTHENTICATED_BURST - 1);
        let tat = self.tat.max(now);
        if tat > now + tolerance {
            return false;
        }
        self.tat = tat + UNAUTHENTICATED_EVERY;
        true
    }
}

/// The time now as RFC 3339 UTC, to the millisecond.
fn humantime_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (now.as_secs() as i64, now.subsec_millis());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks an audit log: its chain, then its head (`audit.head` beside it). `Ok(records)`,
/// or the first broken line (1-based; 0 for the log as a whole) and what is wrong.
pub fn verify(path: &Path) -> Result<usize, (usize, String)> {
    let file = File::open(path).map_err(|e| (0, format!("cannot open {}: {e}", path.display())))?;
    let mut prev = GENESIS.to_string();
    // The hash before `prev`: a crash between a line's sync and its head's leaves the head
    // one record behind, at this.
    let mut before = String::new();
    let mut count = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| (n, format!("unreadable: {e}")))?;
        let value: Value = serde_json::from_str(&line).map_err(|e| (n, format!("not a JSON record: {e}")))?;
        match value.get("prev").and_then(Value::as_str) {
            Some(p) if p == prev => {}
            Some(_) if n == 1 => return Err((n, "the first record does not start the chain".into())),
            Some(_) => return Err((n, format!("`prev` is not the hash of line {}: one of them was changed", n - 1))),
            None => return Err((n, "no `prev` field".into())),
        }
        if value["action"] == TRUNCATED {
            let change = &value["change"];
            return Err((
                n,
                format!(
                    "sluice found this log cut short when it opened it: its head counted {} records, the log held {}",
                    change["head_records"], change["found_records"]
                ),
            ));
        }
        before = std::mem::replace(&mut prev, hash(&line));
        count += 1;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let head = read_stored_head(dir)
        .ok_or_else(|| (0, format!("no readable {HEAD} beside the log: whether it was cut short cannot be told")))?;
    let found = Head { records: count as u64, last: prev };
    if head.records > found.records {
        return Err((
            0,
            format!(
                "the log holds {} records, its head {}: records were removed from its end",
                found.records, head.records
            ),
        ));
    }
    let interrupted = head.records + 1 == found.records && head.last == before;
    if head != found && !interrupted {
        return Err((
            0,
            format!("the head ({} records) does not match the log's last record: the log was replaced", head.records),
        ));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: u16) -> Record {
        Record {
            principal: Some("cp".into()),
            remote: "127.0.0.1:1".into(),
            action: "PUT /v1/config".into(),
            version_before: 1,
            version_after: 2,
            status,
            change: Some(json!({ "config_sha256": "ab" })),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn counter() -> IntCounter {
        IntCounter::new("suppressed", "test").unwrap()
    }

    #[test]
    fn the_chain_holds_across_reopening_and_names_a_tampered_line() {
        let dir = dir("chain");
        let audit = Audit::open(&dir, counter()).unwrap();
        audit.append(record(200)).unwrap();
        audit.append(record(412)).unwrap();
        drop(audit);
        let audit = Audit::open(&dir, counter()).unwrap();
        audit.append(record(200)).unwrap();
        assert_eq!(verify(audit.path()), Ok(3));
        let tail = audit.tail(2).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!((tail[0]["result"].as_str(), tail[0]["status"].as_u64()), (Some("refused"), Some(412)));
        assert_eq!(tail[1]["change"]["config_sha256"], "ab");

        let text = std::fs::read_to_string(audit.path()).unwrap();
        let tampered = text.replacen("\"status\":412", "\"status\":200", 1);
        std::fs::write(audit.path(), tampered).unwrap();
        let (line, why) = verify(audit.path()).unwrap_err();
        assert_eq!(line, 3, "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn two_processes_appending_to_one_log_continue_one_chain() {
        // The two sides of a binary upgrade share the state directory for a moment.
        let dir = dir("two");
        let old = Audit::open(&dir, counter()).unwrap();
        old.append(record(200)).unwrap();
        let new = Audit::open(&dir, counter()).unwrap();
        for i in 0..3 {
            old.append(record(503)).unwrap();
            new.append(record(200 + i)).unwrap();
        }
        new.append(record(200)).unwrap();
        assert_eq!(verify(&dir.join(FILE)), Ok(8));
    }

    #[test]
    fn a_log_cut_short_fails_verification_and_stays_failed_after_a_restart() {
        let dir = dir("cut");
        let audit = Audit::open(&dir, counter()).unwrap();
        for _ in 0..3 {
            audit.append(record(200)).unwrap();
        }
        drop(audit);
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, kept).unwrap();
        let (line, why) = verify(&path).unwrap_err();
        assert_eq!(line, 0);
        assert!(why.contains("removed from its end"), "{why}");
        // sluice starts on it: the truncation goes into the chain, and verify still fails.
        let audit = Audit::open(&dir, counter()).unwrap();
        audit.append(record(200)).unwrap();
        let (line, why) = verify(&path).unwrap_err();
        assert_eq!(line, 3, "{why}");
        assert!(why.contains("cut short"), "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unauthenticated_refusals_are_written_at_a_bounded_rate_and_summarised() {
        let dir = dir("flood");
        let suppressed = counter();
        let audit = Audit::open(&dir, suppressed.clone()).unwrap();
        let refused = || Record { principal: None, status: 401, change: None, ..record(401) };
        for _ in 0..1000 {
            audit.append_unauthenticated(refused(), Duration::from_millis(500)).unwrap();
        }
        assert_eq!(suppressed.get(), 1000 - u64::from(UNAUTHENTICATED_BURST));
        // A second later, one more gets in, after a record of how many were left out.
        audit.append_unauthenticated(refused(), Duration::from_millis(1500)).unwrap();
        let records = audit.tail(1000).unwrap();
        assert_eq!(records.len(), UNAUTHENTICATED_BURST as usize + 2);
        let summary = &records[records.len() - 2];
        assert_eq!(
            (summary["action"].as_str(), summary["change"]["suppressed"].as_u64()),
            (Some("suppressed"), Some(980))
        );
        assert_eq!(verify(audit.path()), Ok(records.len()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn time_is_rfc3339() {
        let t = humantime_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
