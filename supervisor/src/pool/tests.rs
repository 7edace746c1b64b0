//! In-process tests of the pool with real worker processes: a small python stand-in
//! (`tests/fixtures/test_worker.py`) that speaks the worker side of the contract (fd 3,
//! heartbeat file, SIGTERM drain). Each test owns its pool (`Pool::spawn_new`); the `Fixture`
//! guard kills every worker process group even when an assertion fails, and dropping the pool
//! ends the slot tasks, which terminate their processes too.

use super::*;
use crate::metrics::RestartLabels;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::time::Instant;

#[path = "../../tests/common/kit.rs"]
mod kit;

use kit::wait_until_async as wait_until;

/// Whether process `pid` is gone from /proc (exited and reaped) within 10 s.
async fn reaped(pid: u32) -> bool {
    wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
    .await
}
pub(crate) use kit::WORKER_PY;

pub(crate) struct Fixture {
    pub(crate) pool: Arc<Pool>,
    metrics: SupervisorMetrics,
    dir: tempfile::TempDir,
    trigger: crate::shutdown::ShutdownTrigger,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for s in self.pool.slots().iter() {
            let pid = s.pid.load(Relaxed);
            if pid != 0 {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// `kit::config` with a 10 s startup timeout and fast restarts (50 ms backoff, at most 2 s).
pub(crate) fn config(workers: u32, mode: &str) -> Config {
    let mut c = kit::config(workers, mode);
    let p = &mut c.pool;
    p.startup_timeout = Duration::from_secs(10);
    p.restart_backoff_initial = Duration::from_millis(50);
    p.restart_backoff_max = Duration::from_secs(2);
    c
}

pub(crate) fn fixture(cfg: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, _registry) = SupervisorMetrics::new();
    let (trigger, shutdown) = crate::shutdown::channel();
    let pool = Pool::spawn_new(PoolOptions {
        config: Arc::new(cfg),
        config_path: dir.path().join("gateway.toml"),
        runtime_dir: dir.path().join("run"),
        metrics: metrics.clone(),
        shutdown,
    })
    .expect("pool starts");
    Fixture {
        pool,
        metrics,
        dir,
        trigger,
    }
}

/// Reads transitions of `worker` until `want` has been seen in order; returns all of them.
async fn expect_states(
    rx: &mut broadcast::Receiver<Transition>,
    worker: usize,
    want: &[WorkerState],
    timeout: Duration,
) -> Vec<Transition> {
    let mut seen = Vec::new();
    let mut i = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while i < want.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(t)) if t.worker == worker => {
                if t.to == want[i] {
                    i += 1;
                }
                seen.push(t);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("transition stream: {e}"),
            Err(_) => panic!(
                "timed out waiting for {:?}; saw {:?}",
                &want[i..],
                seen.iter().map(|t| t.to).collect::<Vec<_>>()
            ),
        }
    }
    seen
}

fn alive(pid: u32) -> bool {
    // A zombie still accepts signals; check /proc for the state too.
    kill(Pid::from_raw(pid as i32), None).is_ok() && kit::alive(pid)
}

/// One blocking HTTP GET to a worker port; the body (the serving pid).
fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad response: {out:?}"))),
    }
}

/// `gateway_worker_restarts_total` (failures) for `worker` and `reason`.
fn restarts(m: &SupervisorMetrics, worker: usize, reason: &str) -> u64 {
    count(&m.worker_restarts, worker, reason)
}

/// `gateway_worker_replacements_total` (planned) for `worker` and `reason`.
fn replacements(m: &SupervisorMetrics, worker: usize, reason: &str) -> u64 {
    count(&m.worker_replacements, worker, reason)
}

fn count(
    f: &prometheus_client::metrics::family::Family<
        RestartLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    worker: usize,
    reason: &str,
) -> u64 {
    f.get_or_create(&RestartLabels {
        worker: worker.to_string(),
        reason: reason.into(),
    })
    .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_become_idle_serve_and_stop_cleanly() {
    // The supervisor's own service-manager variables must not reach workers.
    std::env::set_var("NOTIFY_SOCKET", "/nonexistent");
    std::env::set_var("WATCHDOG_USEC", "1000000");
    let f = fixture(config(2, "env"));
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 2);
    assert_eq!(*f.pool.ready_counts().borrow(), (2, 2));
    let st = f.pool.status();
    assert!(
        st.iter()
            .all(|w| w.state == "IDLE" && w.pid.is_some() && w.port != 0),
        "{st:?}"
    );
    // The socket arrives as fd 3 with LISTEN_FDS=1; the supervisor's own variables do not leak.
    let port = st[0].port;
    let env: serde_json::Value = tokio::task::spawn_blocking(move || get(port, "/").unwrap())
        .await
        .map(|b| serde_json::from_str(&b).unwrap())
        .unwrap();
    assert_eq!(env["LISTEN_FDS"], "1");
    assert!(
        env["LISTEN_PID"].is_null()
            && env["WATCHDOG_USEC"].is_null()
            && env["NOTIFY_SOCKET"].is_null(),
        "{env}"
    );
    let pids: Vec<u32> = st.iter().filter_map(|w| w.pid).collect();
    let hb_dir = f.dir.path().join("run");
    assert!(std::fs::read_dir(&hb_dir).unwrap().count() >= 2);

    f.pool.stop(Duration::from_secs(5)).await;
    assert!(f
        .pool
        .status()
        .iter()
        .all(|w| w.state == "DEAD" && w.pid.is_none()));
    for pid in pids {
        assert!(!alive(pid), "worker {pid} survived stop");
    }
    // Heartbeats go with their processes; the rest of the runtime directory (the provider table,
    // the lock) belongs to `start`, which removes it on exit.
    let left: Vec<_> = std::fs::read_dir(&hb_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".hb"))
        .collect();
    assert!(left.is_empty(), "heartbeat files left: {left:?}");
    assert_eq!(
        f.metrics
            .workers
            .get_or_create(&crate::metrics::StateLabel {
                state: "DEAD".into()
            })
            .get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_worker_goes_unhealthy_restarting_then_new_pid_idle_on_same_port() {
    let mut cfg = config(2, "ok");
    cfg.pool.restart_backoff_initial = Duration::from_millis(300);
    let f = fixture(cfg);
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 2);
    let mut rx = f.pool.transitions();
    let before = f.pool.status()[0].clone();
    let old = before.pid.unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let seen = expect_states(
        &mut rx,
        0,
        &[
            WorkerState::Unhealthy,
            WorkerState::Restarting,
            WorkerState::Init,
            WorkerState::Idle,
        ],
        Duration::from_secs(15),
    )
    .await;
    let idle = seen.last().unwrap();
    assert_ne!(idle.pid, old);
    assert_ne!(idle.pid, 0);
    let after = f.pool.status()[0].clone();
    assert_eq!(
        (after.port, after.pid, after.restarts),
        (before.port, Some(idle.pid), 1)
    );
    assert_eq!(restarts(&f.metrics, 0, "exit"), 1);
    // The other worker was not touched.
    assert_eq!(f.pool.status()[1].restarts, 0);
    // And the restarted worker serves on the same port.
    let port = after.port;
    let body = tokio::task::spawn_blocking(move || get(port, "/"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, idle.pid.to_string());
    f.pool.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_worker_is_unhealthy_within_timeout_plus_interval_then_replaced() {
    let f = fixture(config(1, "ok"));
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 1);
    let mut rx = f.pool.transitions();
    let old = f.pool.status()[0].pid.unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let seen = expect_states(
        &mut rx,
        0,
        &[WorkerState::Unhealthy],
        Duration::from_secs(10),
    )
    .await;
    let cfg = f.pool.config();
    let limit = cfg.pool.heartbeat_timeout + cfg.pool.heartbeat_interval;
    let took = seen.last().unwrap().at.duration_since(stopped);
    // The last heartbeat was written up to one interval before SIGSTOP, so detection may come
    // that much *sooner*; later than timeout + interval (plus scheduling slack on a loaded CI
    // machine) breaks the contract.
    assert!(
        took <= limit + Duration::from_millis(400),
        "UNHEALTHY after {took:?}, limit {limit:?}"
    );
    assert!(
        took + cfg.pool.heartbeat_interval >= cfg.pool.heartbeat_timeout,
        "too early: {took:?}"
    );
    let seen = expect_states(&mut rx, 0, &[WorkerState::Idle], Duration::from_secs(15)).await;
    assert_ne!(seen.last().unwrap().pid, old);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(old)).await,
        "stopped worker {old} was not killed"
    );
    assert_eq!(restarts(&f.metrics, 0, "heartbeat"), 1);
    f.pool.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_growing_then_dead_while_others_serve() {
    let mut cfg = config(2, "exit0");
    cfg.pool.max_restarts = 3;
    cfg.pool.restart_backoff_initial = Duration::from_millis(100);
    let f = fixture(cfg);
    let mut rx = f.pool.transitions();
    let mut seen = Vec::new();
    // Three restarts are allowed; the fourth failure is one too many.
    let want = [WorkerState::Restarting, WorkerState::Init].repeat(3);
    seen.extend(expect_states(&mut rx, 0, &want, Duration::from_secs(20)).await);
    seen.extend(expect_states(&mut rx, 0, &[WorkerState::Dead], Duration::from_secs(20)).await);
    // Time spent in RESTARTING, per restart: the backoff. It doubles (100, 200, 400 ms +-20%).
    let mut waits = Vec::new();
    let mut entered = None;
    for t in &seen {
        match t.to {
            WorkerState::Restarting => entered = Some(t.at),
            WorkerState::Init => waits.extend(entered.take().map(|e| t.at.duration_since(e))),
            _ => {}
        }
    }
    assert_eq!(waits.len(), 3, "{waits:?}");
    assert!(
        waits[0] < waits[1] && waits[1] < waits[2],
        "backoff not growing: {waits:?}"
    );
    assert!(waits[0] >= Duration::from_millis(80), "{waits:?}");
    // DEAD is final and visible; the pool keeps serving with worker 1.
    assert!(f.pool.wait_ready(Duration::from_secs(15)).await >= 1);
    let st = f.pool.status();
    assert_eq!(
        (st[0].state.as_str(), st[0].pid, st[0].restarts),
        ("DEAD", None, 3),
        "{st:?}"
    );
    assert_eq!(st[1].state, "IDLE");
    assert_eq!(restarts(&f.metrics, 0, "exit"), 3);
    assert_eq!(*f.pool.ready_counts().borrow(), (1, 2));
    // A manual restart revives it with a fresh budget: a new process, which crashes again.
    let mut rx = f.pool.transitions();
    f.pool.restart_worker(0).unwrap();
    expect_states(
        &mut rx,
        0,
        &[
            WorkerState::Init,
            WorkerState::Unhealthy,
            WorkerState::Restarting,
        ],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(replacements(&f.metrics, 0, "manual"), 1);
    assert!(f.pool.restart_worker(7).is_err());
    f.pool.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_timeout_kills_and_counts_a_failed_start() {
    let mut cfg = config(1, "nohb");
    cfg.pool.startup_timeout = Duration::from_millis(600);
    cfg.pool.max_restarts = 0;
    let f = fixture(cfg);
    let mut rx = f.pool.transitions();
    let first_pid = {
        assert!(wait_until(Duration::from_secs(5), || f.pool.status()[0].pid.is_some()).await);
        f.pool.status()[0].pid.unwrap()
    };
    expect_states(
        &mut rx,
        0,
        &[WorkerState::Unhealthy, WorkerState::Dead],
        Duration::from_secs(10),
    )
    .await;
    assert!(wait_until(Duration::from_secs(5), || !alive(first_pid)).await);
    f.pool.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_recycled_worker_is_replaced_with_no_failed_request() {
    let mut cfg = config(1, "grow");
    // Python starts at ~10 MB; each request keeps 4 MB, so a few requests cross 40 MB.
    cfg.pool.max_rss_mb = 40;
    let f = fixture(cfg);
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 1);
    let port = f.pool.status()[0].port;
    let first = f.pool.status()[0].pid.unwrap();
    let pool = f.pool.clone();
    // A steady client straight on the worker socket: during the overlap both processes accept
    // from it, and the old one finishes what it accepted before exiting.
    let (ok, failures, pids) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut ok, mut failures, mut pids) = (0, Vec::new(), std::collections::BTreeSet::new());
        while Instant::now() < deadline {
            match get(port, "/") {
                Ok(body) => {
                    ok += 1;
                    pids.insert(body.parse::<u32>().unwrap());
                }
                Err(e) => failures.push(e.to_string()),
            }
            let recycled = pool.status()[0].restarts >= 2;
            if recycled && pids.len() >= 3 {
                break;
            }
        }
        (ok, failures, pids)
    })
    .await
    .unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests of {}: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(
        pids.len() >= 3 && pids.contains(&first),
        "pids seen: {pids:?}"
    );
    assert!(replacements(&f.metrics, 0, "rss") >= 2);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(first)).await,
        "recycled worker {first} still alive"
    );
    f.pool.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_after_the_limit() {
    let mut cfg = config(1, "ok");
    cfg.pool.max_requests = 3;
    cfg.pool.max_requests_jitter = 2;
    let f = fixture(cfg);
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 1);
    let first = f.pool.status()[0].pid.unwrap();
    let mut rx = f.pool.transitions();
    // The front counts requests in slot.served; pretend it forwarded 5 (= max + max jitter).
    f.pool.slots()[0].served.fetch_add(5, Relaxed);
    let seen = expect_states(
        &mut rx,
        0,
        &[WorkerState::Degraded, WorkerState::Ready, WorkerState::Idle],
        Duration::from_secs(15),
    )
    .await;
    assert_ne!(seen.last().unwrap().pid, first);
    assert_eq!(replacements(&f.metrics, 0, "requests"), 1);
    // Planned: shown as replaced, not as a restart.
    let st = &f.pool.status()[0];
    assert_eq!((st.restarts, st.replaced), (0, 1));
    // The new process starts from its own baseline: no immediate second recycle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replacements(&f.metrics, 0, "requests"), 1);
    f.pool.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rolls_one_at_a_time_and_scales() {
    let f = fixture(config(2, "ok"));
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 2);
    let old: Vec<u32> = f.pool.status().iter().filter_map(|w| w.pid).collect();
    let mut rx = f.pool.transitions();
    let mut cfg = (*f.pool.config()).clone();
    cfg.pool.workers = 3;
    f.pool.reload(Arc::new(cfg)).await.unwrap();
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 3);
    let st = f.pool.status();
    assert_eq!(st.len(), 3);
    for (w, o) in st.iter().zip(&old) {
        assert_ne!(w.pid, Some(*o), "worker {} was not replaced", w.id);
    }
    // One at a time: never two slots DEGRADED at once.
    let mut degraded = std::collections::HashSet::new();
    while let Ok(t) = rx.try_recv() {
        if t.to == WorkerState::Degraded {
            degraded.insert(t.worker);
            assert_eq!(degraded.len(), 1, "two workers replaced at once");
        } else if t.from == WorkerState::Degraded {
            degraded.remove(&t.worker);
        }
    }
    assert_eq!(
        replacements(&f.metrics, 0, "reload") + replacements(&f.metrics, 1, "reload"),
        2
    );
    // SIGTTOU: one fewer. The removed worker drains and exits; its port leaves the list.
    let gone = f.pool.status()[2].pid.unwrap();
    f.pool.scale_by(-1);
    assert_eq!(f.pool.slots().len(), 2);
    assert!(wait_until(Duration::from_secs(10), || !alive(gone)).await);
    let port = f.pool.status()[1].port;
    f.pool.scale_by(-1);
    f.pool.scale_by(1);
    f.pool.scale_by(1);
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 3);
    // Slots come back on their old ports (kept bound while parked).
    assert_eq!(f.pool.status()[1].port, port);
    assert_eq!(f.pool.config().pool.workers, 3);
    f.pool.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sigkills_workers_that_ignore_sigterm_after_grace() {
    let f = fixture(config(1, "stubborn"));
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 1);
    let pid = f.pool.status()[0].pid.unwrap();
    let t = Instant::now();
    f.pool.stop(Duration::from_millis(500)).await;
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "did not wait for the grace"
    );
    assert!(!alive(pid));
    assert_eq!(f.pool.status()[0].state, "DEAD");
    f.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_an_error_naming_the_port_before_anything_spawns() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(2, "ok");
    // Worker 0 gets a free neighbour (hopefully), worker 1 the held port; either way it fails.
    cfg.pool.base_port = port - 1;
    let err = Pool::spawn_new(PoolOptions {
        config: Arc::new(cfg),
        config_path: dir.path().join("g.toml"),
        runtime_dir: dir.path().join("run"),
        metrics: SupervisorMetrics::new().0,
        shutdown: crate::shutdown::channel().1,
    })
    .err()
    .expect("port in use must fail");
    assert_eq!(err.exit_code(), 4);
    let msg = err.to_string();
    match &err {
        PoolError::PortInUse { port: p, holder } if *p == port => {
            assert!(msg.contains(&port.to_string()), "{msg}");
            assert!(
                holder
                    .as_deref()
                    .unwrap_or("")
                    .contains(&std::process::id().to_string()),
                "{msg}"
            );
        }
        // The neighbour port happened to be taken by someone else: still a port error.
        PoolError::PortInUse { port: p, .. } => assert_eq!(*p, port - 1),
        other => panic!("unexpected {other:?}"),
    }
    // Nothing was spawned: the runtime dir was not even created.
    assert!(!dir.path().join("run").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rearmed_deadlines_spare_a_silent_worker_until_the_rearm_ends() {
    let f = fixture(config(1, "ok"));
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 1);
    let pid = f.pool.status()[0].pid.unwrap();
    let mut rx = f.pool.transitions();
    let tx = f.pool.registry.senders()[0].1.clone();
    // The worker goes silent as it would across a suspend; the monitor's "we were asleep"
    // ticks keep re-arming for 2.5 heartbeat timeouts: the worker must not be killed.
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        tx.send(SlotCmd::Tick(Arc::new(task::Sweep {
            rearm: true,
            ..Default::default()
        })))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.pool.status()[0].state, "IDLE");
    assert_eq!(f.pool.status()[0].pid, Some(pid));
    assert!(rx.try_recv().is_err(), "state changed while re-armed");
    // Once nobody re-arms, the silence is a stall like any other.
    expect_states(
        &mut rx,
        0,
        &[WorkerState::Unhealthy],
        Duration::from_secs(5),
    )
    .await;
    f.pool.stop(Duration::from_secs(5)).await;
}

/// A later `start` is refused with every differing option named (the message is what an
/// operator reads), and an identical one is not.
#[test]
fn a_later_start_names_each_option_it_would_ignore() {
    let cfg = Arc::new(config(1, "ok"));
    let first = StartedWith {
        config: cfg.clone(),
        config_path: "/run/a/gateway.toml".into(),
        runtime_dir: "/run/a".into(),
    };
    let opts = |config: Arc<Config>, config_path: &str| {
        let (metrics, _registry) = SupervisorMetrics::new();
        PoolOptions {
            config,
            config_path: config_path.into(),
            runtime_dir: "/run/a".into(),
            metrics,
            shutdown: crate::shutdown::channel().1,
        }
    };
    assert!(first
        .ignored(&opts(cfg.clone(), "/run/a/gateway.toml"))
        .is_empty());
    let mut other = (*cfg).clone();
    other.pool.workers = 2;
    let ignored = first.ignored(&opts(Arc::new(other), "/run/b/gateway.toml"));
    assert_eq!(ignored, ["config", "config_path"]);
    let msg = PoolError::AlreadyStarted { ignored }.to_string();
    assert!(msg.contains("not applied: config, config_path"), "{msg}");
}

/// The hand-over of an in-place upgrade, in one process: the first pool releases its serving
/// workers (they keep running), a second pool takes the handed state and adopts them (the same
/// pids, IDLE at once, still serving on their sockets), supervises them through pidfds, starts
/// fresh a slot whose handed worker is already dead, and `replace_adopted` replaces only the
/// adopted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_workers_are_adopted_a_dead_one_starts_fresh_and_only_adopted_ones_are_replaced() {
    let cfg = config(2, "env");
    let f = fixture(cfg.clone());
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 2);
    let before = f.pool.status();
    let handing = Instant::now();
    // Worker 1 dies before the next image can adopt it.
    let (second, _trigger, pids, handed) = adopted_by_a_second_pool(&f, cfg, |pids| {
        kill(Pid::from_raw(pids[1] as i32), Signal::SIGKILL).unwrap();
        assert!(kit::wait_until(Duration::from_secs(5), || !alive(pids[1])));
    })
    .await;
    let mut rx = second.transitions();
    assert_eq!(second.wait_ready(Duration::from_secs(15)).await, 2);
    let after = second.status();
    assert_eq!(after[0].pid, Some(pids[0]), "adopted: {after:?}");
    assert_eq!(after[0].port, before[0].port, "on its own socket");
    // By start time rather than pid, which the kernel may already have given again.
    let since = handing.elapsed().as_millis() as u64;
    assert!(
        after[0].uptime_ms.unwrap() >= since,
        "adopted, with its start time: {after:?}"
    );
    assert!(
        after[1].uptime_ms.unwrap() <= since,
        "started fresh: {after:?}"
    );
    assert_eq!(after[1].port, before[1].port);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[1])).exists(),
        "the dead handed worker was reaped"
    );
    let port = after[0].port;
    let served = tokio::task::spawn_blocking(move || get(port, "/"))
        .await
        .unwrap();
    assert!(served.is_ok(), "the adopted worker serves: {served:?}");

    // The roll: worker 0 (adopted) gets a new process; worker 1 (this pool's) is left alone.
    second.replace_adopted().await.expect("roll");
    let rolled = second.status();
    assert!(
        rolled[0].pid.is_some() && rolled[0].pid != Some(pids[0]),
        "{rolled:?}"
    );
    assert_eq!(rolled[1].pid, after[1].pid, "{rolled:?}");
    let seen = expect_states(
        &mut rx,
        0,
        &[WorkerState::Degraded, WorkerState::Idle],
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(seen[0].pid, pids[0], "{seen:?}");
    // The replaced adopted process drains and is reaped through its pidfd.
    assert!(
        reaped(pids[0]).await,
        "the replaced adopted worker was reaped"
    );
    second.stop(Duration::from_secs(2)).await;
    drop(handed);
}

/// `f`'s pool handed over and its state taken by a second pool in the same runtime directory
/// (the descriptors duplicated, as the next image gets them across the exec). Returns the
/// second pool with its shutdown trigger (dropping it stops the pool), the handed pids, and the
/// hand-over (which keeps the first pool's copies open).
async fn adopted_by_a_second_pool(
    f: &Fixture,
    cfg: Config,
    between: impl FnOnce(&[u32]),
) -> (
    Arc<Pool>,
    crate::shutdown::ShutdownTrigger,
    Vec<u32>,
    HandedOver,
) {
    let pids: Vec<u32> = f.pool.status().iter().map(|w| w.pid.unwrap()).collect();
    let handed = f.pool.hand_over(Duration::from_secs(2)).await;
    assert!(
        pids.iter().all(|p| alive(*p)),
        "handed workers keep running"
    );
    let dup = |fd: std::os::fd::RawFd| {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0)).unwrap()
    };
    let mut state = handed.state.clone();
    for s in &mut state.slots {
        s.tcp = dup(s.tcp);
        s.front = s.front.take().map(|(fd, p)| (dup(fd), p));
        if let Some(w) = &mut s.worker {
            w.stdout = w.stdout.map(dup);
            w.stderr = w.stderr.map(dup);
        }
    }
    assert_eq!(state.pids(), pids);
    between(&pids);
    let (metrics, _registry) = SupervisorMetrics::new();
    let (trigger, shutdown) = crate::shutdown::channel();
    let second = Pool::spawn_with(
        PoolOptions {
            config: Arc::new(cfg),
            config_path: f.dir.path().join("gateway.toml"),
            runtime_dir: f.dir.path().join("run"),
            metrics,
            shutdown,
        },
        Some(state),
    )
    .expect("the second pool starts");
    (second, trigger, pids, handed)
}

/// The health checks cover an adopted worker too: one whose heartbeat stops (SIGSTOP) is
/// UNHEALTHY within the timeout, killed, reaped and replaced by a fresh process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_worker_whose_heartbeat_stops_is_replaced() {
    let cfg = config(1, "env");
    let f = fixture(cfg.clone());
    assert_eq!(f.pool.wait_ready(Duration::from_secs(15)).await, 1);
    let (second, _trigger, pids, _handed) = adopted_by_a_second_pool(&f, cfg, |_| {}).await;
    let mut rx = second.transitions();
    assert_eq!(second.wait_ready(Duration::from_secs(15)).await, 1);
    assert_eq!(second.status()[0].pid, Some(pids[0]), "adopted");
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGSTOP).unwrap();
    let seen = expect_states(
        &mut rx,
        0,
        &[
            WorkerState::Unhealthy,
            WorkerState::Restarting,
            WorkerState::Idle,
        ],
        Duration::from_secs(15),
    )
    .await;
    let stale = seen
        .iter()
        .find(|t| t.to == WorkerState::Unhealthy)
        .unwrap();
    assert!(stale.reason.starts_with("heartbeat stale"), "{seen:?}");
    assert_eq!(stale.pid, pids[0]);
    let now = second.status();
    assert!(
        now[0].pid.is_some() && now[0].pid != Some(pids[0]),
        "{now:?}"
    );
    assert!(
        reaped(pids[0]).await,
        "the stalled adopted worker was killed and reaped"
    );
    second.stop(Duration::from_secs(2)).await;
}
