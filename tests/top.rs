//! `supervisor top` end to end: in a pseudo-terminal it draws the workers, `q` quits with 0 and
//! the terminal is restored (alternate screen left, cursor shown); with a non-TTY stdout it
//! prints one plain snapshot and exits 0.

mod support;

use nix::pty::{openpty, Winsize};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::process::{mock_config, Running, TestEnv};

/// Kills the child if the test ends before it exited.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `supervisor top` with a non-TTY stdout: one snapshot, then it exits.
fn top_once(env: &TestEnv) -> std::process::Output {
    env.supervisor(&["top"])
        .arg("--runtime-dir")
        .arg(env.runtime_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn non_tty_prints_one_snapshot() {
    let env = TestEnv::new(&mock_config(2, ""));
    let _sup: Running = env.start(&[]);
    let out = top_once(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("STATE") && text.contains("PROVIDER"),
        "{text}"
    );
    assert_eq!(text.matches("IDLE").count(), 2, "{text}");
    assert!(!text.contains('\x1b'), "plain text, no escapes: {text:?}");
    assert!(
        text.contains("COOLDOWN") && text.contains("INFLIGHT"),
        "{text}"
    );

    // A request made is listed (the access joiner publishes its ring within 250 ms).
    let r = support::http::post_chat(_sup.listen, "demo", false).unwrap();
    assert_eq!(r.status, 200);
    let listed = |t: &str| {
        t.lines().any(|l| {
            l.contains(" demo ") && l.contains(" 200 ") && l.ends_with("/v1/chat/completions")
        })
    };
    let mut text = String::new();
    let ok = support::process::wait_until(Duration::from_secs(10), || {
        text = String::from_utf8_lossy(&top_once(&env).stdout).into_owned();
        listed(&text)
    });
    assert!(ok, "the request in the last requests: {text}");
}

#[test]
fn in_a_terminal_it_shows_the_workers_and_q_restores_the_terminal() {
    let env = TestEnv::new(&mock_config(3, ""));
    let _sup: Running = env.start(&[]);
    let size = Winsize {
        ws_row: 40,
        ws_col: 140,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let slave = || Stdio::from(pty.slave.as_fd().try_clone_to_owned().unwrap());
    let mut cmd = env.supervisor(&["top"]);
    cmd.arg("--runtime-dir")
        .arg(env.runtime_dir())
        .env("TERM", "xterm-256color")
        .stdin(slave())
        .stdout(slave())
        .stderr(slave());
    let mut child = Kill(cmd.spawn().unwrap());
    drop(pty.slave);
    let mut master_r = std::fs::File::from(pty.master.try_clone().unwrap());
    let mut master_w = std::fs::File::from(pty.master);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = master_r.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let read_until = |screen: &mut Vec<u8>, what: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !what(&String::from_utf8_lossy(screen)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => screen.extend(b),
                Err(_) => panic!("not seen within 20s: {}", String::from_utf8_lossy(screen)),
            }
        }
    };
    // The providers' rows come from the workers' metrics, a moment after the workers' own.
    read_until(&mut screen, &|s| {
        s.contains("workers") && s.matches("IDLE").count() >= 3 && s.contains("demo")
    });
    let s = String::from_utf8_lossy(&screen).to_string();
    assert!(s.contains("\x1b[?1049h"), "on the alternate screen");
    assert!(
        s.contains("req/s") && s.contains("providers") && s.contains("demo"),
        "{s}"
    );

    master_w.write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    // What the restore wrote may still be in flight to the master.
    read_until(&mut screen, &|s| s.contains("\x1b[?1049l"));
}
