//! The binary upgrade's wire: one unix stream socket between the running process and the
//! one replacing it, carrying newline-delimited JSON [`Message`]s, the first of them with
//! the listening sockets attached (SCM_RIGHTS). rustix makes the one `sendmsg`/`recvmsg`
//! pair safe: the crate forbids `unsafe`, and std's ancillary data is unstable.
//!
//! The steps, each one message:
//! 1. old → new: [`Message::Sockets`], with the listeners' descriptors in the same order;
//! 2. new → old: [`Message::Started`] (its config is valid, its listeners are taken), or
//!    [`Message::Failed`] with why;
//! 3. old → new: [`Message::State`], the quota and SLA state to carry on from;
//! 4. new → old: [`Message::Serving`] (it accepts on every listener), or `Failed`.
//!
//! After 4 the old process stops accepting and drains; before it, the old one serves on
//! and any failure leaves it the only one.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::monitor::Saved;

/// The environment variable that tells a new process where to take over from: the
/// abstract unix socket's name.
pub const ENV: &str = "SLUICE_UPGRADE_SOCKET";

/// At most this many listeners are handed over: the proxy, admin and metrics ones.
pub const MAX_SOCKETS: usize = 4;

/// The longest message: the state of every key of every quota fits in it many times over.
const MAX_MESSAGE: usize = 256 << 20;

/// One listening socket handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    /// `proxy`, `admin` or `metrics`.
    pub name: String,
    /// The address the config asked for (perhaps port 0).
    pub configured: SocketAddr,
    /// The address it is bound to.
    pub bound: SocketAddr,
}

/// What the old process hands on: its config version (kept by the new one when its config
/// is the same, so that a controller's ETag stays valid) and the state of its engines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handed {
    pub version: u64,
    /// The live config's fingerprint ([`crate::config::reload::config_fingerprint`]).
    pub config: String,
    pub saved: Saved,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Message {
    Sockets { sockets: Vec<Socket> },
    Started,
    Failed { why: String },
    State { handed: Box<Handed> },
    Serving,
}

/// One end of the wire.
pub struct Channel {
    stream: UnixStream,
    /// Bytes read past the last message.
    read: Vec<u8>,
    /// Descriptors received and not yet taken.
    fds: Vec<OwnedFd>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Self { stream, read: Vec::new(), fds: Vec::new() }
    }

    /// Sends `message`, with `fds` attached to its first byte.
    pub async fn send(&mut self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        assert!(fds.len() <= MAX_SOCKETS);
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut sent = 0;
        while sent < line.len() {
            let attached = if sent == 0 { fds } else { &[] };
            let rest = &line[sent..];
            self.stream.writable().await?;
            let written = self.stream.try_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !attached.is_empty() && !control.push(SendAncillaryMessage::ScmRights(attached)) {
                    return Err(io::Error::other("the descriptors do not fit the control buffer"));
                }
                Ok(rustix::net::sendmsg(&self.stream, &[IoSlice::new(rest)], &mut control, SendFlags::NOSIGNAL)?)
            });
            match written {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message; an end of the stream before it is `UnexpectedEof`.
    pub async fn recv(&mut self) -> io::Result<Message> {
        loop {
            if let Some(end) = self.read.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.read.drain(..=end).collect();
                return serde_json::from_slice(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.read.len() > MAX_MESSAGE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a message over 256 MiB"));
            }
            if self.receive().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The descriptors received so far, in the order they were sent.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// One `recvmsg`: its bytes onto `read`, its descriptors onto `fds` (close-on-exec).
    async fn receive(&mut self) -> io::Result<usize> {
        let mut buf = vec![0; 64 << 10];
        loop {
            self.stream.readable().await?;
            let received = self.stream.try_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    &self.stream,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "more descriptors than expected"));
                }
                Ok((msg.bytes, fds))
            });
            match received {
                Ok((n, fds)) => {
                    self.read.extend_from_slice(&buf[..n]);
                    self.fds.extend(fds);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    use super::*;

    #[tokio::test]
    async fn messages_cross_with_descriptors_that_still_work() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut old, mut new) = (Channel::new(a), Channel::new(b));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut file = tempfile();
        file.write_all(b"handed").unwrap();
        let socket = Socket { name: "proxy".into(), configured: "127.0.0.1:0".parse().unwrap(), bound: addr };
        let sockets = Message::Sockets { sockets: vec![socket.clone()] };
        old.send(&sockets, &[listener.as_fd(), file.as_fd()]).await.unwrap();
        old.send(&Message::Started, &[]).await.unwrap();

        let Message::Sockets { sockets } = new.recv().await.unwrap() else { panic!("not the sockets") };
        assert_eq!(sockets, vec![socket]);
        assert!(matches!(new.recv().await.unwrap(), Message::Started));
        let mut fds = new.take_fds().into_iter();
        // The listener received is the one sent: it accepts what connects to its address.
        let received = std::net::TcpListener::from(fds.next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        drop(listener);
        received.accept().unwrap();
        let mut file = std::fs::File::from(fds.next().unwrap());
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "handed");
        assert!(fds.next().is_none());
    }

    #[tokio::test]
    async fn a_closed_wire_is_an_unexpected_end_and_a_bad_line_invalid_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut new = Channel::new(b);
        drop(a);
        assert_eq!(new.recv().await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);

        let (a, b) = UnixStream::pair().unwrap();
        let mut new = Channel::new(b);
        a.try_write(b"{\"step\": \"nonsense\"}\n").unwrap();
        assert_eq!(new.recv().await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_long_message_crosses_in_pieces() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut old, mut new) = (Channel::new(a), Channel::new(b));
        let why = "x".repeat(3 << 20);
        let sent = Message::Failed { why: why.clone() };
        let (sent, received) = tokio::join!(old.send(&sent, &[]), new.recv());
        sent.unwrap();
        assert!(matches!(received.unwrap(), Message::Failed { why: got } if got == why));
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("sluice-handoff-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
