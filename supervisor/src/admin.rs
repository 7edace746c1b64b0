//! The admin socket: HTTP/1.1 over `RUNTIME_DIR/admin.sock` (mode 0600), for the CLI's
//! `status`, `stop`, `reload`, `upgrade` and `restart-worker`.
//!
//! `GET /workers` answers from the pool's atomics; `GET /snapshot` is the live view's snapshot
//! (`crate::dashboard`, behind `supervisor top`); `POST /workers/{id}/restart` calls the pool;
//! `POST /reload` and `POST /stop` go to the `start` main loop as `ControlCommand`s, because
//! reloading means re-reading and validating the config file, which the main loop owns.
//! `POST /reload` answers 200 when applied (or unchanged), 422 with every located problem in
//! `problems` when the file is invalid, 500 when the roll failed. `POST /upgrade` answers 200
//! with the new `version` and the `generation` the new image will report, just before the re-exec, or 500 with why the binary at the supervisor's path was refused.
//! Access control is the file mode: only the owner can connect.

use crate::control::{ControlCommand, ReloadError};
use crate::dashboard::Dashboard;
use crate::pool::{Pool, WorkerStatus};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The body of `GET /workers` and of `supervisor status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub listen: String,
    pub workers: Vec<WorkerStatus>,
    /// The running image's version (`upgrade::version`).
    #[serde(default)]
    pub version: String,
    /// How many in-place upgrades this process has been through.
    #[serde(default)]
    pub generation: u64,
}

/// How long a stopping admin socket lets open connections finish their answer (the answer to
/// `POST /upgrade` is written while the image is about to be replaced).
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// How long a reload request waits for the main loop's answer before reporting "accepted".
const RELOAD_ANSWER: Duration = Duration::from_secs(60);

/// Binds the socket at `path` (replacing a stale one: the caller holds the runtime lock) and
/// makes it 0600 before anyone can be accepted.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // Between bind and chmod the socket carries the umask's mode, but it lives in a 0700
    // directory, and nothing is accepted before this line.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves an already bound socket until `shutdown`; open connections are then dropped.
pub async fn serve_on(
    listener: UnixListener,
    pool: Arc<Pool>,
    listen: SocketAddr,
    control: mpsc::Sender<ControlCommand>,
    dashboard: Arc<Dashboard>,
    mut shutdown: Shutdown,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (pool, control, dash) = (pool.clone(), control.clone(), dashboard.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (pool, control, dash) = (pool.clone(), control.clone(), dash.clone());
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &pool, listen, &control, &dash).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    }
    let _ = tokio::time::timeout(ANSWER_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

async fn handle(
    req: Request<Incoming>,
    pool: &Pool,
    listen: SocketAddr,
    control: &mpsc::Sender<ControlCommand>,
    dashboard: &Arc<Dashboard>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["workers"]) => {
            let report = StatusReport {
                listen: listen.to_string(),
                workers: pool.status(),
                version: crate::upgrade::version().to_string(),
                generation: crate::upgrade::generation(),
            };
            json(StatusCode::OK, &report)
        }
        // The live view's snapshot, for `supervisor top` (`crate::dashboard`).
        (&Method::GET, ["snapshot"]) => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(dashboard.snapshot().await))
            .expect("static response parts are valid"),
        (&Method::POST, ["reload"]) => {
            let (tx, rx) = oneshot::channel();
            if control.send(ControlCommand::Reload(tx)).await.is_err() {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the supervisor is stopping",
                );
            }
            match tokio::time::timeout(RELOAD_ANSWER, rx).await {
                Ok(Ok(Ok(()))) => json(StatusCode::OK, &serde_json::json!({"ok": true})),
                // Every problem, so `supervisor reload` can print them as check-config does.
                Ok(Ok(Err(ReloadError::Invalid(problems)))) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({
                        "ok": false,
                        "error": format!("invalid configuration ({} problem(s))", problems.len()),
                        "problems": problems,
                    }),
                ),
                Ok(Ok(Err(ReloadError::Failed(why)))) => {
                    error(StatusCode::INTERNAL_SERVER_ERROR, &why)
                }
                Ok(Err(_)) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the supervisor is stopping",
                ),
                Err(_) => json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"ok": true, "pending": true}),
                ),
            }
        }
        (&Method::POST, ["upgrade"]) => {
            let (tx, rx) = oneshot::channel();
            if control.send(ControlCommand::Upgrade(tx)).await.is_err() {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the supervisor is stopping",
                );
            }
            match rx.await {
                // The next image answers `GET /workers` with this generation.
                Ok(Ok(version)) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "ok": true, "version": version,
                        "generation": crate::upgrade::generation() + 1,
                    }),
                ),
                Ok(Err(why)) => error(StatusCode::INTERNAL_SERVER_ERROR, &why),
                Err(_) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the supervisor is stopping",
                ),
            }
        }
        (&Method::POST, ["stop"]) => match control.send(ControlCommand::Stop).await {
            Ok(()) => json(StatusCode::ACCEPTED, &serde_json::json!({"ok": true})),
            Err(_) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the supervisor is already stopping",
            ),
        },
        (&Method::POST, ["workers", id, "restart"]) => {
            let Ok(id) = id.parse::<usize>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid worker id {id:?}"),
                );
            };
            match pool.restart_worker(id) {
                Ok(()) => json(
                    StatusCode::OK,
                    &serde_json::json!({"ok": true, "worker": id}),
                ),
                Err(e) if e.starts_with("no worker") => error(StatusCode::NOT_FOUND, &e),
                Err(e) => error(StatusCode::CONFLICT, &e),
            }
        }
        (
            _,
            ["workers"]
            | ["snapshot"]
            | ["reload"]
            | ["stop"]
            | ["upgrade"]
            | ["workers", _, "restart"],
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({"ok": false, "error": message}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::control::request;
    use crate::pool::{PoolOptions, WorkerState};
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_socket_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = gateway::Config::default();
        cfg.pool.workers = 1;
        cfg.pool.base_port = 0;
        cfg.pool.heartbeat_interval = Duration::from_millis(100);
        cfg.pool.worker_command = vec![
            "python3".into(),
            "-c".into(),
            crate::pool::tests::WORKER_PY.into(),
            "ok".into(),
        ];
        let (trigger, shutdown) = crate::shutdown::channel();
        let pool = Pool::spawn_new(PoolOptions {
            config: Arc::new(cfg),
            config_path: dir.path().join("g.toml"),
            runtime_dir: dir.path().join("run"),
            metrics: crate::metrics::SupervisorMetrics::new().0,
            shutdown: shutdown.clone(),
        })
        .unwrap();
        assert_eq!(pool.wait_ready(Duration::from_secs(15)).await, 1);
        let sock = dir.path().join("admin.sock");
        let listener = bind(&sock).unwrap();
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (control, mut commands) = crate::control::channel();
        // The main loop's side: answers reloads with an error, records stops.
        let main_loop = tokio::spawn(async move {
            let (mut stops, mut reloads) = (0, 0);
            while let Some(cmd) = commands.recv().await {
                match cmd {
                    ControlCommand::Reload(reply) => {
                        let err = if reloads == 0 {
                            ReloadError::Invalid(vec![
                                "gateway.toml:3:1: pool.workers: must be at least 1".into(),
                            ])
                        } else {
                            ReloadError::Failed("worker 0: replacement failed".into())
                        };
                        reloads += 1;
                        let _ = reply.send(Err(err));
                    }
                    ControlCommand::Stop => stops += 1,
                    ControlCommand::Upgrade(reply) => {
                        let _ = reply.send(Err("new binary /x: exited with exit status: 1".into()));
                    }
                }
            }
            stops
        });
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let dash = Dashboard::new(pool.worker_slots());
        let server = tokio::spawn(serve_on(
            listener,
            pool.clone(),
            listen,
            control,
            dash,
            shutdown,
        ));
        let ask = |method: &'static str, path: &'static str| {
            let sock = sock.clone();
            tokio::task::spawn_blocking(move || {
                request(&sock, method, path, Duration::from_secs(10)).unwrap()
            })
        };

        let r = ask("GET", "/workers").await.unwrap();
        assert_eq!(r.status, 200);
        let report: StatusReport = serde_json::from_str(&r.body).unwrap();
        assert_eq!(report.listen, "127.0.0.1:8080");
        assert_eq!(report.workers.len(), 1);
        assert_eq!(report.workers[0].state, "IDLE");
        let old = report.workers[0].pid.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        for key in [
            "id",
            "pid",
            "port",
            "state",
            "inflight",
            "served",
            "restarts",
            "rss_bytes",
            "uptime_ms",
            "heartbeat_age_ms",
        ] {
            assert!(v["workers"][0].get(key).is_some(), "missing {key} in {v}");
        }

        let mut rx = pool.transitions();
        let r = ask("POST", "/workers/0/restart").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        loop {
            let t = tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .unwrap()
                .unwrap();
            if t.to == WorkerState::Idle {
                assert_ne!(t.pid, old);
                break;
            }
        }
        assert_eq!(ask("POST", "/workers/9/restart").await.unwrap().status, 404);
        assert_eq!(ask("GET", "/nope").await.unwrap().status, 404);
        let r = ask("GET", "/snapshot").await.unwrap();
        assert_eq!(r.status, 200);
        let snap: crate::dashboard::Snapshot = serde_json::from_str(&r.body).unwrap();
        assert_eq!(snap.workers.len(), 1, "{}", r.body);
        assert_eq!(ask("GET", "/stop").await.unwrap().status, 405);
        let r = ask("POST", "/reload").await.unwrap();
        assert_eq!(r.status, 422);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v["problems"][0], "gateway.toml:3:1: pool.workers: must be at least 1",
            "{v}"
        );
        let r = ask("POST", "/reload").await.unwrap();
        assert_eq!(r.status, 500);
        assert!(r.body.contains("replacement failed"), "{}", r.body);
        let r = ask("POST", "/upgrade").await.unwrap();
        assert_eq!(r.status, 500);
        assert!(r.body.contains("exited with"), "{}", r.body);
        assert_eq!(ask("POST", "/stop").await.unwrap().status, 202);

        trigger.trigger();
        server.await.unwrap();
        assert_eq!(main_loop.await.unwrap(), 1);
        pool.stop(Duration::from_secs(5)).await;
    }
}
