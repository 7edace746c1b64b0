//! `supervisor stop`, `reload` and `restart-worker`: requests to a running supervisor's admin
//! socket. Also the small blocking HTTP/1.1 client that `status` shares: one request per
//! connection (`Connection: close`), so reading to EOF is the whole response.

use super::TargetArgs;
use crate::exit;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A response from the admin socket.
#[derive(Debug)]
pub struct AdminResponse {
    pub status: u16,
    pub body: String,
}

/// Why the admin socket could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor is running for this configuration (cannot connect to {}: {source})", path.display())]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The socket exists but this user may not connect: it belongs to another user (mode 0600).
    #[error("permission denied on the admin socket {} (run as the user that started the supervisor)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("admin socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {}: malformed response", path.display())]
    Malformed { path: PathBuf },
}

/// Sends one request and reads the whole response.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<AdminResponse, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        let path = socket.to_path_buf();
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
            // No socket file, or nobody listening on it: no supervisor.
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { path, source }
            }
            _ => ClientError::Io { path, source },
        }
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse(&raw).ok_or_else(|| ClientError::Malformed {
        path: socket.to_path_buf(),
    })
}

fn parse(raw: &[u8]) -> Option<AdminResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Ok::<_, ()>(AdminResponse {
        status,
        body: body.to_string(),
    })
    .ok()
}

/// Finds the admin socket (`--runtime-dir`, else from the config) and checks its directory is
/// private before anything trusts the socket; `Err(exit code)` after printing why.
pub fn admin_socket(arg: &TargetArgs) -> Result<PathBuf, u8> {
    let dir = match &arg.runtime_dir {
        Some(d) => PathBuf::from(d),
        None => configured_runtime_dir(&arg.config.config)?,
    };
    match crate::runtime_dir::check_private_dir(&dir) {
        Ok(()) => {}
        // Missing: connecting then reports that no supervisor runs there.
        Err(crate::runtime_dir::RuntimeDirError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            eprintln!("error: {e}");
            return Err(e.exit_code());
        }
    }
    Ok(crate::runtime_dir::admin_socket(&dir))
}

/// The runtime directory the configuration names.
///
/// A config file that became invalid while the supervisor runs must not lock the operator out
/// of `status` and `stop`: then only `pool.runtime_dir` is read, leniently, with a warning.
fn configured_runtime_dir(config: &Option<PathBuf>) -> Result<PathBuf, u8> {
    let source = gateway::config::resolve_source(config.as_deref());
    let dir = match gateway::config::load(&source) {
        Ok(loaded) => crate::runtime_dir::resolve_runtime_dir(&loaded.config),
        Err(errors) => {
            let text = source.path().and_then(|p| std::fs::read_to_string(p).ok());
            let Some(text) = text else {
                eprintln!(
                    "error: invalid configuration ({} problem(s)):",
                    errors.0.len()
                );
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                return Err(exit::CONFIG);
            };
            eprintln!(
                "warning: {} is invalid ({} problem(s), see check-config); using its pool.runtime_dir only",
                source.display_name(),
                errors.0.len()
            );
            let mut cfg = gateway::Config::default();
            cfg.pool.runtime_dir = lenient_runtime_dir(&text).unwrap_or_default();
            crate::runtime_dir::resolve_runtime_dir(&cfg)
        }
    };
    Ok(dir)
}

/// `runtime_dir = "..."` inside the `[pool]` table of a file that does not parse as a whole.
fn lenient_runtime_dir(text: &str) -> Option<String> {
    let mut in_pool = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_pool = line
                .trim_end_matches(|c: char| c == ']' || c.is_whitespace())
                .trim_start_matches('[')
                .trim()
                == "pool";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if in_pool && key.trim() == "runtime_dir" {
            let v = value.split('#').next()?.trim();
            return Some(v.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    None
}

/// Sends `method path` and reports the outcome; the exit code: 0 on success, 2 for what the
/// caller asked wrong (no such worker, an invalid configuration), 1 for a failure.
fn simple(arg: &TargetArgs, method: &str, path: &str, done: &str, timeout: Duration) -> u8 {
    let socket = match admin_socket(arg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match request(&socket, method, path, timeout) {
        // The supervisor stopped waiting for a long roll: it goes on, its outcome is logged.
        Ok(r) if r.status == 202 && r.body.contains("\"pending\":true") => {
            eprintln!("accepted; still in progress, its outcome will be in the supervisor's log");
            exit::OK
        }
        Ok(r) if (200..300).contains(&r.status) => {
            eprintln!("{done}");
            exit::OK
        }
        Ok(r) => report_failure(&r),
        Err(e) => {
            eprintln!("error: {e}");
            exit::RUNTIME
        }
    }
}

/// Prints the error an admin answer carries (and its located problems, as check-config does)
/// and returns the exit code.
fn report_failure(r: &AdminResponse) -> u8 {
    let body = serde_json::from_str::<serde_json::Value>(&r.body).ok();
    let msg = body
        .as_ref()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| r.body.clone());
    let problems: Vec<&str> = body
        .as_ref()
        .and_then(|v| v.get("problems")?.as_array())
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    if problems.is_empty() {
        eprintln!("error: {msg}");
    } else {
        // The same shape as check-config's report.
        eprintln!("error: {msg}:");
        for p in problems {
            eprintln!("  {p}");
        }
    }
    exit_code(r.status)
}

/// The exit code for an admin answer that is not a success.
fn exit_code(status: u16) -> u8 {
    match status {
        // No such worker / invalid worker id / invalid configuration.
        400 | 404 | 422 => exit::CONFIG,
        _ => exit::RUNTIME,
    }
}

/// `supervisor stop`: graceful, like SIGTERM.
pub fn stop(arg: &TargetArgs) -> u8 {
    simple(arg, "POST", "/stop", "stopping", Duration::from_secs(10))
}

/// `supervisor reload`: like SIGHUP; waits for the roll to finish.
pub fn reload(arg: &TargetArgs) -> u8 {
    simple(arg, "POST", "/reload", "reloaded", Duration::from_secs(120))
}

/// How long `supervisor upgrade` waits for the new image to serve after the old one accepted:
/// the front's drain (`pool.shutdown_timeout`), the workers' stop and the new workers' start.
const UPGRADE_WAIT: Duration = Duration::from_secs(120);

/// `supervisor upgrade`: the checks of the new binary take up to twice `upgrade::CHECK_TIMEOUT`.
/// An accepted upgrade answers before the re-exec; then the admin socket is polled until the
/// new image answers with the announced generation and a serving worker.
pub fn upgrade(arg: &TargetArgs) -> u8 {
    let socket = match admin_socket(arg) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let r = match request(&socket, "POST", "/upgrade", Duration::from_secs(60)) {
        Ok(r) if (200..300).contains(&r.status) => r,
        Ok(r) => return report_failure(&r),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::RUNTIME;
        }
    };
    let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    let version = answer["version"].as_str().unwrap_or("?").to_string();
    let Some(generation) = answer["generation"].as_u64() else {
        eprintln!("error: the supervisor accepted the upgrade but did not say which generation to wait for: {}", r.body);
        return exit::RUNTIME;
    };
    eprintln!("upgrading to {version}");
    let deadline = std::time::Instant::now() + UPGRADE_WAIT;
    let mut last = String::from("no answer yet");
    while std::time::Instant::now() < deadline {
        match request(&socket, "GET", "/workers", Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => {
                let report: Option<crate::admin::StatusReport> = serde_json::from_str(&r.body).ok();
                match report {
                    Some(rep)
                        if rep.generation == generation
                            && rep.workers.iter().any(|w| {
                                matches!(w.state.as_str(), "IDLE" | "BUSY" | "BUSY_STREAMING")
                            }) =>
                    {
                        eprintln!("upgraded: {version} serving (generation {generation})");
                        return exit::OK;
                    }
                    Some(rep) if rep.generation == generation => {
                        last = "the new image has no serving worker yet".into()
                    }
                    Some(_) => last = "the old image still answers".into(),
                    None => last = format!("unreadable status: {}", r.body),
                }
            }
            Ok(r) => last = format!("status {}: {}", r.status, r.body),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("error: the new image did not serve within {UPGRADE_WAIT:?} ({last}); see the supervisor's log");
    exit::RUNTIME
}

/// `supervisor restart-worker ID`.
pub fn restart_worker(arg: &TargetArgs, id: usize) -> u8 {
    simple(
        arg,
        "POST",
        &format!("/workers/{id}/restart"),
        &format!("worker {id} restarting"),
        Duration::from_secs(10),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_from_a_broken_file() {
        let text = "[server]\nruntime_dir = \"/nope\"\n[pool]\nworkers = \"many\"\nruntime_dir = \"/run/gw\" # here\n";
        assert_eq!(lenient_runtime_dir(text).as_deref(), Some("/run/gw"));
        assert_eq!(lenient_runtime_dir("[pool]\nworkers = 1\n"), None);
    }

    #[test]
    fn parses_response_and_reports_missing_server() {
        let r = parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "{}"));
        assert!(parse(b"garbage").is_none());
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("admin.sock");
        let err = request(&sock, "GET", "/workers", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }));
        assert_eq!(exit_code(404), exit::CONFIG);
        assert_eq!(exit_code(422), exit::CONFIG);
        assert_eq!(exit_code(500), exit::RUNTIME);
        assert_eq!(exit_code(409), exit::RUNTIME);
        assert!(
            err.to_string().contains(&sock.display().to_string()),
            "{err}"
        );
    }
}
