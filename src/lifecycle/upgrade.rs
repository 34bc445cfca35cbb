//! The running process's side of a binary upgrade (SIGUSR2): start the executable at the
//! path this process started from, with its arguments, and hand it the listeners over an
//! abstract unix socket only it may use (its peer pid is checked); hand it the state once
//! it says its config is good; done when it says it serves. Anything else (it exits, says
//! it failed, or is not serving by the deadline) kills it and leaves this process serving.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UnixListener;
use tokio::process::{Child, Command};

use super::handoff::{Channel, Handed, Message, Socket, ENV};

/// How this process was started: what an upgrade starts again. Taken at start, before the
/// file at the path can be replaced (after, `/proc/self/exe` names the deleted file).
#[derive(Debug, Clone)]
pub struct Executable {
    pub path: PathBuf,
    pub args: Vec<OsString>,
}

impl Executable {
    pub fn of_this_process() -> std::io::Result<Self> {
        Ok(Self { path: std::env::current_exe()?, args: std::env::args_os().skip(1).collect() })
    }
}

/// Why an upgrade did not happen, for the log.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    #[error("another upgrade is under way")]
    UnderWay,
    #[error("this process's executable path is unknown")]
    NoExecutable,
    #[error("cannot start {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("cannot open the handoff socket: {0}")]
    Socket(std::io::Error),
    #[error("the handoff failed: {0}")]
    Wire(std::io::Error),
    #[error("the new process refused to take over: {0}")]
    Refused(String),
    #[error("the new process said {0:?} out of turn")]
    OutOfTurn(String),
    #[error("the new process exited ({0}) before it served")]
    Exited(std::process::ExitStatus),
    #[error("the new process was not serving within {0:?}")]
    Deadline(Duration),
}

/// A new process that took over: it serves on the listeners now.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
    /// From SIGUSR2 to the new process serving.
    pub took: Duration,
}

/// Upgrades to a new process started from `exe`, handing it `sockets` and then the state
/// `hand` makes (called once the new process's config is valid), within `deadline`.
pub async fn upgrade(
    exe: &Executable,
    sockets: &[(Socket, OwnedFd)],
    hand: impl FnOnce() -> Handed,
    deadline: Duration,
) -> Result<Successor, Failed> {
    let started = tokio::time::Instant::now();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let name = format!("sluice-upgrade-{}-{nanos}", std::process::id());
    let listener = listen(&name).map_err(Failed::Socket)?;
    let child = Command::new(&exe.path)
        .args(&exe.args)
        .env(ENV, &name)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| Failed::Spawn { path: exe.path.clone(), source })?;
    // Killed if this future is dropped before the end (a SIGTERM came meanwhile).
    let mut child = Starting(Some(child));
    let pid = child.0.as_ref().and_then(Child::id).unwrap_or_default();
    tracing::info!(pid, path = %exe.path.display(), "upgrade: the new process is starting");
    let outcome = tokio::select! {
        // First: a new process that says why it fails, then exits, is heard saying it.
        biased;
        handed = hand_over(&listener, pid, sockets, hand) => handed,
        status = child.wait() => match status {
            Ok(status) => Err(Failed::Exited(status)),
            Err(e) => Err(Failed::Wire(e)),
        },
        () = tokio::time::sleep(deadline) => Err(Failed::Deadline(deadline)),
    };
    match outcome {
        Ok(()) => {
            // It lives on, past this process.
            drop(child.0.take());
            Ok(Successor { pid, took: started.elapsed() })
        }
        Err(why) => {
            child.stop().await;
            Err(why)
        }
    }
}

/// The new process until it serves: killed unless it took over.
struct Starting(Option<Child>);

impl Starting {
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.as_mut().expect("the new process").wait().await
    }

    /// Ends a new process that did not take over. It accepts only from when it has the
    /// state to when it says it serves, a moment: a kill before then loses nothing.
    async fn stop(&mut self) {
        let Some(mut child) = self.0.take() else { return };
        if let Err(e) = child.kill().await {
            tracing::debug!(error = %e, "upgrade: the new process had ended already");
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

/// The abstract unix socket `name`: nothing on the filesystem to clean up.
fn listen(name: &str) -> std::io::Result<UnixListener> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// The handoff's four steps with the process `pid`, once it connects.
async fn hand_over(
    listener: &UnixListener,
    pid: u32,
    sockets: &[(Socket, OwnedFd)],
    hand: impl FnOnce() -> Handed,
) -> Result<(), Failed> {
    let mut channel = loop {
        let (stream, _) = listener.accept().await.map_err(Failed::Wire)?;
        let peer = stream.peer_cred().map_err(Failed::Wire)?.pid();
        if peer == Some(pid as i32) {
            break Channel::new(stream);
        }
        // The socket's name is no secret: whoever else connects gets nothing.
        tracing::warn!(peer = ?peer, expected = pid, "upgrade: a process other than the new one connected: ignored");
    };
    let described = sockets.iter().map(|(socket, _)| socket.clone()).collect();
    let fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    channel.send(&Message::Sockets { sockets: described }, &fds).await.map_err(Failed::Wire)?;
    expect(&mut channel, "started").await?;
    channel.send(&Message::State { handed: Box::new(hand()) }, &[]).await.map_err(Failed::Wire)?;
    expect(&mut channel, "serving").await
}

/// The next message, which must be the step `step`.
async fn expect(channel: &mut Channel, step: &str) -> Result<(), Failed> {
    match channel.recv().await.map_err(Failed::Wire)? {
        Message::Started if step == "started" => Ok(()),
        Message::Serving if step == "serving" => Ok(()),
        Message::Failed { why } => Err(Failed::Refused(why)),
        other => Err(Failed::OutOfTurn(format!("{other:?}").chars().take(80).collect())),
    }
}
