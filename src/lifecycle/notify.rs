//! systemd's readiness protocol (`sd_notify`), for a unit of `Type=notify`: when
//! `NOTIFY_SOCKET` is set, sluice says `READY=1` once it serves, and a process that took
//! over in an upgrade says `MAINPID=` with its own pid first, so that systemd follows it
//! (the unit needs `NotifyAccess=all`: docs/lifecycle.md). Without the variable, nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (lines of `KEY=value`) to `NOTIFY_SOCKET`, if it is set; a failure is
/// logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = (|| {
        let bytes = path.as_encoded_bytes();
        // `@name` is an abstract socket.
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Serving: `READY=1`, with `MAINPID` when this process took over from another.
pub fn ready(took_over: bool) {
    if took_over {
        notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        notify("READY=1");
    }
}
