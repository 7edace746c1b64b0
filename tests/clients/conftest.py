"""Fixtures for the real-SDK tests: the real `supervisor` binary, started with a temporary config,
and a scriptable OpenAI-compatible test upstream (a real HTTP server on 127.0.0.1:0)."""

import json
import os
import pathlib
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("SUPERVISOR_BIN", ROOT / "target" / "debug" / "supervisor"))


class Upstream:
    """Answers /chat/completions from a queue of scripted (status, headers, body) replies, then
    with a fixed completion. Records every request."""

    def __init__(self):
        self.script = []
        self.requests = []
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {}, {"object": "list", "data": [{"id": "up-model", "object": "model", "created": 0, "owned_by": "test"}]})

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with upstream.lock:
                    upstream.requests.append((self.path, dict(self.headers), body))
                    step = upstream.script.pop(0) if upstream.script else None
                if step is not None:
                    return self._send(*step)
                self._send(200, {}, {
                    "id": "chatcmpl-up", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                })

            def _send(self, status, headers, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


CONFIG = """
[server]
listen = "127.0.0.1:0"
auth_token_env = "GW_SDK_TEST_TOKEN"

[pool]
workers = 2
base_port = 0
runtime_dir = "{runtime}"
heartbeat_interval = "200ms"
heartbeat_timeout = "2s"
shutdown_timeout = "5s"

[health]
probe_interval = "0s"

[routing]
max_attempts = 1

[[providers]]
name = "demo"
kind = "mock"
models = ["demo"]

[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
models = ["up-model"]
"""


# Translation tests: one provider per provider API on the strict dialect upstream.
DIALECT_CONFIG = CONFIG.split("[[providers]]")[0] + """
[[providers]]
name = "p-chat"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
models = ["m-chat"]
apis = ["chat"]

[[providers]]
name = "p-resp"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
models = ["m-resp"]
apis = ["responses"]

[[providers]]
name = "p-msg"
kind = "anthropic"
base_url = "http://127.0.0.1:{port}"
models = ["m-msg"]
"""


class Gateway:
    def __init__(self, tmp, upstream, config=CONFIG):
        self.token = "sdk-test-token-1234"
        cfg = tmp / "gateway.toml"
        cfg.write_text(config.format(runtime=tmp / "run", port=upstream.port))
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "GATEWAY_CONFIG")}
        env["GW_SDK_TEST_TOKEN"] = self.token
        env["XDG_STATE_HOME"] = str(tmp / "state")  # the usage ledger stays in the test's directory
        self.proc = subprocess.Popen([str(BIN), "start", "-c", str(cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        ready = self._ready_line(deadline=time.monotonic() + 30)
        self.listen = ready["listen"]
        self.base = f"http://{self.listen}"

    def _ready_line(self, deadline):
        box = {}

        def read():
            for line in self.proc.stdout:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "ready":
                    box["ready"] = ev
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        if "ready" not in box:
            self.stop()
            raise RuntimeError("supervisor not ready:\n" + "".join(self.stderr))
        return box["ready"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, upstream):
    if not BIN.exists():
        pytest.fail(f"{BIN} not built; run cargo build -p supervisor first")
    g = Gateway(tmp_path_factory.mktemp("gw"), upstream)
    yield g
    g.stop()


@pytest.fixture(scope="session")
def dialect_upstream():
    from dialect_upstream import DialectUpstream
    u = DialectUpstream()
    yield u
    u.close()


@pytest.fixture(scope="session")
def dialect_gateway(tmp_path_factory, dialect_upstream):
    if not BIN.exists():
        pytest.fail(f"{BIN} not built; run cargo build -p supervisor first")
    g = Gateway(tmp_path_factory.mktemp("gw-dialects"), dialect_upstream, DIALECT_CONFIG)
    yield g
    g.stop()
