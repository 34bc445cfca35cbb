//! The new process's side of a binary upgrade: started with [`ENV`] naming the old
//! process's handoff socket, it takes the listeners from there instead of binding them,
//! asks for the state once its config is valid, and says when it serves.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;

use tokio::net::UnixStream;

use super::handoff::{Channel, Handed, Message, Socket, ENV};

/// A process taking over from the one that started it.
pub struct Takeover {
    channel: Channel,
    sockets: Vec<(Socket, OwnedFd)>,
}

impl Takeover {
    /// Connects to the old process when [`ENV`] names it, and takes its listeners; `None`
    /// for a process started any other way.
    pub async fn from_env() -> std::io::Result<Option<Self>> {
        let Some(name) = std::env::var_os(ENV) else { return Ok(None) };
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_encoded_bytes())?;
        let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        stream.set_nonblocking(true)?;
        let mut channel = Channel::new(UnixStream::from_std(stream)?);
        let Message::Sockets { sockets } = channel.recv().await? else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the first message is not the sockets"));
        };
        let fds = channel.take_fds();
        if fds.len() != sockets.len() {
            let why = format!("{} sockets described, {} received", sockets.len(), fds.len());
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        }
        Ok(Some(Self { channel, sockets: sockets.into_iter().zip(fds).collect() }))
    }

    /// The handed listener for the configured address `addr`: the one the old process
    /// bound for the same configured address, or bound at it.
    pub fn listener(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let at = self.sockets.iter().position(|(s, _)| s.configured == addr || s.bound == addr)?;
        Some(std::net::TcpListener::from(self.sockets.swap_remove(at).1))
    }

    /// Says the config is valid and the listeners taken; the old process's state.
    pub async fn state(&mut self) -> std::io::Result<Handed> {
        // The listeners not taken (the config moved them) close here; the old process's
        // close when it exits.
        self.sockets.clear();
        self.channel.send(&Message::Started, &[]).await?;
        match self.channel.recv().await? {
            Message::State { handed } => Ok(*handed),
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "expected the state")),
        }
    }

    /// Tells the old process this one serves: it stops accepting and drains.
    pub async fn serving(mut self) -> std::io::Result<()> {
        self.channel.send(&Message::Serving, &[]).await
    }

    /// Tells the old process this one cannot take over, and why (as the old one logs it).
    pub async fn failed(mut self, why: &str) {
        let _ = self.channel.send(&Message::Failed { why: why.to_string() }, &[]).await;
    }
}
