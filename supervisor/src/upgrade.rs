//! In-place upgrade (contract "Upgrade"), first half: the check of the new binary, done before
//! anything irreversible. After an `execve` there is no old process to return to, so the binary
//! now at the supervisor's path must first prove that it runs (`--version`, answering as a
//! supervisor) and that it accepts the running configuration (`check-config -c FILE`), each
//! within [`CHECK_TIMEOUT`]. A failure names the binary and why; the old image keeps serving.
//!
//! Not done yet: the re-exec itself (handing the listeners, worker sockets, lock, usage socket
//! and pool state to the new image and adopting the running workers). Until then a binary that
//! passes the checks is reported as such and the upgrade as not performed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

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
