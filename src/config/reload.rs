//! Reloading the config file: on SIGHUP and when the file changes. The file is polled
//! (stat every interval), which also sees the symlink swap by which Kubernetes updates a
//! mounted ConfigMap, where an inotify watch on the file would not. Parsing and validation
//! run here, off the request path; a bad file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::overlay::Overlay;
use super::{from_raw, parse, read, ConfigErrors};
use crate::events::{Event, Events};
use crate::snapshot::{Live, Snapshot};

/// What a reload needs: the file, the live config, the pushed overlay, and where the
/// `config_applied` and `config_rejected` events go.
#[derive(Clone)]
pub struct Reloader {
    pub path: PathBuf,
    pub live: Arc<Live>,
    pub overlay: Option<Arc<Overlay>>,
    pub events: Events,
}

impl Reloader {
    /// Reloads the file, telling the event stream how it went.
    pub fn reload(&self, trigger: &str) -> Result<Arc<Snapshot>, ConfigErrors> {
        let service = self.live.load().config.service.clone();
        let result = reload(&self.path, &self.live, trigger, self.overlay.as_deref());
        let event = match &result {
            Ok(snapshot) => Event::config_applied(&service, snapshot.version, trigger, None),
            Err(errors) => Event::config_rejected(&service, trigger, None, errors),
        };
        self.events.send(event);
        result
    }
}

/// Loads `path` and makes it live, or logs why not and keeps the current config. With an
/// overlay holding a push made over this same file content, the pushed config is
/// re-applied instead (token files are re-read either way).
fn reload(path: &Path, live: &Live, trigger: &str, overlay: Option<&Overlay>) -> Result<Arc<Snapshot>, ConfigErrors> {
    let previous = live.load();
    let text = read(path);
    let keep_push = match (&text, overlay) {
        (Ok(text), Some(overlay)) => !overlay.is_new(text) && overlay.has_push(),
        _ => false,
    };
    let config = if keep_push {
        tracing::info!(trigger, "config file unchanged since the last push: the pushed config stays");
        from_raw(previous.config.raw.clone())
    } else {
        text.as_deref()
            .map_err(Clone::clone)
            .and_then(|text| parse(text).map_err(|e| ConfigErrors { source: Some(path.display().to_string()), ..e }))
    };
    match config {
        Ok(config) => {
            if let (Some(overlay), Ok(text), false) = (overlay, &text, keep_push) {
                if let Err(e) = overlay.file_applied(text) {
                    tracing::error!(error = %e, "could not drop the pushed config: it may come back at the next restart");
                }
            }
            if config.listen != previous.config.listen || config.admin.listen != previous.config.admin.listen {
                tracing::warn!("listen addresses changed: they take effect at the next restart");
            }
            let snapshot = live.apply(config);
            let changed = snapshot.changed_routes(&previous);
            tracing::info!(trigger, version = snapshot.version, ?changed, "config applied");
            Ok(snapshot)
        }
        Err(errors) => {
            live.metrics.reloaded(None);
            for error in &errors.errors {
                tracing::error!(trigger, %error, "config rejected; the previous config keeps serving");
            }
            Err(errors)
        }
    }
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
        let _ = reloader.reload("file");
    }
}
