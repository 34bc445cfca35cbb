//! A real redis-server on a unix socket in a temp dir of its own, no persistence; killed on
//! drop. `.ci/test` installs Debian's redis-server when it is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub dir: PathBuf,
}

impl Redis {
    pub fn start() -> Self {
        let mut redis = Self { child: None, dir: super::temp_dir("redis") };
        redis.serve();
        redis
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// `global.redis` for it.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn serve(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocketperm", "700"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (.ci/test installs Debian's redis-server)");
        self.child = Some(child);
        let start = std::time::Instant::now();
        while self.cli(&["ping"]) != "PONG" {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis-cli ARGS` against it: what it printed, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").arg("-s").arg(self.socket()).args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// As a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new, empty server on the same socket: its scripts gone.
    pub fn restart(&mut self) {
        self.kill();
        self.serve();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
