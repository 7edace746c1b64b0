//! In-place upgrade (contract "Upgrade"), first half: the check of the new binary, done before
//! anything irreversible. After an `execve` there is no old process to return to, so the binary
//! now at the supervisor's path must first prove that it runs (`--version`, answering as a
//! supervisor) and that it accepts the running configuration (`check-config -c FILE`), each
//! within [`CHECK_TIMEOUT`]. A failure names the binary and why; the old image keeps serving.
//!
//! Then the re-exec (`start` drives it): the front stops accepting and drains (up to
//! `pool.shutdown_timeout`) while its listening socket stays open, so new connections wait in
//! the kernel's backlog; the workers are stopped gracefully; the front listener, the admin
//! listener and the runtime-directory lock are handed to the new image ([`Handoff`], named by
//! [`HANDOFF_ENV`]) and the process `execve`s the binary at its path, keeping its pid. The new
//! image adopts those descriptors instead of binding and locking, and starts fresh workers of
//! itself. If the `execve` itself fails, the process executes its own pinned image the same
//! way, so the old version comes back instead of nothing.
//!
//! Not done: adopting the running workers and replacing them one at a time; they are stopped
//! and started anew, which requests do not notice (they wait in the backlog and the queue).

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
pub fn exec(exe: &Path, handoff: &Handoff) -> String {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    for fd in [handoff.front, handoff.admin, handoff.lock] {
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
        Ok((path, argv, envp)) => match nix::unistd::execve(&path, &argv, &envp) {
            Ok(never) => match never {},
            Err(e) => format!("execve {}: {e}", exe.display()),
        },
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

/// How long each check of the new binary may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--version` prints first: clap's `NAME VERSION`.
const VERSION_PREFIX: &str = "supervisor ";

/// Runs the checks on `exe`; the new version string (`supervisor 0.1.0`) when both pass.
pub async fn check(exe: &Path, config: &Path) -> Result<String, String> {
    let name = exe.display();
    let version = run(exe, &["--version".as_ref()]).await?;
    let version = version.lines().next().unwrap_or("").trim().to_string();
    if !version.starts_with(VERSION_PREFIX) {
        return Err(format!(
            "new binary {name}: `--version` printed {version:?}, not a supervisor's version"
        ));
    }
    run(
        exe,
        &["check-config".as_ref(), "-c".as_ref(), config.as_os_str()],
    )
    .await?;
    Ok(version)
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
        let p = script(dir.path(), "#!/bin/sh\necho 'supervisor 9'\n", 0o755);
        assert_eq!(check(&p, &cfg).await.unwrap(), "supervisor 9");
    }
}
