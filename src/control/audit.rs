//! The audit log: one JSON line per mutating call, accepted or refused, appended to
//! `<state_dir>/audit.jsonl` and synced before the call returns. Each line carries `prev`,
//! the SHA-256 of the line before it (64 zeros for the first), so a changed, removed or
//! inserted line breaks the chain at the line after it: [`verify`] names that line.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::config::overlay::fingerprint as hash;

pub const FILE: &str = "audit.jsonl";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub struct Audit {
    path: PathBuf,
    /// The file, and the hash of its last line.
    tail: Mutex<(File, String)>,
}

/// One call, as recorded.
pub struct Record {
    /// The token's name, when a valid one was sent.
    pub principal: Option<String>,
    pub remote: String,
    pub action: String,
    pub version_before: u64,
    pub version_after: u64,
    pub status: u16,
}

impl Audit {
    /// Opens `dir/audit.jsonl` for appending, continuing its chain.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(FILE);
        let mut last = GENESIS.to_string();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines() {
                let line = line?;
                if !line.is_empty() {
                    last = hash(&line);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, tail: Mutex::new((file, last)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; returns once it is on disk.
    pub fn append(&self, record: Record) -> io::Result<()> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let time = humantime_now();
        let line = json!({
            "time": time,
            "principal": record.principal,
            "remote": record.remote,
            "action": record.action,
            "version_before": record.version_before,
            "version_after": record.version_after,
            "result": if record.status < 400 { "accepted" } else { "refused" },
            "status": record.status,
            "prev": tail.1,
        })
        .to_string();
        tail.0.write_all(format!("{line}\n").as_bytes())?;
        tail.0.sync_data()?;
        tail.1 = hash(&line);
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

/// Checks the chain of an audit log: `Ok(records)`, or the first broken line (1-based)
/// and what is wrong with it.
pub fn verify(path: &Path) -> Result<usize, (usize, String)> {
    let file = File::open(path).map_err(|e| (0, format!("cannot open {}: {e}", path.display())))?;
    let mut prev = GENESIS.to_string();
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
        prev = hash(&line);
        count += 1;
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
        }
    }

    #[test]
    fn the_chain_holds_across_reopening_and_names_a_tampered_line() {
        let dir = std::env::temp_dir().join(format!("sluice-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let audit = Audit::open(&dir).unwrap();
        audit.append(record(200)).unwrap();
        audit.append(record(412)).unwrap();
        drop(audit);
        let audit = Audit::open(&dir).unwrap();
        audit.append(record(200)).unwrap();
        assert_eq!(verify(audit.path()), Ok(3));
        let tail = audit.tail(2).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!((tail[0]["result"].as_str(), tail[0]["status"].as_u64()), (Some("refused"), Some(412)));

        let text = std::fs::read_to_string(audit.path()).unwrap();
        let tampered = text.replacen("\"status\":412", "\"status\":200", 1);
        std::fs::write(audit.path(), tampered).unwrap();
        let (line, why) = verify(audit.path()).unwrap_err();
        assert_eq!(line, 3, "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn time_is_rfc3339() {
        let t = humantime_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
