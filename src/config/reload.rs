//! Reloading the config file: on SIGHUP and when the file changes. The file is polled
//! (stat every interval), which also sees the symlink swap by which Kubernetes updates a
//! mounted ConfigMap, where an inotify watch on the file would not. Parsing and validation
//! run here, off the request path; a bad file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::overlay::{fingerprint, Overlay, Push};
use super::{from_raw, parse, place_all, read, tokens, Config, ConfigErrors, RawConfig};
use crate::control::audit::{Audit, Record};
use crate::events::{Event, Events};
use crate::metrics::{Reload, Source};
use crate::snapshot::{Live, Snapshot};

/// What a reload needs: the file, the live config, the pushed overlay, the audit log, and
/// where the `config_applied` and `config_rejected` events go.
#[derive(Clone)]
pub struct Reloader {
    pub path: PathBuf,
    pub live: Arc<Live>,
    pub overlay: Option<Arc<Overlay>>,
    pub audit: Option<Arc<Audit>>,
    pub events: Events,
}

impl Reloader {
    /// Loads the file and makes it live, or logs why not and keeps the current config.
    /// `source` is [`Source::File`] (the watch saw a change) or [`Source::Signal`] (SIGHUP).
    /// With an overlay holding a push made over this same file content, the pushed config
    /// stays (token files are re-read either way); new file content drops it, and says so.
    /// A config that is the live one already makes no new version.
    pub fn reload(&self, source: Source) -> Result<Arc<Snapshot>, ConfigErrors> {
        let _change = self.live.change_lock();
        let trigger = trigger(source);
        let previous = self.live.load();
        if self.live.changes_held() {
            // An upgrade's new process reads the file itself; if it fails, the upgrade
            // reloads here once it is over.
            tracing::info!(trigger, "a binary upgrade is under way: the reload is left to it");
            return Ok(previous);
        }
        let text = read(&self.path);
        let overlay = self.overlay.as_deref();
        let keep_push = match (&text, overlay) {
            (Ok(text), Some(overlay)) => !overlay.is_new(text) && overlay.has_push(),
            _ => false,
        };
        let config = if keep_push {
            from_raw(previous.config.raw.clone())
        } else {
            text.as_deref().map_err(Clone::clone).and_then(|text| parse(text).map_err(|e| self.placed(e)))
        };
        let config = config.and_then(|config| self.tokens_readable(config, text.as_deref().unwrap_or("")));
        let config = match config {
            Ok(config) => config,
            Err(errors) => {
                self.live.metrics.reloaded(source, Reload::Failed);
                for error in &errors.errors {
                    tracing::error!(trigger, %error, "config rejected; the previous config keeps serving");
                }
                self.events.send(Event::config_rejected(&previous.config.service, trigger, None, &errors));
                return Err(errors);
            }
        };
        let dropped = match (overlay, &text, keep_push) {
            (Some(overlay), Ok(text), false) => overlay.file_applied(text).unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not drop the pushed config: it may come back at the next restart");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        if config.listen != previous.config.listen || config.admin.listen != previous.config.admin.listen {
            tracing::warn!("listen addresses changed: they take effect at the next restart");
        }
        let applied = self.live.apply(config, source);
        let snapshot = applied.snapshot.clone();
        if !applied.changed() && dropped.is_empty() {
            tracing::info!(trigger, version = snapshot.version, "config unchanged: no new version");
            return Ok(snapshot);
        }
        let changed = snapshot.changed_routes(&applied.previous);
        tracing::info!(trigger, version = snapshot.version, changed = %changed.join(","), "config applied");
        let file = text.as_deref().map(fingerprint).unwrap_or_default();
        announce_file(
            &self.events,
            self.audit.as_deref(),
            &snapshot,
            applied.previous.version,
            trigger,
            &file,
            &dropped,
        );
        Ok(snapshot)
    }

    fn placed(&self, errors: ConfigErrors) -> ConfigErrors {
        ConfigErrors { source: Some(self.path.display().to_string()), ..errors }
    }

    /// `config`, if every token it names can be read: a config whose secrets are missing
    /// would lock the control plane out, so it is refused like any other error.
    fn tokens_readable(&self, config: Config, text: &str) -> Result<Config, ConfigErrors> {
        let problems = tokens::problems(&config);
        if problems.is_empty() {
            return Ok(config);
        }
        Err(self.placed(ConfigErrors { source: None, errors: place_all(text, problems) }))
    }
}

/// The event's name for a source.
fn trigger(source: Source) -> &'static str {
    match source {
        Source::File => "file",
        Source::Signal => "sighup",
        Source::Api => "api",
    }
}

/// Tells the event stream, the log and the audit log that the file's config is live as
/// `snapshot` (made over `before`), and which pushes it dropped: the principal is `file`.
pub fn announce_file(
    events: &Events,
    audit: Option<&Audit>,
    snapshot: &Snapshot,
    before: u64,
    trigger: &str,
    file_sha256: &str,
    dropped: &[Push],
) {
    let dropped_json = serde_json::to_value(dropped).unwrap_or_default();
    if !dropped.is_empty() {
        let names: Vec<String> =
            dropped.iter().map(|p| format!("{} by {} (version {})", p.action, p.principal, p.version)).collect();
        tracing::warn!(
            trigger,
            dropped = %names.join("; "),
            "the config file changed since these pushes: the file wins and they are dropped"
        );
    }
    let service = &snapshot.config.service;
    let mut event = Event::config_applied(service, snapshot.version, trigger, None);
    if !dropped.is_empty() {
        event = event.with("dropped", dropped_json.clone());
    }
    events.send(event);
    let Some(audit) = audit else { return };
    let change = json!({
        "config_sha256": config_fingerprint(&snapshot.config.raw),
        "file_sha256": file_sha256,
        "dropped": dropped_json,
    });
    let record = Record {
        principal: Some("file".into()),
        remote: String::new(),
        action: format!("reload ({trigger})"),
        version_before: before,
        version_after: snapshot.version,
        status: 200,
        change: Some(change),
    };
    if let Err(e) = audit.append(record) {
        tracing::error!(error = %e, "could not append to the audit log");
    }
}

/// The SHA-256 of a config as the control API shows it (JSON, no literal tokens): what an
/// audit record names a whole config by.
pub fn config_fingerprint(raw: &RawConfig) -> String {
    fingerprint(&serde_json::to_string(raw).unwrap_or_default())
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks: a swapped ConfigMap link shows as a new inode.
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode })
}

/// Polls `path` every `interval` and reloads once a change has held still for one more
/// interval (an editor's save or a ConfigMap update is several writes). Content that did
/// not change (a touch) is not reapplied.
pub async fn watch(reloader: Reloader, interval: Duration) {
    let path = &reloader.path;
    let mut applied = stamp(path);
    let mut applied_text = std::fs::read(path).ok();
    let mut pending: Option<Stamp> = None;
    loop {
        tokio::time::sleep(interval).await;
        let now = stamp(path);
        if now == applied {
            pending = None;
            continue;
        }
        if now.is_none() || pending != now {
            pending = now; // changed since the last look: wait for it to settle
            continue;
        }
        pending = None;
        applied = now;
        let text = std::fs::read(path).ok();
        if text.is_some() && text == applied_text {
            continue;
        }
        applied_text = text;
        let _ = reloader.reload(Source::File);
    }
}
