//! Pushed config over the config file. The control API's accepted changes are kept in
//! `admin.state_dir` so that they survive a restart (`kill -9` included: temp file, fsync,
//! rename, fsync of the directory), over the file they were made on. The newer of the two
//! wins:
//! - at start, a pushed config made over the file as it is now is restored; if the file has
//!   changed since, the file wins and the pushed config is dropped;
//! - while running, a change of the file's content (a ConfigMap update) is applied and drops
//!   the pushed config; a SIGHUP or a touch that leaves the content as it was keeps it.
//!
//! The `admin` section (listeners, tokens, the state directory) always comes from the
//! file: it is never pushed, so no token is ever written here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RawConfig;

const PUSHED: &str = "pushed.json";

pub struct Overlay {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// The SHA-256 of the file content the live config was made over ("" without a file).
    base: String,
    /// The pushes the kept config holds, oldest first.
    changes: Vec<Push>,
}

/// One accepted push, as kept with the pushed config: what a change of the file drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub principal: String,
    /// `PUT /v1/routes/submit-claim/quota`
    pub action: String,
    /// The version it made.
    pub version: u64,
}

#[derive(Serialize, Deserialize)]
struct Pushed {
    base: String,
    config: RawConfig,
    #[serde(default)]
    changes: Vec<Push>,
}

/// What the state directory held at start.
#[derive(Debug, Default, PartialEq)]
pub struct Restored {
    /// The pushed config, made over the file as it is now.
    pub config: Option<RawConfig>,
    /// Pushes made over other file content: the file won, and these are gone.
    pub dropped: Vec<Push>,
}

/// The SHA-256 of `text`, in hex: a config file's fingerprint, an audit line's hash.
pub fn fingerprint(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Overlay {
    /// Opens (creating it if needed) the state directory.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf(), state: Mutex::new(State { base: String::new(), changes: Vec::new() }) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At start, over file content `text` (None without a file): the pushed config to
    /// restore, if one was made over that same content. One made over other content is
    /// dropped: the file changed since, and it wins.
    pub fn start(&self, text: Option<&str>) -> Restored {
        let base = text.map(fingerprint).unwrap_or_default();
        self.state().base = base.clone();
        let unreadable = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, dir = %self.dir.display(), "pushed config unreadable: using the file");
            Restored::default()
        };
        let pushed: Pushed = match fs::read(self.dir.join(PUSHED)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(pushed) => pushed,
                Err(e) => return unreadable(&e),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Restored::default(),
            Err(e) => return unreadable(&e),
        };
        if pushed.base != base {
            let _ = self.clear();
            return Restored { config: None, dropped: pushed.changes };
        }
        tracing::info!(dir = %self.dir.display(), "restoring the pushed config");
        self.state().changes = pushed.changes;
        Restored { config: Some(pushed.config), dropped: Vec::new() }
    }

    /// Whether file content `text` is news: not the content the live config was made over.
    pub fn is_new(&self, text: &str) -> bool {
        self.state().base != fingerprint(text)
    }

    /// Whether a pushed config is kept.
    pub fn has_push(&self) -> bool {
        self.dir.join(PUSHED).exists()
    }

    /// The file's content `text` was applied: it is the new base, and pushes made over the
    /// old one are dropped. Returns them.
    pub fn file_applied(&self, text: &str) -> io::Result<Vec<Push>> {
        let mut state = self.state();
        state.base = fingerprint(text);
        self.clear()?;
        Ok(std::mem::take(&mut state.changes))
    }

    /// Keeps `config` (its `admin` section left out), made by `push`, so that it survives
    /// a restart. When this returns Ok, the file is on disk.
    pub fn push(&self, config: &RawConfig, push: Push) -> io::Result<()> {
        let mut state = self.state();
        let mut changes = state.changes.clone();
        changes.push(push);
        let pushed = Pushed { base: state.base.clone(), config: RawConfig { admin: None, ..config.clone() }, changes };
        let bytes = serde_json::to_vec_pretty(&pushed).map_err(io::Error::other)?;
        write_atomically(&self.dir, PUSHED, &bytes)?;
        state.changes = pushed.changes;
        Ok(())
    }

    fn clear(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(PUSHED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => sync_dir(&self.dir),
        }
    }
}

/// Replaces `dir/name` with `bytes` so that a crash at any moment leaves the old content or
/// the new, never a mix: a temp file, fsync, rename over, fsync of the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(service: &str) -> RawConfig {
        let text = format!("service: {service}\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\n");
        crate::config::parse(&text).unwrap().raw
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-overlay-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn push(version: u64) -> Push {
        Push { principal: "cp".into(), action: "PUT /v1/quota".into(), version }
    }

    #[test]
    fn a_push_survives_a_restart_over_the_same_file_only() {
        let dir = dir("restart");
        let overlay = Overlay::open(&dir).unwrap();
        assert_eq!(overlay.start(Some("file v1")), Restored::default());
        overlay.push(&raw("pushed"), push(2)).unwrap();
        // a restart over the same file restores it, with the pushes it holds
        let again = Overlay::open(&dir).unwrap();
        assert_eq!(again.start(Some("file v1")).config.unwrap().service, "pushed");
        again.push(&raw("pushed"), push(3)).unwrap();
        // a restart over a changed file drops it, for good, and says what was dropped
        let changed = Overlay::open(&dir).unwrap();
        assert_eq!(changed.start(Some("file v2")), Restored { config: None, dropped: vec![push(2), push(3)] });
        assert_eq!(Overlay::open(&dir).unwrap().start(Some("file v1")), Restored::default());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_change_while_running_wins_and_a_touch_does_not() {
        let dir = dir("running");
        let overlay = Overlay::open(&dir).unwrap();
        overlay.start(Some("file v1"));
        overlay.push(&raw("pushed"), push(2)).unwrap();
        assert!(!overlay.is_new("file v1"));
        assert!(overlay.is_new("file v2"));
        assert_eq!(overlay.file_applied("file v2").unwrap(), [push(2)]);
        assert!(!dir.join(PUSHED).exists());
        assert_eq!(overlay.file_applied("file v3").unwrap(), []);
        assert_eq!(Overlay::open(&dir).unwrap().start(Some("file v3")), Restored::default());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn admin_is_never_pushed() {
        let dir = dir("admin");
        let overlay = Overlay::open(&dir).unwrap();
        overlay.start(None);
        let text = "service: s\nlisten: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nadmin:\n  tokens:\n    - { name: a, role: admin, token: very-secret }\n";
        overlay.push(&crate::config::parse(text).unwrap().raw, push(2)).unwrap();
        let written = fs::read_to_string(dir.join(PUSHED)).unwrap();
        assert!(!written.contains("very-secret") && !written.contains("tokens"), "{written}");
        fs::remove_dir_all(dir).unwrap();
    }
}
