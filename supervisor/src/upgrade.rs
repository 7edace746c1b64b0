//! In-place upgrade (contract "Upgrade"), first half: the check of the new binary, done before
//! anything irreversible. After an `execve` there is no old process to return to, so the binary
//! now at the supervisor's path must first prove that it runs (`--version`, answering as a
//! supervisor) and that it accepts the running configuration (`check-config -c FILE`), each
//! within [`CHECK_TIMEOUT`]. A failure names the binary and why; the old image keeps serving.
//!
//! Then the re-exec (`start` drives it): the front stops accepting and drains (up to
//! `pool.shutdown_timeout`) while its listening socket stays open, so new connections wait in
//! the kernel's backlog. The workers keep running: each slot task releases its serving process
//! (`Pool::hand_over`; a replacement still starting is killed) and the usage receiver hands
//! over its listener and the workers' connections (`Usage::hand_over`). Kept open across the
//! exec (close-on-exec cleared): the front listener, the admin listener and the
//! runtime-directory lock ([`Handoff`], named by [`HANDOFF_ENV`]); each slot's worker port and
//! front socket; each handed worker's stdout and stderr pipes; the usage socket and its
//! connections. What the new image needs besides ([`HandedPool`]: slots, pids, ports, heartbeat
//! files, provider rows, counters, and the number of every descriptor above) goes into
//! [`STATE_FILE`] in the runtime directory, 0600, written right before the exec and read and
//! removed by the new image ([`HandedPool::take`], which makes the descriptors close-on-exec
//! again). The `execve` runs on the pool's spawner thread (`Spawner::exec`): every worker was
//! forked there and its `PR_SET_PDEATHSIG` fires when that *thread* ends, and an `execve` ends
//! every thread but the caller. If the `execve` itself fails, the process executes its own
//! pinned image the same way, so the old version comes back instead of nothing.
//!
//! The new image adopts the descriptors instead of binding and locking, and the workers
//! instead of spawning (`Pool::start_adopting`): each is still its child, watched through a
//! pidfd (`spawn::Adopted`), IDLE at once. A handed worker that cannot be adopted (already
//! dead, its socket unusable, its slot gone from the configuration) is killed and its slot
//! starts fresh; a state file that cannot be read makes every child a stray
//! ([`kill_strays`], before anything is spawned), so no worker is left unsupervised. Once
//! serving, `start` replaces the adopted workers one at a time with workers of the new binary
//! (`Pool::replace_adopted`, the reload's roll, reason `upgrade`).
//!
//! Limit: an adopted worker not yet replaced when a second upgrade execs (its replacement
//! failed) is a child of the thread that exec ends, so it dies with it; its slot starts fresh.

use std::ffi::{CString, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that hands the kept descriptors to the new image; consumed and
/// removed by it at start, so workers never see it.
pub const HANDOFF_ENV: &str = "GATEWAY_UPGRADE_HANDOFF";

/// What an upgrading image passes to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The front listener (listening, never closed across the exec).
    pub front: RawFd,
    /// The admin socket's listener.
    pub admin: RawFd,
    /// `supervisor.lock`, flocked.
    pub lock: RawFd,
    /// The runtime directory that lock holds.
    pub dir: PathBuf,
    /// Whether the first image created the directory (then it is removed at the end).
    pub created: bool,
    /// How many in-place upgrades this process has been through, this one included.
    pub generation: u64,
}

impl Handoff {
    /// `front=3;admin=4;lock=5;created=1;generation=1;dir=/run/gw` (the directory last: it may
    /// hold any character).
    pub fn encode(&self) -> OsString {
        let mut s = OsString::from(format!(
            "front={};admin={};lock={};created={};generation={};dir=",
            self.front,
            self.admin,
            self.lock,
            u8::from(self.created),
            self.generation
        ));
        s.push(self.dir.as_os_str());
        s
    }

    pub fn decode(raw: &std::ffi::OsStr) -> Result<Self, String> {
        let bad = |why: &str| format!("${HANDOFF_ENV} {raw:?}: {why}");
        let bytes = raw.as_bytes();
        let at = bytes
            .windows(5)
            .position(|w| w == b";dir=")
            .ok_or_else(|| bad("no dir"))?;
        let head = std::str::from_utf8(&bytes[..at]).map_err(|_| bad("not UTF-8"))?;
        let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[at + 5..]));
        let mut fields = std::collections::HashMap::new();
        for kv in head.split(';') {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad("a field without ="))?;
            let v: u64 = v
                .parse()
                .map_err(|_| bad(&format!("{k} is not a number")))?;
            fields.insert(k, v);
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| bad(&format!("no {k}")))
        };
        let fd = |k: &str| get(k).and_then(|v| RawFd::try_from(v).map_err(|_| bad(k)));
        Ok(Self {
            front: fd("front")?,
            admin: fd("admin")?,
            lock: fd("lock")?,
            created: get("created")? == 1,
            generation: get("generation")?,
            dir,
        })
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The state file's name in the runtime directory: 0600, written by the upgrading image right
/// before the `execve`, read and removed by the new one.
pub const STATE_FILE: &str = "upgrade-state.json";

/// The pool as the upgrading image hands it over: every slot, its sockets and its worker.
/// Descriptor numbers are valid in the new image (kept open across the `execve`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedPool {
    pub slots: Vec<HandedSlot>,
    /// Whether `providers.shm` exists and the handed workers have it mapped.
    pub provider_table: bool,
    /// The usage socket's listener and the handed workers' connections to it.
    #[serde(default)]
    pub usage: Option<HandedUsage>,
}

/// The usage receiver's sockets (`usage::UsageFds`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedUsage {
    pub listener: RawFd,
    pub conns: Vec<RawFd>,
}

/// One slot: its listening sockets, its counters, and its serving worker, if it had one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedSlot {
    pub id: usize,
    /// The worker port's listener.
    pub tcp: RawFd,
    /// The front socket's listener and path.
    pub front: Option<(RawFd, PathBuf)>,
    /// Processes spawned for the slot so far (names the next heartbeat file).
    pub generation: u64,
    pub restarts: u32,
    pub replaced: u32,
    pub served: u64,
    pub worker: Option<HandedWorker>,
}

/// A serving worker, still running, still this process's child.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandedWorker {
    pub pid: u32,
    pub heartbeat_file: PathBuf,
    /// Unix ms when it was spawned.
    pub started_at_ms: u64,
    /// Its row of `providers.shm`.
    pub provider_row: Option<usize>,
    /// The read ends of its stdout and stderr.
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// Whether it serves the slot's front socket.
    pub front_served: bool,
}

impl HandedPool {
    /// Every descriptor it names: these must stay open across the `execve`.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut out = Vec::new();
        for s in &self.slots {
            out.push(s.tcp);
            out.extend(s.front.as_ref().map(|f| f.0));
            if let Some(w) = &s.worker {
                out.extend(w.stdout);
                out.extend(w.stderr);
            }
        }
        if let Some(u) = &self.usage {
            out.push(u.listener);
            out.extend(&u.conns);
        }
        out
    }

    /// Every worker pid it names.
    pub fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.worker.as_ref().map(|w| w.pid))
            .collect()
    }

    /// Writes the state file into `dir` (fresh, 0600).
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        gateway::runtime_file::create_fresh(&path)
            .and_then(|mut f| f.write_all(&text))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Reads and removes the state file an upgrading image left in `dir`, and makes every
    /// descriptor it names close-on-exec again (new workers must not inherit them). `Ok(None)`
    /// when there is none (that image stopped its workers). A file that cannot be read or
    /// parsed is an error naming it; its workers are then strays (`kill_strays`).
    pub fn take(dir: &Path) -> Result<Option<Self>, String> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let _ = std::fs::remove_file(&path);
        let state: Self =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for fd in state.fds() {
            reclaim(fd)?;
        }
        Ok(Some(state))
    }
}

/// Kills and reaps every child process of this one not in `keep`: workers the previous image
/// left that this one will not adopt (a state file that could not be read). Runs before this
/// image spawns anything, so every child found is the previous image's.
pub fn kill_strays(keep: &[u32]) {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) || keep.contains(&pid) {
            continue;
        }
        tracing::warn!(
            pid,
            "upgrade: killing a worker of the previous image that is not adopted"
        );
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// How many in-place upgrades this process has been through (0 for a fresh start).
pub fn generation() -> u64 {
    GENERATION.load(Relaxed)
}

/// The handoff of the image that executed this one, if any, removed from the environment.
/// Called before any thread exists (removing a variable is only sound then).
pub fn take_handoff() -> Option<Result<Handoff, String>> {
    let raw = std::env::var_os(HANDOFF_ENV)?;
    std::env::remove_var(HANDOFF_ENV);
    let h = Handoff::decode(&raw);
    if let Ok(h) = &h {
        GENERATION.store(h.generation, Relaxed);
    }
    Some(h)
}

/// This build's version: the package's, with `GATEWAY_VERSION_SUFFIX` (set at build time)
/// appended, so two builds of one version can be told apart.
pub fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{}{}",
            env!("CARGO_PKG_VERSION"),
            option_env!("GATEWAY_VERSION_SUFFIX").unwrap_or("")
        )
    })
}

/// Executes `exe` in this process with this process's arguments and environment plus the
/// handoff, the handed descriptors made inheritable. Returns only on failure, with why.
/// `extra`: further descriptors to keep (the pool's, `HandedPool::fds`).
pub fn exec(exe: &Path, handoff: &Handoff, extra: &[RawFd]) -> String {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    for &fd in [handoff.front, handoff.admin, handoff.lock]
        .iter()
        .chain(extra)
    {
        if let Err(e) = fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())) {
            return format!("cannot keep fd {fd} open across the exec: {e}");
        }
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| "a NUL byte in an argument".to_string());
    let build = || -> Result<(CString, Vec<CString>, Vec<CString>), String> {
        let path = cstr(exe.as_os_str().as_bytes())?;
        let argv = std::env::args_os()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k != HANDOFF_ENV {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                envp.push(cstr(&kv)?);
            }
        }
        let mut ours = format!("{HANDOFF_ENV}=").into_bytes();
        ours.extend_from_slice(handoff.encode().as_bytes());
        envp.push(cstr(&ours)?);
        Ok((path, argv, envp))
    };
    match build() {
        Ok((path, argv, envp)) => {
            // The lines still queued for stderr would die with this image.
            crate::logging::flush();
            match nix::unistd::execve(&path, &argv, &envp) {
                Ok(never) => match never {},
                Err(e) => format!("execve {}: {e}", exe.display()),
            }
        }
        Err(e) => e,
    }
}

/// Makes an adopted descriptor close-on-exec again, so workers do not inherit it.
pub fn reclaim(fd: RawFd) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(|_| ())
        .map_err(|e| format!("handed fd {fd}: {e}"))
}

/// Set for the new binary's `check-config`: a binary that can adopt handed workers then prints
/// [`ADOPTS_LINE`] as well. One that does not (an older version: a rollback) gets what it
/// understands, stopped workers and no state file.
pub const QUERY_ENV: &str = "GATEWAY_UPGRADE_QUERY";

/// What `check-config` prints under [`QUERY_ENV`] when this binary adopts workers.
pub const ADOPTS_LINE: &str = "upgrade: adopts running workers (upgrade-state.json v1)";

/// What the checks found out about the new binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `supervisor 0.1.0`.
    pub version: String,
    /// It takes over running workers (else they are stopped before the exec).
    pub adopts: bool,
}

/// How long each check of the new binary may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--version` prints first: clap's `NAME VERSION`.
const VERSION_PREFIX: &str = "supervisor ";

/// Runs the checks on `exe`; what they found when both pass.
pub async fn check(exe: &Path, config: &Path) -> Result<Checked, String> {
    let name = exe.display();
    let version = run(exe, &["--version".as_ref()]).await?;
    let version = version.lines().next().unwrap_or("").trim().to_string();
    if !version.starts_with(VERSION_PREFIX) {
        return Err(format!(
            "new binary {name}: `--version` printed {version:?}, not a supervisor's version"
        ));
    }
    let out = run(
        exe,
        &["check-config".as_ref(), "-c".as_ref(), config.as_os_str()],
    )
    .await?;
    Ok(Checked {
        version,
        adopts: out.lines().any(|l| l == ADOPTS_LINE),
    })
}

/// Runs `exe args` without a shell, with no stdin, and returns its stdout when it exits 0.
async fn run(exe: &Path, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let what = format!(
        "new binary {}: `{}`",
        exe.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The check must not talk to systemd or pick up our socket-activation variables.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env(QUERY_ENV, "1")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    let out = tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{what}: no answer within {CHECK_TIMEOUT:?}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        return Err(format!(
            "{what}: exited with {}{}",
            out.status,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {}", first.join(" | "))
            }
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The on-disk path the supervisor was started from (not the pinned image workers run).
pub fn exe_path() -> Result<PathBuf, String> {
    crate::pool::spawn::self_exe_path()
        .map_err(|e| format!("cannot tell the supervisor's path: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_handoff_survives_its_encoding_and_a_broken_one_is_named() {
        let h = Handoff {
            front: 3,
            admin: 4,
            lock: 7,
            dir: PathBuf::from("/run/a;dir=b c"),
            created: true,
            generation: 2,
        };
        assert_eq!(Handoff::decode(&h.encode()).unwrap(), h);
        let e = Handoff::decode("front=x;dir=/d".as_ref()).unwrap_err();
        assert!(e.contains(HANDOFF_ENV) && e.contains("front"), "{e}");
    }

    fn script(dir: &Path, body: &str, mode: u32) -> PathBuf {
        let p = dir.join("supervisor");
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[tokio::test]
    async fn a_binary_that_cannot_run_or_fails_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, "").unwrap();
        let p = script(dir.path(), "#!/bin/sh\necho 'supervisor 9'\n", 0o644);
        let e = check(&p, &cfg).await.unwrap_err();
        assert!(
            e.contains("cannot run") && e.contains("ermission denied"),
            "{e}"
        );
        let p = script(dir.path(), "#!/bin/sh\necho boom >&2\nexit 3\n", 0o755);
        let e = check(&p, &cfg).await.unwrap_err();
        assert!(e.contains("--version") && e.contains("boom"), "{e}");
        let p = script(dir.path(), "#!/bin/sh\necho 'something else'\n", 0o755);
        let e = check(&p, &cfg).await.unwrap_err();
        assert!(e.contains("not a supervisor"), "{e}");
        let p = script(
            dir.path(),
            "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'supervisor 9'; exit 0; }\necho 'bad key' >&2\nexit 2\n",
            0o755,
        );
        let e = check(&p, &cfg).await.unwrap_err();
        assert!(e.contains("check-config") && e.contains("bad key"), "{e}");
        // An older binary: it checks, but does not adopt workers.
        let p = script(dir.path(), "#!/bin/sh\necho 'supervisor 9'\n", 0o755);
        let c = check(&p, &cfg).await.unwrap();
        assert_eq!((c.version.as_str(), c.adopts), ("supervisor 9", false));
        let p = script(
            dir.path(),
            &format!("#!/bin/sh\necho 'supervisor 9'\n[ \"${QUERY_ENV}\" = 1 ] && echo '{ADOPTS_LINE}'\nexit 0\n"),
            0o755,
        );
        assert!(check(&p, &cfg).await.unwrap().adopts);
    }

    #[test]
    fn the_state_file_is_private_read_once_and_its_descriptors_close_on_exec_again() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        for fd in [&r, &w] {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        }
        let state = HandedPool {
            slots: vec![HandedSlot {
                id: 0,
                tcp: r.as_raw_fd(),
                front: None,
                generation: 3,
                restarts: 1,
                replaced: 2,
                served: 40,
                worker: Some(HandedWorker {
                    pid: 1234,
                    heartbeat_file: dir.path().join("worker-0-3.hb"),
                    started_at_ms: 5,
                    provider_row: Some(7),
                    stdout: None,
                    stderr: Some(w.as_raw_fd()),
                    front_served: true,
                }),
            }],
            provider_table: true,
            usage: None,
        };
        state.write(dir.path()).unwrap();
        let path = dir.path().join(STATE_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(HandedPool::take(dir.path()).unwrap(), Some(state));
        assert!(!path.exists(), "removed once read");
        for fd in [&r, &w] {
            let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        }
        assert_eq!(HandedPool::take(dir.path()).unwrap(), None);
        std::fs::write(&path, "{not json").unwrap();
        let e = HandedPool::take(dir.path()).unwrap_err();
        assert!(e.contains(STATE_FILE), "{e}");
    }
}
