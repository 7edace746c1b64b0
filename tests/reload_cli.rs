//! Reloads and the control CLI as an operator sees them, through the real binaries: a reload
//! whose replacements fail says so, a bad file's problems are printed with their location, an
//! unchanged file restarts nothing, planned replacements are not counted as restarts, and an
//! admin socket the caller may not use is reported as such.

mod support;

use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;
use support::http::{chat_body, get, post_json};
use support::process::{signal, wait_until, PoolConfig, TestEnv};

fn cli(env: &TestEnv, args: &[&str]) -> Output {
    env.supervisor(args).output().expect("run supervisor CLI")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

use support::process::worker_pids as pids;

#[test]
fn a_reload_whose_replacements_cannot_start_is_reported_as_failed() {
    let env = TestEnv::new(&PoolConfig::new(1).build());
    let run = env.start(&[]);
    let before = pids(&env.status_json());
    // A program that exits at once: every replacement fails.
    env.write_config(
        &PoolConfig::new(1)
            .pool("worker_command = [\"/bin/false\"]")
            .build(),
    );
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replacement failed"),
        "{}",
        stderr(&out)
    );
    // The supervisor's log is read by a thread: wait for the line rather than race it.
    assert!(
        wait_until(Duration::from_secs(5), || run
            .guard
            .stderr()
            .contains("reload failed")),
        "{}",
        run.guard.stderr()
    );
    let log = run.guard.stderr();
    assert!(!log.contains("configuration reloaded"), "{log}");
    // The old worker keeps serving.
    let st = env.status_json();
    assert_eq!(pids(&st), before, "{st}");
    let r = post_json(
        run.listen,
        "/v1/chat/completions",
        &chat_body("demo", false),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // The original file again is not "unchanged": the pool took the failed configuration, so
    // it is rolled back to this one.
    env.write_config(&PoolConfig::new(1).build());
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = env.status_json();
    assert_ne!(pids(&st), before, "{st}");
    assert!(wait_until(Duration::from_secs(5), || run
        .guard
        .stderr()
        .contains("configuration reloaded")));
}

#[test]
fn reload_of_a_bad_file_prints_every_problem_with_its_location() {
    let good = PoolConfig::new(1).build();
    let env = TestEnv::new(&good);
    let run = env.start(&[]);
    let bad = PoolConfig::new(1)
        .extra("\n[routing]\nstrategy = \"fastest\"")
        .build()
        .replace("workers = 1", "workers = 0");
    env.write_config(&bad);
    let line_of = |needle: &str| bad.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let file = env.config_path.display().to_string();
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for (needle, key) in [
        ("workers", "pool.workers"),
        ("strategy", "routing.strategy"),
    ] {
        let want = format!("{file}:{}:1: {key}", line_of(needle));
        assert!(err.contains(&want), "{want} missing in:\n{err}");
        assert!(
            wait_until(Duration::from_secs(5), || run
                .guard
                .stderr()
                .contains(&want)),
            "not logged: {want}"
        );
    }
}

#[test]
fn sighup_with_an_unchanged_file_keeps_every_worker() {
    let env = TestEnv::new(&PoolConfig::new(2).build());
    let run = env.start(&[]);
    let before = pids(&env.status_json());
    run.guard.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || run
            .guard
            .stderr()
            .contains("configuration unchanged")),
        "{}",
        run.guard.stderr()
    );
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = env.status_json();
    assert_eq!(pids(&st), before, "{st}");
    for w in st["workers"].as_array().unwrap() {
        assert_eq!(
            (w["restarts"].clone(), w["replaced"].clone()),
            (0.into(), 0.into()),
            "{st}"
        );
    }
}

#[test]
fn restart_worker_of_no_such_worker_is_a_usage_error() {
    let env = TestEnv::new(&PoolConfig::new(1).build());
    let _run = env.start(&[]);
    let out = cli(&env, &["restart-worker", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no worker 5"), "{}", stderr(&out));
}

#[test]
fn planned_replacements_are_not_restarts() {
    let env = TestEnv::new(&PoolConfig::new(1).pool("max_requests = 2").build());
    let run = env.start(&[]);
    let worker0 = |env: &TestEnv| env.status_json()["workers"][0].clone();
    // Recycling over max_requests.
    let first = worker0(&env)["pid"].as_u64().unwrap();
    for _ in 0..2 {
        let r = post_json(
            run.listen,
            "/v1/chat/completions",
            &chat_body("demo", false),
        );
        assert_eq!(r.unwrap().status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            let w = worker0(&env);
            w["state"] == "IDLE" && w["pid"].as_u64().is_some_and(|p| p != first)
        }),
        "never recycled: {}",
        env.status_json()
    );
    let w = worker0(&env);
    assert_eq!(w["restarts"], 0, "{w}");
    assert_eq!(w["replaced"], 1, "{w}");

    // A reload with a change.
    env.write_config(&PoolConfig::new(1).pool("max_requests = 100000").build());
    let replaced = worker0(&env)["replaced"].as_u64().unwrap();
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let w = worker0(&env);
    assert_eq!(w["restarts"], 0, "{w}");
    assert_eq!(w["replaced"].as_u64().unwrap(), replaced + 1, "{w}");
    let table = String::from_utf8(cli(&env, &["status"]).stdout).unwrap();
    assert!(
        table.contains("RESTARTS") && table.contains("REPLACED"),
        "{table}"
    );

    // A crash is a restart.
    let pid = w["pid"].as_u64().unwrap();
    signal(pid as u32, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let w = worker0(&env);
            w["state"] == "IDLE" && w["pid"].as_u64().is_some_and(|p| p != pid)
        }),
        "{}",
        env.status_json()
    );
    let w = worker0(&env);
    assert_eq!(w["restarts"], 1, "{w}");
    assert_eq!(w["replaced"].as_u64().unwrap(), replaced + 1, "{w}");

    let metrics = get(run.listen, "/metrics").unwrap().text();
    assert!(
        metrics.contains("gateway_worker_restarts_total{worker=\"0\",reason=\"exit\"} 1"),
        "{metrics}"
    );
    for planned in ["reload", "requests"] {
        assert!(
            !metrics.contains(&format!(
                "gateway_worker_restarts_total{{worker=\"0\",reason=\"{planned}\"}}"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "gateway_worker_replacements_total{{worker=\"0\",reason=\"{planned}\"}}"
            )),
            "{metrics}"
        );
    }
}

#[test]
fn status_without_permission_on_the_admin_socket_says_so() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run the CLI as another user (nobody)");
        return;
    }
    let env = TestEnv::new(&PoolConfig::new(1).build());
    let _run = env.start(&[]);
    // `nobody` can read the file and reach the runtime directory, which passes the privacy check
    // for it (it owns it, 0700), but cannot connect to the root-owned socket inside (0600): the
    // one case the directory check lets through to a refused connect.
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(env.dir.path(), 0o711);
    open(&env.config_path, 0o644);
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    nix::unistd::chown(&env.runtime_dir(), Some(nobody.uid), None).unwrap();
    let mut cmd = env.supervisor(&["status"]);
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "info");
    let out = cmd.output().expect("run setpriv");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let sock = env.runtime_dir().join("admin.sock");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(!err.contains("no supervisor is running"), "{err}");
}

#[test]
fn a_reload_that_revives_a_dead_worker_reports_whether_it_started() {
    const TEST_WORKER: &str = include_str!("../supervisor/tests/fixtures/test_worker.py");
    // Worker 0 exits at once (and goes DEAD), worker 1 serves.
    let worker = |mode: &str| {
        let cmd = serde_json::json!(["python3", "-c", TEST_WORKER, mode]);
        format!("worker_command = {cmd}\nmax_restarts = 1")
    };
    let env = TestEnv::new(&PoolConfig::new(2).pool(&worker("exit0")).build());
    let run = env.start(&[]);
    assert!(
        wait_until(Duration::from_secs(20), || env.status_json()["workers"][0]
            ["state"]
            == "DEAD"),
        "{}",
        env.status_json()
    );
    // Still broken: the revived worker fails again, and the reload says so.
    env.write_config(
        &PoolConfig::new(2)
            .pool(&format!("{}\nmax_requests = 1000", worker("exit0")))
            .build(),
    );
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("worker 0: did not start"),
        "{}",
        stderr(&out)
    );
    assert!(!run.guard.stderr().contains("configuration reloaded"));
    // Fixed: the reload succeeds, and the revived worker serves. (It may be waiting out its
    // backoff when the reload comes, and then starts with the new configuration after it.)
    env.write_config(&PoolConfig::new(2).pool(&worker("ok")).build());
    let out = cli(&env, &["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(20), || env.status_json()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "IDLE")),
        "{}",
        env.status_json()
    );
}
