//! What a new user meets first, end to end through the real binaries: a provider whose key
//! variable is unset (out of rotation, one log line, a 503 naming the variable), keyless local
//! servers, `provider/model` addressing, and `GET /v1/models/{id}` on the front and a worker.

mod support;

use nix::sys::signal::Signal;
use serde_json::json;
use std::time::Duration;
use support::http;
use support::process::{mock_config, TestEnv};
use support::upstream::{Script, Upstream};
use support::worker::{self, Worker};

/// An OpenAI chat completion, as an upstream sends it.
fn completion(model: &str) -> Script {
    Script::json(
        200,
        json!({
            "id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }),
    )
}

fn messages_body(model: &str) -> serde_json::Value {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn unset_key_is_out_of_rotation_logged_once_and_named_in_a_503() {
    // `nokey` and `nokey_an` point at a live upstream that must never be called.
    let never = Upstream::start();
    never.set("*", completion("gpt-x"));
    let free = Upstream::serving("/v1/chat/completions", completion("m-free"));
    let extra = format!(
        r#"
[routing]
strategy = "round_robin"

[[providers]]
name = "nokey"
kind = "openai"
base_url = "{never_oa}"
api_key_env = "GW_TEST_UNSET_OA_KEY"
models = ["gpt-x"]

[[providers]]
name = "nokey_an"
kind = "anthropic"
base_url = "{never_an}"
api_key_env = "GW_TEST_UNSET_AN_KEY"
models = ["claude-x"]

[[providers]]
name = "free"
kind = "openai"
base_url = "{free}"
api_key_env = ""
models = ["m-free"]

[[models]]
name = "fast"
targets = ["nokey/gpt-x", "free/m-free"]
"#,
        never_oa = never.url("/v1"),
        never_an = never.url(""),
        free = free.url("/v1"),
    );
    let env = TestEnv::new(&mock_config(3, &extra));
    let mut run = env.start(&[]);

    // Only the keyless provider serves `gpt-x`: a 503 at once, OpenAI shape, naming the variable.
    let r = http::post_chat(run.listen, "gpt-x", false).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert!(v["error"]["type"].is_string(), "OpenAI error shape: {v}");
    assert!(r.error_message().contains("$GW_TEST_UNSET_OA_KEY"), "{v}");

    // The same on the Anthropic API, in the Anthropic shape.
    let r = http::post_json(run.listen, "/v1/messages", &messages_body("claude-x")).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "Anthropic error shape: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$GW_TEST_UNSET_AN_KEY"),
        "{v}"
    );

    // An alias over the keyless provider and a working one: every request goes to the working
    // one (round robin would otherwise alternate), with no attempt on the keyless one.
    for _ in 0..4 {
        let r = http::post_chat(run.listen, "fast", false).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(never.request_count(), 0, "{:?}", never.requests());

    // `api_key_env = ""` means no key needed: called, and without any credential header.
    let sent = free.requests();
    assert_eq!(sent.len(), 4);
    for s in &sent {
        assert_eq!(s.header("authorization"), None);
        assert_eq!(s.header("x-api-key"), None);
        assert_eq!(s.json()["model"], "m-free");
    }

    // `/v1/health` says why the provider is out of rotation.
    let h = http::get(run.listen, "/v1/health").unwrap();
    assert_eq!(h.status, 200, "{}", h.text());
    let h = h.json();
    assert_eq!(
        h["providers"]["nokey"]["error"], "$GW_TEST_UNSET_OA_KEY is not set",
        "{h}"
    );

    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
    let stderr = run.guard.stderr();
    for var in ["GW_TEST_UNSET_OA_KEY", "GW_TEST_UNSET_AN_KEY"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&format!("${var} is not set")))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one line for ${var} with 3 workers:\n{stderr}"
        );
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
    }
}

#[test]
fn a_standalone_worker_reports_an_unset_key_itself_once() {
    let never = Upstream::start();
    let cfg = worker::config(&worker::openai_provider(
        "nokey",
        &never.url("/v1"),
        r#"["gpt-x"]"#,
        "GW_TEST_UNSET_OA_KEY",
        "",
    ));
    let mut w = Worker::start(&cfg, &[]);
    let r = http::post_chat(w.addr, "gpt-x", false).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error_message().contains("$GW_TEST_UNSET_OA_KEY"));
    assert_eq!(never.request_count(), 0);
    w.guard.signal(Signal::SIGTERM);
    assert!(w.guard.wait_exit(Duration::from_secs(20)).is_some());
    let stderr = w.guard.stderr();
    let n = stderr
        .lines()
        .filter(|l| l.contains("$GW_TEST_UNSET_OA_KEY is not set"))
        .count();
    assert_eq!(n, 1, "{stderr}");
}

#[test]
fn provider_slash_model_reaches_that_provider_with_the_bare_name() {
    let local = Upstream::serving("/v1/chat/completions", completion("llama3.2"));
    let any = Upstream::serving("/v1/chat/completions", completion("x"));
    let cfg = worker::config(&format!(
        "{}{}",
        worker::openai_provider("local", &local.url("/v1"), r#"["llama3.2"]"#, "", ""),
        worker::openai_provider("vllm", &any.url("/v1"), r#"["*"]"#, "", ""),
    ));
    let w = Worker::start(&cfg, &[]);

    let r = http::post_chat(w.addr, "local/llama3.2", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = local.requests();
    assert_eq!(seen.len(), 1, "the named provider got it");
    assert_eq!(seen[0].json()["model"], "llama3.2");
    assert_eq!(any.request_count(), 0);

    // A `*` provider addressed by name gets the bare model too.
    let r = http::post_chat(w.addr, "vllm/some-model", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(any.requests()[0].json()["model"], "some-model");

    // A slash in a model name that is no provider prefix keeps its meaning: the `*` provider
    // gets the name as it is.
    let r = http::post_chat(w.addr, "meta-llama/Llama-3.1-8B", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(any.requests()[1].json()["model"], "meta-llama/Llama-3.1-8B");
    assert_eq!(local.request_count(), 1);

    // A provider prefix with a model that provider does not serve is not that provider.
    let r = http::post_chat(w.addr, "local/other", false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(any.requests()[2].json()["model"], "local/other");
}

/// `GET /v1/models/{id}` answers one entry of `/v1/models`, or a 404 in the OpenAI format.
fn assert_retrieve(addr: std::net::SocketAddr) {
    for id in ["demo", "org/served-model"] {
        let r = http::get(addr, &format!("/v1/models/{id}")).unwrap();
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        let v = r.json();
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["object"], "model", "{v}");
        assert_eq!(v["owned_by"], "demo", "{v}");
        let list = http::get(addr, "/v1/models").unwrap().json();
        assert!(list["data"].as_array().unwrap().contains(&v), "{list}");
    }
    let r = http::get(addr, "/v1/models/nope").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let v = r.json();
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(r.error_message().contains("nope"), "{v}");
}

const SLASH_MODEL: &str = "[[providers]]\nname = \"demo2\"\nkind = \"mock\"\nmodels = [\"x\"]\n";

#[test]
fn model_retrieve_on_the_front() {
    let cfg = mock_config(1, SLASH_MODEL).replace(
        "models = [\"demo\"]",
        "models = [\"demo\", \"org/served-model\"]",
    );
    let env = TestEnv::new(&cfg);
    let mut run = env.start(&[]);
    assert_retrieve(run.listen);
    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
}

#[test]
fn model_retrieve_on_a_worker() {
    let cfg = worker::config(
        "[[providers]]\nname = \"demo\"\nkind = \"mock\"\nmodels = [\"demo\", \"org/served-model\"]\n",
    );
    let w = Worker::start(&cfg, &[]);
    assert_retrieve(w.addr);
}

/// A `[[providers]]` entry of kind openai whose key variable `var` is unset.
fn keyless(name: &str, var: &str) -> String {
    format!(
        "\n[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key_env = \"{var}\"\nmodels = [\"{name}-m\"]\n"
    )
}

#[test]
fn a_reload_reports_only_the_keys_it_newly_misses() {
    let first = keyless("a", "GW_TEST_UNSET_A_KEY");
    let env = TestEnv::new(&mock_config(2, &first));
    let mut run = env.start(&[]);
    env.write_config(&mock_config(
        2,
        &format!("{first}{}", keyless("b", "GW_TEST_UNSET_B_KEY")),
    ));
    run.guard.signal(Signal::SIGHUP);
    assert!(
        support::process::wait_until(Duration::from_secs(30), || run
            .guard
            .stderr()
            .contains("configuration reloaded")),
        "{}",
        run.guard.stderr()
    );
    // The replaced workers (under the supervisor) stay quiet about it too.
    let r = http::post_chat(run.listen, "b-m", false).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    run.guard.signal(Signal::SIGTERM);
    run.expect_stopped_exit_0();
    let stderr = run.guard.stderr();
    for var in ["GW_TEST_UNSET_A_KEY", "GW_TEST_UNSET_B_KEY"] {
        let n = stderr
            .lines()
            .filter(|l| l.contains(&format!("${var} is not set")))
            .count();
        assert_eq!(n, 1, "${var}:\n{stderr}");
    }
}
