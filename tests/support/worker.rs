//! The worker under test: run the real `gateway-worker` binary on a socket the test binds and
//! passes as fd 3 (`LISTEN_FDS`, exactly as the supervisor does), with a heartbeat file used as
//! the readiness signal; and the config text the `worker_*` tests give it.

use super::process::{bin_path, wait_until, ChildGuard};
use super::upstream::Upstream;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A running worker process.
pub struct Worker {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub heartbeat: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Config text with the pool's drain time short and `providers` appended.
pub fn config(providers: &str) -> String {
    format!(
        r#"
[pool]
shutdown_timeout = "10s"
heartbeat_interval = "100ms"
heartbeat_timeout = "2s"

[health]
probe_interval = "0s"
probe_timeout = "2s"

{providers}
"#
    )
}

/// The `mock` provider `demo` serving model `demo`, as a `[[providers]]` table.
pub const MOCK_PROVIDER: &str =
    "[[providers]]\nname = \"demo\"\nkind = \"mock\"\nmodels = [\"demo\"]\n";

/// A `kind` provider named `name` at `base_url` serving `models` (a TOML array), key from
/// `key_env`, with `extra` provider keys.
fn provider(
    kind: &str,
    name: &str,
    base_url: &str,
    models: &str,
    key_env: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[[providers]]
name = "{name}"
kind = "{kind}"
base_url = "{base_url}"
api_key_env = "{key_env}"
models = {models}
{extra}
"#
    )
}

/// An `openai`-kind provider named `name` at base URL `url` serving `models`, key from the
/// environment variable `key`, with `extra` provider keys.
pub fn openai_provider(name: &str, url: &str, models: &str, key: &str, extra: &str) -> String {
    provider("openai", name, url, models, key, extra)
}

/// An `anthropic`-kind provider, with the same arguments as `openai_provider`.
pub fn anthropic_provider(name: &str, url: &str, models: &str, key: &str, extra: &str) -> String {
    provider("anthropic", name, url, models, key, extra)
}

/// Config with one openai provider `up` at `up`'s `/v1` serving `m1`, key from `$UP_KEY`, with
/// `extra` provider keys.
pub fn openai_config(up: &Upstream, extra: &str) -> String {
    config(&openai_provider(
        "up",
        &up.url("/v1"),
        r#"["m1"]"#,
        "UP_KEY",
        extra,
    ))
}

impl Worker {
    /// Starts `gateway-worker --config FILE` with `env`, waits until it serves (its heartbeat
    /// file exists), and returns it. The test's copy of the socket is closed once the worker
    /// has its own, so after the worker stops listening, connections are refused.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(config, env, &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gateway.toml");
        std::fs::write(&cfg, config).unwrap();
        let heartbeat = dir.path().join("worker.hb");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cmd = Command::new(bin_path("gateway-worker"));
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--heartbeat-file")
            .arg(&heartbeat);
        cmd.args(["--heartbeat-interval", "100ms"]).args(args);
        for v in [
            "GATEWAY_CONFIG",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("LISTEN_FDS", "1").env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let fd = listener.as_raw_fd();
        // SAFETY: the closure only makes async-signal-safe system calls (dup2, fcntl) on
        // descriptors this process owns, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself would keep close-on-exec set.
                    nix::fcntl::fcntl(
                        3,
                        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                    )?;
                } else {
                    nix::unistd::dup2(fd, 3)?;
                }
                Ok(())
            });
        }
        let guard = ChildGuard::spawn(cmd);
        let w = Self {
            guard,
            addr,
            heartbeat,
            dir,
        };
        let hb = w.heartbeat.clone();
        assert!(
            wait_until(Duration::from_secs(20), || hb.exists()),
            "worker never wrote its heartbeat; stderr:\n{}",
            w.guard.stderr()
        );
        drop(listener);
        w
    }
}
