//! Starting worker processes, and the `Proc` guard that owns one.
//!
//! Every fork happens on one dedicated, long-lived std thread (the *spawner*). The reason is
//! `PR_SET_PDEATHSIG`: Linux sends the death signal when the *thread* that forked the child
//! exits, not the process. A spawn from a tokio blocking-pool thread would kill the worker the
//! moment that idle pool thread is retired (10 s later by default). The spawner thread lives as
//! long as anyone can send it a request, i.e. as long as the pool's tasks run.
//!
//! The same thread runs an in-place upgrade's `execve` (`Spawner::exec`): it becomes the new
//! image's main thread, so the workers it forked keep their parent and live on, adopted by the
//! new image (`Proc::adopt`, waited on through a pidfd: `Waiter::Adopted`).
//!
//! The child side (`pre_exec`, between fork and exec) only makes async-signal-safe system calls
//! through nix: prctl, getppid, dup2, fcntl. It allocates nothing.
//!
//! `LISTEN_PID` choice: the environment is fixed before the fork, and the child's pid is only
//! known after it, so setting `LISTEN_PID` would need `setenv` in `pre_exec`, which allocates and
//! may deadlock on an allocator lock held by another thread at fork time. We pass `LISTEN_FDS=1`
//! and leave `LISTEN_PID` unset; sd_listen_fds-style readers (the `listenfd` crate the worker
//! uses) skip the pid check when it is absent. The supervisor's own `LISTEN_*` variables are
//! removed, so a socket-activated supervisor's fds never leak into a worker's reading.
//!
//! The built-in worker is exec'd from the supervisor's own image, held open since start
//! (`SelfExe`), never from the path on disk, which an upgrade or uninstall may have replaced.
//!
//! Tokens: a worker inherits none of the configuration's token variables (`auth_token_env`,
//! `[[clients]] token_env`); it gets the token set as a sealed memfd at fd 5, named by
//! `GATEWAY_ADMISSION_FD` (`gateway::admission`), so no token sits in its environment, its argv
//! or a file.

use gateway::admission::{CHILD_FD, ENV_FD};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Environment variables that belong to the supervisor's own service manager and must not
/// reach a worker (a worker answering systemd's watchdog would mask a hung supervisor).
pub const STRIPPED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// How many stderr lines a slot keeps for its DEAD report.
pub const STDERR_TAIL: usize = 20;

enum SpawnRequest {
    Spawn {
        cmd: Command,
        reply: oneshot::Sender<io::Result<Child>>,
    },
    /// Runs the closure (an `execve`) on the spawner thread; it returns only on failure.
    Exec {
        exec: Box<dyn FnOnce() -> String + Send>,
        reply: oneshot::Sender<String>,
    },
}

/// Handle to the spawner thread. Cloning shares the one thread.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Starts the spawner thread. It enters `runtime` so that tokio registers each child with
    /// that runtime's process driver, and it ends when the last `Spawner` clone is dropped.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Self> {
        // A handful of queued spawns is plenty: they come from slot tasks, one at a time each.
        let (tx, mut rx) = mpsc::channel::<SpawnRequest>(16);
        std::thread::Builder::new()
            .name("gw-spawner".into())
            .spawn(move || {
                let _rt = runtime.enter();
                while let Some(req) = rx.blocking_recv() {
                    match req {
                        SpawnRequest::Spawn { mut cmd, reply } => {
                            let _ = reply.send(cmd.spawn());
                        }
                        SpawnRequest::Exec { exec, reply } => {
                            let _ = reply.send(exec());
                        }
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Spawns `cmd` on the spawner thread.
    pub async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        let gone = || io::Error::other("spawner thread is gone");
        self.tx
            .send(SpawnRequest::Spawn { cmd, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs `exec` (an in-place upgrade's `execve`) on the spawner thread, the thread every
    /// worker was forked from: their `PR_SET_PDEATHSIG` fires when *that thread* ends, and an
    /// `execve` ends every thread but the calling one, which becomes the new image's main
    /// thread. So the workers live on, children of the new image. Returns only when the exec
    /// failed, with why.
    pub async fn exec(&self, exec: Box<dyn FnOnce() -> String + Send>) -> String {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(SpawnRequest::Exec { exec, reply })
            .await
            .is_err()
        {
            return "spawner thread is gone".into();
        }
        rx.await.unwrap_or_else(|_| "spawner thread is gone".into())
    }
}

/// What a worker process needs to be started.
pub struct WorkerSpec<'a> {
    /// `[program, args...]`; the supervisor appends `--config`, `--heartbeat-file`, `--heartbeat-interval`.
    pub argv: &'a [String],
    pub config_path: &'a std::path::Path,
    pub heartbeat_file: &'a std::path::Path,
    pub heartbeat_interval: Duration,
    /// The slot's listening socket, passed as fd 3.
    pub listener: RawFd,
    /// The slot's front socket, passed as fd 4 when given (`LISTEN_FDS=2`).
    pub front: Option<RawFd>,
    /// Where the worker's row of the pool-wide provider table is, when there is one.
    pub provider_row: Option<&'a super::provider_rows::RowLease>,
    /// The token set (`Tokens::to_memfd`), passed as fd 5 (`admission::CHILD_FD`).
    pub admission: RawFd,
    /// The configuration's token variables, removed from the worker's environment.
    pub token_env: Vec<&'a str>,
}

/// `[program, args...]` from `pool.worker_command` (spawned by its path), or the hidden `worker`
/// subcommand of the image this process runs when it is empty (see [`SelfExe`]).
pub fn worker_argv(worker_command: &[String]) -> io::Result<Vec<String>> {
    if !worker_command.is_empty() {
        return Ok(worker_command.to_vec());
    }
    Ok(vec![self_exe()?.path(), "worker".into()])
}

/// The binary image this process runs, held open from the start. A package upgrade `mv`s a new
/// file over the binary, an uninstall `rm`s it: `current_exe()` then names a file that is gone
/// (`… (deleted)`) or another program, and every respawn would fail or run another version. An
/// exec of `/proc/self/fd/N` in the forked child runs exactly the image the supervisor runs.
struct SelfExe {
    /// Close-on-exec on purpose: the kernel opens `/proc/self/fd/N` before the exec closes the
    /// fd, so the exec works and the worker does not inherit it.
    fd: OwnedFd,
    /// The worker's argv[0]: where the binary was when we opened it, for `ps`.
    name: String,
}

/// Lowest number for the held fd: above every fixed fd a worker is given (3, 4, ...), so the
/// `dup2`s of `child_setup` can never replace it before the exec.
const SELF_EXE_FD_MIN: RawFd = 64;

static SELF_EXE: OnceLock<Result<SelfExe, String>> = OnceLock::new();

/// Opens this process's image now (at start, before anyone can replace the file); later calls
/// reuse it. An error is kept and reported by every spawn of the built-in worker.
pub fn pin_self_exe() -> io::Result<()> {
    self_exe().map(|_| ())
}

/// Where the binary was when this process opened its image at start: the path an upgrade
/// re-executes (the file now there may be a newer version).
pub fn self_exe_path() -> io::Result<PathBuf> {
    self_exe().map(|s| PathBuf::from(&s.name))
}

/// `/proc/self/fd/N` of the pinned image: what an upgrade re-executes when the new binary's
/// `execve` fails, so this very version comes back.
pub fn self_exe_image() -> io::Result<PathBuf> {
    self_exe().map(|s| PathBuf::from(s.path()))
}

fn self_exe() -> io::Result<&'static SelfExe> {
    SELF_EXE
        .get_or_init(|| open_self_exe().map_err(|e| format!("cannot open /proc/self/exe: {e}")))
        .as_ref()
        .map_err(|e| io::Error::other(e.clone()))
}

fn open_self_exe() -> io::Result<SelfExe> {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::{AsRawFd, FromRawFd};
    // Opening the magic link gives the running image itself, even when its file is deleted.
    let file = std::fs::File::open("/proc/self/exe")?;
    let raw = fcntl(file.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(SELF_EXE_FD_MIN))
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    // SAFETY: `raw` was just returned by fcntl: an open fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::env::current_exe()
        .map(|p| {
            let p = p.to_string_lossy().into_owned();
            p.strip_suffix(" (deleted)")
                .map(str::to_string)
                .unwrap_or(p)
        })
        .unwrap_or_else(|_| "supervisor".into());
    Ok(SelfExe { fd, name })
}

impl SelfExe {
    /// `/proc/self/fd/N`: resolved in the forked child, which inherited fd N.
    fn path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
}

/// argv[0] for `program`: the binary's name when it is the held image, else `program` itself.
fn arg0(program: &str) -> &str {
    match SELF_EXE.get() {
        Some(Ok(exe)) if exe.path() == program => &exe.name,
        _ => program,
    }
}

/// Builds the command: spawned directly (no shell), its own process group, stdin closed,
/// stdout/stderr piped to the relays, killed if the `Child` is dropped unreaped.
pub fn command(spec: &WorkerSpec<'_>) -> io::Result<Command> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty worker command"))?;
    let mut cmd = Command::new(program);
    cmd.arg0(arg0(program))
        .args(args)
        .arg("--config")
        .arg(spec.config_path)
        .arg("--heartbeat-file")
        .arg(spec.heartbeat_file)
        .arg("--heartbeat-interval")
        .arg(humantime::format_duration(spec.heartbeat_interval).to_string());
    for var in STRIPPED_ENV.iter().chain(&spec.token_env) {
        cmd.env_remove(var);
    }
    cmd.env(ENV_FD, CHILD_FD.to_string());
    if let Some(lease) = spec.provider_row {
        for (k, v) in lease.env() {
            cmd.env(k, v);
        }
    }
    if spec.front.is_some() {
        // sd_listen_fds_with_names(3) style names, for whoever inspects the worker.
        cmd.env("LISTEN_FDNAMES", "http:front");
    }
    // Built-in workers then log records the relay re-emits (`log_relay`); others ignore it.
    cmd.env(gateway_worker::cli::LOG_RECORDS_ENV, "json");
    cmd.env("LISTEN_FDS", if spec.front.is_some() { "2" } else { "1" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // Captured before the fork: the child compares it with getppid() after arming pdeathsig.
    let parent = nix::unistd::getpid();
    let (fd, front, admission) = (spec.listener, spec.front, spec.admission);
    // SAFETY: the closure runs in the forked child before exec. It only makes async-signal-safe
    // system calls (prctl, getppid, dup2, fcntl), allocates nothing (errors are raw errnos) and
    // touches no lock, so it is sound even though the parent is multi-threaded.
    unsafe {
        cmd.pre_exec(move || child_setup(fd, front, admission, parent));
    }
    Ok(cmd)
}

/// Runs in the child between fork and exec; see `command`.
fn child_setup(
    listener: RawFd,
    front: Option<RawFd>,
    admission: RawFd,
    parent: Pid,
) -> io::Result<()> {
    let errno = |e: nix::errno::Errno| io::Error::from_raw_os_error(e as i32);
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno)?;
    // The parent may have died between fork and prctl; then the signal was never armed for it and
    // we are already an orphan. Bail out instead of running unsupervised.
    if nix::unistd::getppid() != parent {
        return Err(io::Error::from_raw_os_error(
            nix::errno::Errno::ESRCH as i32,
        ));
    }
    use nix::fcntl::{fcntl, FcntlArg};
    // Each source is first copied above the targets (close-on-exec, so the copies vanish at
    // exec): otherwise placing one at 3 could overwrite another if it happened to be fd 3.
    // The copies are >= 10, never a target, so dup2 always clears close-on-exec on 3, 4 and 5.
    let high = |fd: RawFd| fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(errno);
    let tcp = high(listener)?;
    let front = front.map(high).transpose()?;
    let admission = high(admission)?;
    nix::unistd::dup2(tcp, 3).map_err(errno)?;
    if let Some(f) = front {
        nix::unistd::dup2(f, 4).map_err(errno)?;
    }
    nix::unistd::dup2(admission, CHILD_FD).map_err(errno)?;
    Ok(())
}

/// How the slot task waits for a process: the tokio `Child` of a process this image spawned, or
/// a pidfd for one it adopted from the image before an in-place upgrade (`Proc::adopt`): still
/// our child (same pid), but with no `Child` in this image. A pidfd turns readable when the
/// process exits; `waitpid(pid, WNOHANG)` then reaps it and gives its status.
pub enum Waiter {
    Spawned(Child),
    Adopted(Adopted),
    /// Handed to the next image (`Proc::release`): never waited on or signalled here again.
    Released,
}

impl Waiter {
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Self::Spawned(c) => c.wait().await,
            Self::Adopted(a) => a.wait().await,
            Self::Released => std::future::pending().await,
        }
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Self::Spawned(c) => c.try_wait(),
            Self::Adopted(a) => a.try_wait(),
            Self::Released => Ok(None),
        }
    }
}

/// An adopted child process, watched through its pidfd.
pub struct Adopted {
    pid: Pid,
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl Adopted {
    /// Opens a pidfd on `pid` and makes sure it is an unreaped child of this process: the error
    /// says when it already exited (it is then reaped) or is not our child.
    pub fn open(pid: u32) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let raw_pid = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
        let pid_t = Pid::from_raw(raw_pid);
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory passed.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            return Err(kill_unwatchable(pid_t, io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd just returned by the kernel, owned by nothing else. pidfds are
        // close-on-exec.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: the OwnedFd is moved into the AsyncFd, which neither replaces nor closes it
        // while registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| kill_unwatchable(pid_t, e.into()))?;
        let mut a = Self {
            pid: Pid::from_raw(raw_pid),
            fd,
        };
        // The pidfd was opened first: an unreaped child's pid cannot be reused, so from here on
        // the pidfd and the waitpid below name the same process.
        match a.try_wait()? {
            None => Ok(a),
            Some(st) => Err(io::Error::other(format!(
                "already exited ({})",
                super::task::describe(st)
            ))),
        }
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer to a local int.
        let r = unsafe { nix::libc::waitpid(self.pid.as_raw(), &mut status, nix::libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r == self.pid.as_raw() => Ok(Some(ExitStatus::from_raw(status))),
            _ => Err(io::Error::last_os_error()),
        }
    }

    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            let mut ready = self.fd.readable().await?;
            ready.clear_ready();
        }
    }
}

/// `pid` cannot be watched (no pidfd: out of descriptors, say): if it is a running child of
/// ours it is killed and reaped rather than left unsupervised. Returns `e`.
fn kill_unwatchable(pid: Pid, e: io::Error) -> io::Error {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    if let Ok(WaitStatus::StillAlive) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        // SIGKILLed: the wait is short.
        let _ = waitpid(pid, None);
        return io::Error::new(e.kind(), format!("{e}; killed it"));
    }
    e
}

/// One running (or just exited) worker process and everything tied to it. Dropping it before the
/// exit was observed SIGKILLs its whole process group: cleanup is a drop guard.
pub struct Proc {
    pub child: Waiter,
    pub pid: u32,
    pub heartbeat_file: PathBuf,
    pub spawned: Instant,
    /// Unix ms at spawn, for `uptime_ms`.
    pub spawned_wall_ms: u64,
    /// INIT deadline; pushed back when the supervisor itself was suspended.
    pub ready_by: Instant,
    /// The first heartbeat was seen.
    pub ready: bool,
    /// Consecutive sweeps that found the heartbeat stale.
    pub stale_sweeps: u8,
    /// `slot.served` when this process became current: requests since = served - base.
    pub served_base: u64,
    /// Recycle after this many requests (max_requests + this process's jitter); None = off.
    pub request_limit: Option<u64>,
    /// Set once reaped; never wait on a reaped child again (tokio returns the cached status).
    pub exit: Option<ExitStatus>,
    /// This process's row of the provider table; given back only once the process is dead.
    pub provider_row: Option<super::provider_rows::RowLease>,
    /// Copies of the read ends of its stdout and stderr (close-on-exec), so that an upgrade can
    /// hand them to the next image, which relays them on.
    pipes: [Option<OwnedFd>; 2],
    relays: Vec<JoinHandle<()>>,
}

/// What the next image needs of a process handed over by `Proc::release`: its descriptors stay
/// open in this image until the `execve`.
pub struct Released {
    pub pid: u32,
    pub heartbeat_file: PathBuf,
    pub spawned_wall_ms: u64,
    pub provider_row: Option<usize>,
    /// stdout, stderr.
    pub pipes: [Option<OwnedFd>; 2],
}

impl Proc {
    /// Wraps a spawned child and starts relaying its output, tagged with `worker`.
    pub fn new(
        mut child: Child,
        worker: usize,
        heartbeat_file: PathBuf,
        ready_by: Instant,
        tail: StderrTail,
    ) -> Self {
        use std::os::fd::AsFd;
        let pid = child.id().unwrap_or(0);
        let mut relays = Vec::with_capacity(2);
        let mut pipes = [None, None];
        if let Some(out) = child.stdout.take() {
            pipes[0] = out.as_fd().try_clone_to_owned().ok();
            relays.push(tokio::spawn(crate::log_relay::relay(
                out, worker, pid, "stdout", None,
            )));
        }
        if let Some(err) = child.stderr.take() {
            pipes[1] = err.as_fd().try_clone_to_owned().ok();
            relays.push(tokio::spawn(crate::log_relay::relay(
                err,
                worker,
                pid,
                "stderr",
                Some(tail),
            )));
        }
        Self::with(
            Waiter::Spawned(child),
            pid,
            heartbeat_file,
            ready_by,
            pipes,
            relays,
        )
    }

    fn with(
        child: Waiter,
        pid: u32,
        heartbeat_file: PathBuf,
        ready_by: Instant,
        pipes: [Option<OwnedFd>; 2],
        relays: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            child,
            pid,
            heartbeat_file,
            spawned: Instant::now(),
            spawned_wall_ms: unix_ms(),
            ready_by,
            ready: false,
            stale_sweeps: 0,
            served_base: 0,
            request_limit: None,
            exit: None,
            provider_row: None,
            pipes,
            relays,
        }
    }

    /// Takes over `pid`, a worker the previous image handed over (still our child), with its
    /// output pipes (relayed from here on). Fails when it is not an unreaped child of ours.
    pub fn adopt(
        pid: u32,
        worker: usize,
        heartbeat_file: PathBuf,
        pipes: [Option<OwnedFd>; 2],
        tail: StderrTail,
    ) -> io::Result<Self> {
        let waiter = Adopted::open(pid)?;
        let mut relays = Vec::with_capacity(2);
        let mut kept = [None, None];
        for (i, fd) in pipes.into_iter().enumerate() {
            let Some(fd) = fd else { continue };
            kept[i] = fd.try_clone().ok();
            let (name, tail) = if i == 0 {
                ("stdout", None)
            } else {
                ("stderr", Some(tail.clone()))
            };
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(rx) => relays.push(tokio::spawn(crate::log_relay::relay(
                    rx, worker, pid, name, tail,
                ))),
                Err(e) => {
                    tracing::warn!(worker, pid, "cannot relay the adopted worker's {name}: {e}")
                }
            }
        }
        let mut p = Self::with(
            Waiter::Adopted(waiter),
            pid,
            heartbeat_file,
            std::time::Instant::now(),
            kept,
            relays,
        );
        p.ready = true;
        Ok(p)
    }

    /// Hands the process over to the next image: from now on this image neither waits on it
    /// nor signals it, and its heartbeat file and provider row stay as they are. Its relays stop
    /// (what they read and had not logged yet is lost; the pipes keep the rest for the next
    /// image).
    pub fn release(mut self) -> Released {
        for h in &self.relays {
            h.abort();
        }
        self.relays.clear();
        if let Waiter::Spawned(c) = std::mem::replace(&mut self.child, Waiter::Released) {
            // Its drop would SIGKILL it (kill_on_drop); the exec that follows frees the rest.
            std::mem::forget(c);
        }
        let row = self.provider_row.take().map(|l| l.hand_over());
        Released {
            pid: self.pid,
            heartbeat_file: std::mem::take(&mut self.heartbeat_file),
            spawned_wall_ms: self.spawned_wall_ms,
            provider_row: row,
            pipes: std::mem::take(&mut self.pipes),
        }
    }

    /// Whether this process was adopted from the previous image (not spawned by this one).
    pub fn is_adopted(&self) -> bool {
        matches!(self.child, Waiter::Adopted(_))
    }

    /// Completes when the process exits; never again after that (pending forever).
    pub async fn exited(p: &mut Option<Proc>) -> io::Result<ExitStatus> {
        match p {
            Some(p) if p.exit.is_none() => p.child.wait().await,
            _ => std::future::pending().await,
        }
    }

    /// Sends `sig` to the process group, unless the leader was already reaped (then its pgid may
    /// be recycled by an unrelated process; a worker's group holds only the worker itself).
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() && self.pid != 0 && !matches!(self.child, Waiter::Released) {
            let _ = killpg(Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// The kill ladder: SIGTERM to the group, `grace` to exit, then SIGKILL; reaps the process.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.signal(Signal::SIGTERM);
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(Ok(st)) => self.exit = Some(st),
                _ => {
                    self.signal(Signal::SIGKILL);
                    self.exit = self.child.wait().await.ok();
                }
            }
        }
        self.finish().await;
        self.exit
    }

    /// After the exit: lets the relays flush the last lines (bounded), then stops them, and
    /// removes the heartbeat file.
    pub async fn finish(&mut self) {
        for h in &mut self.relays {
            let _ = tokio::time::timeout(Duration::from_millis(200), &mut *h).await;
            h.abort();
        }
        gateway::heartbeat::remove(&self.heartbeat_file);
        // Reaped: it can no longer touch the table.
        if self.exit.is_some() {
            drop(self.provider_row.take());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child, Waiter::Released) {
            return;
        }
        // Unreaped means the pid (and so the pgid) is still ours: safe to signal.
        self.signal(Signal::SIGKILL);
        if let Some(lease) = self.provider_row.take() {
            if self.exit.is_some() {
                drop(lease);
            } else {
                lease.free_when_dead(self.pid);
            }
        }
        for h in &self.relays {
            h.abort();
        }
        gateway::heartbeat::remove(&self.heartbeat_file);
        // A tokio `Child` is reaped by tokio once dropped; an adopted one by us.
        if self.exit.is_none() {
            if let Waiter::Adopted(mut a) = std::mem::replace(&mut self.child, Waiter::Released) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = a.wait().await;
                    });
                }
            }
        }
    }
}

/// The last stderr lines of a slot, shared between its stderr relay and its task. A std mutex:
/// held for one push or one copy, never across an await.
pub type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_strips_service_manager_variables_and_appends_worker_flags() {
        let argv = vec!["/bin/true".to_string(), "x".to_string()];
        let hb = std::path::Path::new("/run/w-0-1.hb");
        let cmd = command(&WorkerSpec {
            argv: &argv,
            config_path: std::path::Path::new("/etc/gw.toml"),
            heartbeat_file: hb,
            heartbeat_interval: Duration::from_millis(1500),
            listener: 7,
            front: None,
            provider_row: None,
            admission: 8,
            token_env: vec!["GATEWAY_TOKEN", "DESK_TOKEN"],
        })
        .unwrap();
        let std = cmd.as_std();
        let args: Vec<_> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "x",
                "--config",
                "/etc/gw.toml",
                "--heartbeat-file",
                "/run/w-0-1.hb",
                "--heartbeat-interval",
                "1s 500ms"
            ]
        );
        let envs: std::collections::HashMap<_, _> = std.get_envs().collect();
        for var in STRIPPED_ENV
            .iter()
            .filter(|v| **v != "LISTEN_FDS")
            .chain(&["GATEWAY_TOKEN", "DESK_TOKEN"])
        {
            assert_eq!(
                envs.get(std::ffi::OsStr::new(var)),
                Some(&None),
                "{var} not removed"
            );
        }
        assert_eq!(
            envs.get(std::ffi::OsStr::new("LISTEN_FDS")),
            Some(&Some(std::ffi::OsStr::new("1")))
        );
        assert_eq!(
            envs.get(std::ffi::OsStr::new(ENV_FD)),
            Some(&Some(std::ffi::OsStr::new("5")))
        );
        assert!(worker_argv(&[]).unwrap()[1] == "worker");
    }

    #[test]
    fn the_builtin_worker_is_spawned_from_the_held_image() {
        let argv = worker_argv(&[]).unwrap();
        let n: RawFd = argv[0]
            .strip_prefix("/proc/self/fd/")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a held fd: {argv:?}"));
        assert!(n >= SELF_EXE_FD_MIN, "{n} could be replaced by a worker fd");
        assert_eq!(
            std::fs::read_link(&argv[0]).unwrap(),
            std::fs::read_link("/proc/self/exe").unwrap()
        );
        // Close-on-exec: the worker never inherits it.
        let flags = nix::fcntl::fcntl(n, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        // Opened once: the same fd every time.
        assert_eq!(worker_argv(&[]).unwrap()[0], argv[0]);
        // A custom command is still spawned by its path.
        assert_eq!(worker_argv(&["/bin/w".into()]).unwrap(), ["/bin/w"]);
    }

    #[tokio::test]
    async fn an_adopted_child_is_waited_on_through_its_pidfd_and_others_are_refused() {
        use std::os::unix::process::ExitStatusExt;
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // No `Child` waits on it from here on, as in the image that adopts it.
        std::mem::forget(child);
        let mut a = Adopted::open(pid).expect("our running child");
        assert!(a.try_wait().unwrap().is_none());
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let st = tokio::time::timeout(Duration::from_secs(10), a.wait())
            .await
            .expect("the pidfd turned readable")
            .unwrap();
        assert_eq!(st.signal(), Some(9));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "reaped"
        );
        // Not our child: refused, never signalled.
        let e = Adopted::open(1).err().expect("pid 1 is not our child");
        assert_eq!(e.raw_os_error(), Some(nix::libc::ECHILD), "{e}");
        // One that already exited: reaped, and said so.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let e = loop {
            match Adopted::open(pid) {
                Err(e) => break e,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Ok(_) => panic!("`true` did not exit"),
            }
        };
        assert!(
            e.to_string().contains("already exited (exit status 0)"),
            "{e}"
        );
    }
}
