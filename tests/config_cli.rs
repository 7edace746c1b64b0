//! `supervisor check-config` through the real binary: exit codes and located errors.

mod support;

use std::process::Command;
use support::process::{bin_path, TestEnv};

fn check(env: &TestEnv) -> std::process::Output {
    env.supervisor(&["check-config"])
        .output()
        .expect("run supervisor")
}

#[test]
fn good_file_exits_0_with_a_summary() {
    let env = TestEnv::new(&support::process::mock_config(2, ""));
    let out = check(&env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen:    127.0.0.1:0"), "{stdout}");
    assert!(
        stdout.contains("workers:   2 on any free ports"),
        "{stdout}"
    );
    assert!(
        stdout.contains("demo") && stdout.contains("no key needed"),
        "{stdout}"
    );
}

#[test]
fn missing_key_variable_is_a_warning_not_an_error() {
    let env = TestEnv::new(
        "[[providers]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"https://api.example.com/v1\"\n\
         api_key_env = \"GW_TEST_SURELY_UNSET_KEY\"\nmodels = [\"m\"]\n",
    );
    let out = check(&env);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: key $GW_TEST_SURELY_UNSET_KEY is not set"),
        "{stdout}"
    );
}

#[test]
fn bad_file_exits_2_naming_file_line_and_key() {
    let env = TestEnv::new("[pool]\nworkers = 0\n\n[routing]\nstrategy = \"fastest\"\n");
    let out = check(&env);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = env.config_path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:1: pool.workers")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:5:1: routing.strategy")),
        "{stderr}"
    );
}

#[test]
fn unknown_key_exits_2_with_its_line() {
    let env = TestEnv::new("[server]\nlisten = \"127.0.0.1:9\"\nport = 1\n");
    let out = check(&env);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:1: server.port: unknown field",
            env.config_path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn missing_file_exits_2_with_a_clear_message() {
    let out = Command::new(bin_path("supervisor"))
        .args(["check-config", "-c", "/nonexistent/dir/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/dir/gateway.toml: cannot read configuration file"),
        "{stderr}"
    );
}

#[test]
fn builtin_default_is_used_when_nothing_else_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path("supervisor"))
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("GATEWAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("<built-in gateway.toml>") && stdout.contains("127.0.0.1:8080"),
        "{stdout}"
    );
}

#[test]
fn gateway_config_variable_is_honoured() {
    let env = TestEnv::new("[pool]\nworkers = 0\n");
    let out = Command::new(bin_path("supervisor"))
        .arg("check-config")
        .env("GATEWAY_CONFIG", &env.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "GATEWAY_CONFIG was not read");
}

#[test]
fn unknown_key_is_reported_with_its_path_together_with_every_other_error() {
    let env = TestEnv::new(
        "[server]\ncolour = \"blue\"\nlisten = \"127.0.0.1:9\"\n\n[pool]\nworkers = 0\n\n\
         [routing]\nstrategy = \"fastest\"\n\n[[providers]]\nname = \"x\"\nkind = \"mock\"\n\
         models = []\n",
    );
    let out = check(&env);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = env.config_path.display().to_string();
    assert!(stderr.contains("(4 problem(s))"), "{stderr}");
    for want in [
        "2:1: server.colour: unknown field `colour`",
        "6:1: pool.workers: must be at least 1",
        "9:1: routing.strategy: unknown strategy",
        "14:1: providers[0].models: must list at least one model",
    ] {
        assert!(
            stderr.contains(&format!("{file}:{want}")),
            "{want}:\n{stderr}"
        );
    }
}
