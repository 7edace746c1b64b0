//! A real `redis-server` for the `[shared]` tests: on a free port (redis refuses `--port 0`, so
//! one is found by binding port 0 and releasing it, with a retry if another process takes it
//! first), in a temporary directory, with no persistence. Killed on drop; `kill` and `restart`
//! (same port) let a test take it away mid-load.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn server_bin() -> PathBuf {
    for b in ["redis-server", "valkey-server"] {
        if let Ok(out) = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .output()
        {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    panic!("neither redis-server nor valkey-server is installed (.ci/run installs redis-server)");
}

impl Redis {
    /// Starts one and waits (up to 10 s) until it answers PING.
    pub fn start() -> Redis {
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new(server_bin())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir".as_ref(), self.dir.path().as_os_str()])
            .stdout(std::fs::File::create(self.dir.path().join("redis.log")).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false; // the port was taken: exited at once
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One PING over a raw socket (RESP inline command).
    pub fn ping(&self) -> bool {
        self.command("PING").is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one inline command and returns the raw reply (for INFO, counters and the like).
    pub fn command(&self, cmd: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(format!("{cmd}\r\nQUIT\r\n").as_bytes()).ok()?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        Some(out)
    }

    /// SIGKILLs the server (it keeps no data).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}: {}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
