//! Real processes for tests: locate the built binaries, run them under a guard that kills the
//! child and all its descendants on drop (even when the test panics), read the `ready` line with a
//! deadline, and write temporary configurations.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`supervisor`, `gateway-worker`). `cargo test --workspace` builds
/// them next to the test executable's parent directory; when a test is run alone with
/// `cargo test -p gateway`, they are built once on demand.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    let path = dir.join(name);
    static BUILD: Once = Once::new();
    if !path.exists() {
        BUILD.call_once(|| {
            let st = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "-p",
                    "supervisor",
                    "-p",
                    "gateway-worker",
                    "--bins",
                ])
                .status()
                .expect("run cargo build");
            assert!(st.success(), "building the binaries failed");
        });
    }
    assert!(path.exists(), "binary {} not found", path.display());
    path
}

/// Every descendant pid of `pid`, found through /proc (children before grandchildren).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = ppid_of(p) {
                parents.entry(pp).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for &c in parents.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

/// Parent pid from /proc/PID/stat (the field after the parenthesised command name).
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// True while `pid` exists and is not a zombie.
/// The environment `pid` was started with (`/proc/PID/environ`: later changes to its own
/// environment do not show there), one `KEY=value` each.
pub fn start_env(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|kv| String::from_utf8_lossy(kv).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)) != Some("Z"),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
/// Receives sd_notify datagrams on `sock` until one has the line `want` (each one seen is kept
/// in `seen`), or panics after `timeout`.
pub fn expect_notify(
    sock: &std::os::unix::net::UnixDatagram,
    want: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if msg.lines().any(|l| l == want) {
                return;
            }
        }
    }
    panic!("no {want:?} within {timeout:?}; got {seen:?}");
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running child whose stdout lines and stderr text are collected by reader threads. Dropping
/// it SIGKILLs the child and every descendant, so a failed test leaves nothing running.
pub struct ChildGuard {
    pub child: Child,
    stdout_rx: mpsc::Receiver<String>,
    /// Every stdout line seen so far, in order.
    pub stdout_lines: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// `spawn_unread_stderr`: the pipe's read end, held open and never read.
    _unread: Option<std::process::ChildStderr>,
}

impl ChildGuard {
    /// Spawns `cmd` with piped stdout/stderr (stdin is piped too, and kept open).
    pub fn spawn(cmd: Command) -> Self {
        Self::spawn_with(cmd, true)
    }

    /// Like `spawn`, but nothing reads stderr (its pipe is kept open and fills up), as with a
    /// host app that never reads it; `stderr()` stays empty.
    pub fn spawn_unread_stderr(cmd: Command) -> Self {
        Self::spawn_with(cmd, false)
    }

    fn spawn_with(mut cmd: Command, read_stderr: bool) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if cmd.get_program().is_empty() {
            panic!("empty command");
        }
        let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn child");
        let (tx, stdout_rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        if !read_stderr {
            // The read end lives as long as the guard, unread.
            return Self {
                child,
                stdout_rx,
                stdout_lines: Vec::new(),
                stderr,
                _unread: Some(err),
            };
        }
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            stdout_rx,
            stdout_lines: Vec::new(),
            stderr,
            _unread: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.stdout_rx.recv_timeout(timeout).ok()?;
        self.stdout_lines.push(line.clone());
        Some(line)
    }

    /// Waits for the first stdout line that is a JSON object with `"event": event`.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.next_line(left)?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == event {
                    return Some(v);
                }
            }
        }
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes the child's stdin.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal(self.pid(), sig);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.pid();
        for d in descendants(pid).into_iter().rev() {
            signal(d, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- stderr of child {pid} ---\n{}", self.stderr());
        }
    }
}

/// A temporary directory holding a config file and the runtime directory for one test.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestEnv {
    /// Writes `config` (TOML) to `DIR/gateway.toml`. Use `{RUNTIME_DIR}` in the text for the
    /// test's private runtime directory.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gateway.toml");
        let env = Self { dir, config_path };
        env.write_config(config);
        env
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Replaces the config file's content.
    pub fn write_config(&self, config: &str) {
        let text = config.replace("{RUNTIME_DIR}", &self.runtime_dir().display().to_string());
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// A `supervisor` command with `-c` set and the environment cleaned of variables that
    /// would change its behaviour.
    pub fn supervisor(&self, args: &[&str]) -> Command {
        self.supervisor_from(&bin_path("supervisor"), args)
    }

    /// `supervisor` as above, but run from the binary at `bin` (a copy, for upgrade tests).
    pub fn supervisor_from(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(args).arg("-c").arg(&self.config_path);
        for v in [
            "GATEWAY_CONFIG",
            "GATEWAY_TOKEN",
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("RUST_LOG", "info");
        // `usage.ledger = "auto"` then lands in the test's directory, never the real home.
        cmd.env("XDG_STATE_HOME", self.dir.path().join("state"));
        cmd
    }

    /// Starts `supervisor start` with `extra` flags and waits for its ready line.
    pub fn start(&self, extra: &[&str]) -> Running {
        self.start_from(&bin_path("supervisor"), extra)
    }

    /// `start` as above, from the binary at `bin`.
    pub fn start_from(&self, bin: &Path, extra: &[&str]) -> Running {
        let mut args = vec!["start"];
        args.extend_from_slice(extra);
        Running::ready(self.supervisor_from(bin, &args))
    }

    /// The pids of the workers `status --json` shows.
    pub fn worker_pids(&self) -> Vec<u64> {
        worker_pids(&self.status_json())
    }

    /// `supervisor status --json`, parsed; panics with its stderr when the command fails.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self
            .supervisor(&["status", "--json"])
            .output()
            .expect("run supervisor status");
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }
}

/// A started supervisor.
pub struct Running {
    pub guard: ChildGuard,
    pub ready: serde_json::Value,
    pub listen: std::net::SocketAddr,
}

impl Running {
    /// Spawns `cmd` (a `supervisor start …`, set up as the caller needs) and waits, with a
    /// deadline, for its ready line.
    pub fn ready(cmd: Command) -> Running {
        Self::ready_from(ChildGuard::spawn(cmd))
    }

    /// The access line (target `access`, `--log-format json`) of request `request_id`, waited
    /// for up to 10 s; panics with the stderr when none comes.
    pub fn access_line(&self, request_id: &str) -> serde_json::Value {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self.guard.stderr().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["target"] == "access" && v["request_id"] == request_id).then_some(v)
            });
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no access line for {request_id}:\n{}", self.guard.stderr()))
    }

    /// `ready` for a child spawned by the caller.
    pub fn ready_from(mut guard: ChildGuard) -> Running {
        let ready = guard
            .wait_event("ready", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no ready line within 20s; stderr:\n{}", guard.stderr()));
        let listen = ready["listen"]
            .as_str()
            .expect("listen in ready line")
            .parse()
            .unwrap();
        Running {
            guard,
            ready,
            listen,
        }
    }
}

/// The worker pids of a `status --json` answer.
pub fn worker_pids(status: &serde_json::Value) -> Vec<u64> {
    status["workers"]
        .as_array()
        .expect("workers in status")
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

impl Running {
    /// Waits for the `stopped` line (20 s) and then asserts exit code 0 (10 s).
    pub fn expect_stopped_exit_0(&mut self) {
        assert!(
            self.guard
                .wait_event("stopped", Duration::from_secs(20))
                .is_some(),
            "{}",
            self.guard.stderr()
        );
        assert_eq!(
            self.guard
                .wait_exit(Duration::from_secs(10))
                .and_then(|s| s.code()),
            Some(0)
        );
    }
}

/// A test config: `workers` workers on any free ports, the front on a free port, no auth, fast
/// heartbeats, no health probes, a mock provider `demo` serving model `demo`, and the test's
/// private runtime directory. Defaults: `shutdown_timeout = "5s"` and fast restart backoff.
pub struct PoolConfig {
    workers: u32,
    shutdown_timeout: &'static str,
    restart_backoff: bool,
    pool: String,
    health: String,
    extra: String,
}

impl PoolConfig {
    pub fn new(workers: u32) -> Self {
        Self {
            workers,
            shutdown_timeout: "5s",
            restart_backoff: true,
            pool: String::new(),
            health: "probe_interval = \"0s\"\n".into(),
            extra: String::new(),
        }
    }

    /// The `[health]` keys, one per line (default: no background probes).
    pub fn health(mut self, keys: &str) -> Self {
        self.health = format!("{keys}\n");
        self
    }

    /// `[pool] shutdown_timeout`.
    pub fn shutdown_timeout(mut self, t: &'static str) -> Self {
        self.shutdown_timeout = t;
        self
    }

    /// Leaves out the `restart_backoff_*` keys (the built-in defaults apply).
    pub fn default_restart_backoff(mut self) -> Self {
        self.restart_backoff = false;
        self
    }

    /// More `[pool]` keys, one per line.
    pub fn pool(mut self, keys: &str) -> Self {
        self.pool = keys.to_string();
        self
    }

    /// Text after the `demo` provider: more providers or tables.
    pub fn extra(mut self, text: &str) -> Self {
        self.extra = text.to_string();
        self
    }

    pub fn build(&self) -> String {
        let Self {
            workers,
            shutdown_timeout,
            pool,
            health,
            extra,
            ..
        } = self;
        let backoff = if self.restart_backoff {
            "restart_backoff_initial = \"50ms\"\nrestart_backoff_max = \"1s\"\n"
        } else {
            ""
        };
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
auth_token_env = ""

[pool]
workers = {workers}
base_port = 0
runtime_dir = "{{RUNTIME_DIR}}"
heartbeat_interval = "200ms"
heartbeat_timeout = "1s"
startup_timeout = "10s"
shutdown_timeout = "{shutdown_timeout}"
{backoff}{pool}
[health]
{health}
[[providers]]
name = "demo"
kind = "mock"
models = ["demo"]
{extra}
"#
        )
    }
}

/// The default `PoolConfig` for `workers` workers, with `extra` after the `demo` provider.
pub fn mock_config(workers: u32, extra: &str) -> String {
    PoolConfig::new(workers).extra(extra).build()
}
