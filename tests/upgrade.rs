//! `supervisor upgrade` and SIGUSR2 through the real binary, run from a copy so that the test can
//! put another file at the supervisor's path. A new binary that cannot run, or exits at once,
//! is refused before anything irreversible: the old image keeps serving with the same pid and
//! workers, `upgrade` exits non-zero naming the binary and why, and `--events` reports
//! `{"event":"upgrade","ok":false}`. A real new build (another version suffix) is executed in
//! place under load: no request fails, streams included (one held across the upgrade), the pid
//! stays, the version changes, the new image adopts the running workers (the same pids serve
//! in it) and then replaces them one at a time with workers of the new binary. An adopted
//! worker that is SIGKILLed is restarted: the new image supervises it through its pidfd.

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::http::post_chat;
use support::process::{bin_path, expect_notify, pid_alive, PoolConfig, Running, TestEnv};
use support::upstream::{Script, Upstream};

/// A copy of the supervisor binary in the test's directory.
fn copy_supervisor(env: &TestEnv) -> PathBuf {
    let bin = env.dir.path().join("bin").join("supervisor");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(bin_path("supervisor"), &bin).unwrap();
    bin
}

/// Puts a new file at `bin` (the running image is unlinked, never written: ETXTBSY).
fn replace(bin: &Path, text: &str, mode: u32) {
    std::fs::remove_file(bin).unwrap();
    std::fs::write(bin, text).unwrap();
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn next_upgrade_event(run: &mut Running) -> Value {
    run.guard
        .wait_event("upgrade", Duration::from_secs(30))
        .expect("an upgrade event within 30s")
}

fn assert_serving(run: &Running, env: &TestEnv, pids: &[u64]) {
    let r = post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.worker_pids(), pids, "the workers were not touched");
    assert_eq!(
        run.ready["pid"].as_u64(),
        Some(u64::from(run.guard.pid())),
        "same process"
    );
}

#[test]
fn a_new_binary_that_cannot_start_is_refused_and_the_old_one_keeps_serving() {
    let env = TestEnv::new(&PoolConfig::new(2).build());
    let bin = copy_supervisor(&env);
    let mut run = env.start_from(&bin, &["--events"]);
    let pids = env.worker_pids();
    let upgrade = || env.supervisor(&["upgrade"]).output().unwrap();

    // Not executable.
    replace(&bin, "#!/bin/sh\necho 'supervisor 9.9.9'\n", 0o644);
    let out = upgrade();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&*bin.to_string_lossy()),
        "names the binary: {err}"
    );
    assert!(err.contains("ermission denied"), "{err}");
    let ev = next_upgrade_event(&mut run);
    assert_eq!(ev["ok"], false, "{ev}");
    assert!(
        ev["error"].as_str().unwrap().contains("ermission denied"),
        "{ev}"
    );
    assert_serving(&run, &env, &pids);

    // Exits at once.
    replace(&bin, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n", 0o755);
    let out = upgrade();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot start"), "{err}");
    assert_eq!(next_upgrade_event(&mut run)["ok"], false);
    assert_serving(&run, &env, &pids);

    // SIGUSR2 takes the same path.
    run.guard.signal(Signal::SIGUSR2);
    let ev = next_upgrade_event(&mut run);
    assert_eq!(ev["ok"], false, "{ev}");
    assert!(
        ev["error"].as_str().unwrap().contains("cannot start"),
        "{ev}"
    );
    assert_serving(&run, &env, &pids);

    // A binary that rejects the running configuration.
    replace(
        &bin,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'supervisor 9.9.9'; exit 0; }\necho 'unknown key pool.x' >&2\nexit 2\n",
        0o755,
    );
    let out = upgrade();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("check-config") && err.contains("unknown key"),
        "{err}"
    );
    assert_eq!(next_upgrade_event(&mut run)["ok"], false);
    assert_serving(&run, &env, &pids);

    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
}

/// The version suffix of the second build.
const SUFFIX: &str = "-upgrade-test";

/// The supervisor built again with `GATEWAY_VERSION_SUFFIX` set, in its own target directory
/// beside the workspace's (the first run builds every dependency there once).
fn suffixed_build() -> PathBuf {
    let main = bin_path("supervisor");
    let profile_dir = main.parent().unwrap();
    let target = profile_dir.parent().unwrap().join("upgrade-suffix");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "-p",
        "supervisor",
        "--bin",
        "supervisor",
        "--target-dir",
    ])
    .arg(&target)
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .env("GATEWAY_VERSION_SUFFIX", SUFFIX);
    let profile = profile_dir.file_name().unwrap();
    if profile == "release" {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "building the suffixed supervisor failed");
    target.join(profile).join("supervisor")
}

fn exe_of(pid: u64) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// How many requests for model `demo` the ledger holds (`supervisor usage --by model`).
fn demo_requests(env: &TestEnv) -> u64 {
    let out = env
        .supervisor(&["usage", "--by", "model", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["model"] == "demo"))
        .and_then(|r| r["requests"].as_u64())
        .unwrap_or(0)
}

/// What a load loop saw: successes, failures with why, and the slowest request.
type LoadResult = (usize, Vec<String>, Duration);

/// The `worker` events after the current line until `done` says enough (or panics after 30s).
fn worker_events(run: &mut Running, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("worker events: not done within 30s: {seen:#?}"));
        let line = run
            .guard
            .next_line(left)
            .unwrap_or_else(|| panic!("worker events: none within 30s after {seen:#?}"));
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "worker" {
            seen.push(v);
        }
    }
    seen
}

/// Whether `events` hold worker `id` going `from` -> `to`, with `pid` when given.
fn has(events: &[Value], id: u64, from: &str, to: &str, pid: Option<u64>) -> bool {
    events.iter().any(|e| {
        e["id"] == id && e["from"] == from && e["to"] == to && pid.is_none_or(|p| e["pid"] == p)
    })
}

/// The worker pids by slot id.
fn pids_by_slot(status: &Value) -> Vec<u64> {
    let mut w: Vec<(u64, u64)> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_u64().unwrap(), w["pid"].as_u64().unwrap_or(0)))
        .collect();
    w.sort();
    w.into_iter().map(|(_, p)| p).collect()
}

/// Requests in a loop on its own thread until `stop`; every failure is kept with why.
fn load(
    listen: std::net::SocketAddr,
    model: &'static str,
    stream: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<LoadResult> {
    std::thread::spawn(move || {
        let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let r = post_chat(listen, model, stream);
            slowest = slowest.max(t.elapsed());
            match r {
                Ok(r) if r.status == 200 && (!stream || r.text().contains("[DONE]")) => ok += 1,
                Ok(r) => failed.push(format!("{model}: {} {}", r.status, r.text())),
                Err(e) => failed.push(format!("{model}: {e}")),
            }
        }
        (ok, failed, slowest)
    })
}

#[test]
fn a_new_build_is_executed_in_place_under_load_and_no_request_fails() {
    let new_build = suffixed_build();
    let up = Upstream::start();
    let chunk = |content: &str, finish: Value| {
        let v = serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
            "model": "up-model", "choices": [{"index": 0, "delta": {"content": content},
            "finish_reason": finish}]});
        format!("data: {v}\n\n")
    };
    // A stream that lasts: whichever is in flight when the upgrade starts must finish whole.
    up.set(
        "/v1/chat/completions",
        Script::sse_head()
            .chunk(chunk("hi", Value::Null))
            .delay(Duration::from_millis(400))
            .chunk(chunk("", "stop".into()))
            .chunk("data: [DONE]\n\n"),
    );
    // The stream held across the upgrade: it starts before and lasts through the drain.
    let slow = Upstream::start();
    slow.set(
        "/v1/chat/completions",
        Script::sse_head()
            .chunk(chunk("held", Value::Null))
            .delay(Duration::from_millis(1500))
            .chunk(chunk(" through", "stop".into()))
            .chunk("data: [DONE]\n\n"),
    );
    let base = up.url("");
    let slow_base = slow.url("");
    let env = TestEnv::new(
        &PoolConfig::new(2)
            .extra(&format!(
                "\n[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"{base}/v1\"\nmodels = [\"up-model\"]\n\
                 \n[[providers]]\nname = \"slow\"\nkind = \"openai\"\nbase_url = \"{slow_base}/v1\"\nmodels = [\"slow-model\"]\n"
            ))
            .build(),
    );
    let bin = copy_supervisor(&env);
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut cmd = env.supervisor_from(&bin, &["start", "--events"]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut run = Running::ready(cmd);
    let mut seen = Vec::new();
    expect_notify(&notify, "READY=1", Duration::from_secs(20), &mut seen);
    let pid = run.guard.pid();
    let before = env.status_json();
    assert_eq!(before["generation"], 0, "{before}");
    let old_version = before["version"].as_str().unwrap().to_string();
    assert!(!old_version.ends_with(SUFFIX), "{old_version}");
    let old_pids = pids_by_slot(&before);

    let stop = Arc::new(AtomicBool::new(false));
    let loads = vec![
        load(run.listen, "demo", false, stop.clone()),
        load(run.listen, "up-model", true, stop.clone()),
    ];
    // Both loops are running before the upgrade starts.
    assert!(support::process::wait_until(
        Duration::from_secs(10),
        || { up.requests().len() >= 2 }
    ));

    // A stream in flight when the upgrade starts.
    let listen = run.listen;
    let held = std::thread::spawn(move || post_chat(listen, "slow-model", true));
    assert!(support::process::wait_until(
        Duration::from_secs(10),
        || { !slow.requests().is_empty() }
    ));

    // The new build at the supervisor's path (the running image is unlinked, never written).
    std::fs::remove_file(&bin).unwrap();
    std::fs::copy(&new_build, &bin).unwrap();
    let out = env.supervisor(&["upgrade"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}\n{}", run.guard.stderr());
    assert!(err.contains(SUFFIX), "{err}");
    let held = held.join().unwrap().expect("the held stream");
    assert_eq!(held.status, 200, "{}", held.text());
    let text = held.text();
    assert!(
        text.contains("held") && text.contains(" through") && text.contains("[DONE]"),
        "the held stream is whole: {text}"
    );

    // The new image adopted the running workers: each served in it under its old pid until the
    // roll replaced it (IDLE -> DEGRADED is reported with the serving pid), then a new process
    // took the slot; nothing failed on the way.
    let ev = next_upgrade_event(&mut run);
    assert_eq!(ev["ok"], true, "{ev}");
    assert_eq!(ev["pid"], pid, "{ev}");
    assert!(ev["version"].as_str().unwrap().ends_with(SUFFIX), "{ev}");
    let rolled = worker_events(&mut run, |seen| {
        (0..2u64).all(|id| has(seen, id, "READY", "IDLE", None))
    });
    for (id, old) in old_pids.iter().enumerate() {
        assert!(
            has(&rolled, id as u64, "IDLE", "DEGRADED", Some(*old)),
            "worker {id} (pid {old}) was not adopted and then replaced: {rolled:#?}\n{}",
            run.guard.stderr()
        );
    }
    for e in &rolled {
        assert!(
            !["UNHEALTHY", "RESTARTING", "DEAD"].contains(&e["to"].as_str().unwrap()),
            "{e}\n{}",
            run.guard.stderr()
        );
    }
    // Their output pipes were handed over too: the new image relays what the adopted workers
    // log as the roll drains them.
    assert!(
        support::process::wait_until(Duration::from_secs(10), || {
            let log = run.guard.stderr();
            let Some((_, after)) = log.split_once("upgraded=true") else {
                return false;
            };
            (0..old_pids.len()).all(|id| {
                after.lines().any(|l| {
                    l.contains("SIGTERM: draining") && l.ends_with(&format!("worker={id}"))
                })
            })
        }),
        "{}",
        run.guard.stderr()
    );

    // Still serving after it, then the loops stop.
    let served_after = up.requests().len();
    assert!(support::process::wait_until(
        Duration::from_secs(10),
        || { up.requests().len() >= served_after + 2 }
    ));
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    let mut demo_ok = 0;
    for (i, l) in loads.into_iter().enumerate() {
        let (ok, f, slowest) = l.join().unwrap();
        if i == 0 {
            demo_ok = ok;
        }
        assert!(ok > 0, "a load loop got nothing through");
        eprintln!(
            "{ok} requests served, {} failed, slowest {slowest:?}",
            f.len()
        );
        failed.extend(f);
    }
    assert!(failed.is_empty(), "failed requests: {failed:#?}");

    // The same process, now the new image and version; its workers run the new binary.
    assert!(pid_alive(pid));
    assert_eq!(exe_of(pid.into()), bin.display().to_string());
    let after = env.status_json();
    assert_eq!(after["generation"], 1, "{after}");
    assert_eq!(
        after["version"],
        format!("{old_version}{SUFFIX}"),
        "{after}"
    );
    let new_pids = support::process::worker_pids(&after);
    assert_eq!(new_pids.len(), 2, "{after}");
    for p in &new_pids {
        assert!(!old_pids.contains(p), "worker {p} was not replaced");
        assert_eq!(exe_of(*p), bin.display().to_string(), "worker {p}");
    }
    // systemd saw it as a reload: RELOADING=1 from the old image, READY=1 from the new one.
    seen.clear();
    expect_notify(&notify, "RELOADING=1", Duration::from_secs(20), &mut seen);
    expect_notify(&notify, "READY=1", Duration::from_secs(20), &mut seen);

    // SIGUSR2 takes the same path, and an upgraded image upgrades again.
    run.guard.signal(Signal::SIGUSR2);
    let ev = next_upgrade_event(&mut run);
    assert_eq!(
        (ev["ok"].clone(), ev["generation"].clone()),
        (true.into(), 2.into()),
        "{ev}"
    );
    assert!(support::process::wait_until(
        Duration::from_secs(20),
        || {
            let st = env.status_json();
            st["generation"] == 2
                && st["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|w| w["state"] == "IDLE")
        }
    ));
    let r = post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Every request is in the ledger, those of the adopted worker included.
    let requests = || demo_requests(&env);
    // The load loop's and this last one: none lost across two upgrades.
    let want = demo_ok as u64 + 1;
    assert!(
        support::process::wait_until(Duration::from_secs(10), || requests() == want),
        "{} usage records of {want} requests",
        requests()
    );

    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
}

/// An adopted worker that dies is noticed at once and restarted (the new image waits on it
/// through a pidfd, having no `Child` for it). Workers that take 2 s to start keep the roll on
/// worker 0 long enough for worker 1 to be still the adopted one when it is killed.
#[test]
fn an_adopted_worker_that_is_killed_is_restarted() {
    let worker = bin_path("gateway-worker");
    let cmd = format!(
        "worker_command = [\"/bin/sh\", \"-c\", \"sleep 2; exec {} \\\"$@\\\"\", \"worker\"]",
        worker.display()
    );
    let env = TestEnv::new(&PoolConfig::new(2).pool(&cmd).build());
    let bin = copy_supervisor(&env);
    let mut run = env.start_from(&bin, &["--events"]);
    let old = pids_by_slot(&env.status_json());
    assert_eq!(old.len(), 2);

    // The same binary again: what matters here is the adoption, not the version.
    let out = env.supervisor(&["upgrade"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}\n{}", run.guard.stderr());
    assert_eq!(next_upgrade_event(&mut run)["ok"], true);
    // The roll started on worker 0; worker 1 is still the adopted process.
    let mut seen = worker_events(&mut run, |seen| has(seen, 0, "IDLE", "DEGRADED", None));
    let status = env.status_json();
    assert_eq!(pids_by_slot(&status)[1], old[1], "{status}");
    // Served by the adopted worker 1 (worker 0 is DEGRADED): their usage records reach the
    // new image over the connection it took over.
    for _ in 0..4 {
        let r = post_chat(run.listen, "demo", false).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    support::process::signal(old[1] as u32, Signal::SIGKILL);
    seen.extend(worker_events(&mut run, |seen| {
        has(seen, 1, "IDLE", "UNHEALTHY", Some(old[1]))
    }));
    let died = seen
        .iter()
        .find(|e| e["id"] == 1 && e["to"] == "UNHEALTHY")
        .unwrap();
    assert!(
        died["reason"].as_str().unwrap().contains("signal 9"),
        "{died}"
    );
    // Restarted, and the roll completes: every slot serves with a process of this image.
    assert!(
        support::process::wait_until(Duration::from_secs(30), || {
            let st = env.status_json();
            let pids = pids_by_slot(&st);
            st["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "IDLE")
                && pids.iter().all(|p| *p != 0 && !old.contains(p))
        }),
        "{}\n{}",
        env.status_json(),
        run.guard.stderr()
    );
    let st = env.status_json();
    assert_eq!(st["workers"][1]["restarts"], 1, "{st}");
    assert!(!Path::new(&format!("/proc/{}", old[1])).exists(), "reaped");
    let r = post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Every request is in the ledger, those of the adopted worker included.
    let requests = || demo_requests(&env);
    assert!(
        support::process::wait_until(Duration::from_secs(10), || requests() == 5),
        "{} usage records of 5 requests",
        requests()
    );

    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
}

/// A new binary that does not adopt workers (an older version: a rollback) gets what it
/// understands: the workers are stopped before the exec and it starts its own; no request fails.
/// Here that binary is a wrapper that hides the question from the real one.
#[test]
fn a_binary_that_does_not_adopt_gets_its_workers_stopped_and_starts_its_own() {
    let env = TestEnv::new(&PoolConfig::new(2).build());
    let bin = copy_supervisor(&env);
    let real = env.dir.path().join("bin").join("supervisor-real");
    std::fs::copy(&bin, &real).unwrap();
    let mut run = env.start_from(&bin, &["--events"]);
    let pid = run.guard.pid();
    let old = pids_by_slot(&env.status_json());
    replace(
        &bin,
        &format!(
            "#!/bin/sh\nunset GATEWAY_UPGRADE_QUERY\nexec {} \"$@\"\n",
            real.display()
        ),
        0o755,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let demo = load(run.listen, "demo", false, stop.clone());
    let out = env.supervisor(&["upgrade"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}\n{}", run.guard.stderr());
    assert_eq!(next_upgrade_event(&mut run)["ok"], true);
    let r = post_chat(run.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, _) = demo.join().unwrap();
    assert!(ok > 0 && failed.is_empty(), "{failed:#?}");
    assert_eq!(run.guard.pid(), pid);
    let st = env.status_json();
    assert_eq!(st["generation"], 1, "{st}");
    let new = pids_by_slot(&st);
    assert!(new.iter().all(|p| *p != 0 && !old.contains(p)), "{st}");
    for p in &old {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "old worker {p} is gone"
        );
    }
    assert!(
        run.guard.stderr().contains("adopts_workers=false"),
        "{}",
        run.guard.stderr()
    );

    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
}
