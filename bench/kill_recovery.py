"""Worker-kill recovery for bench/run.sh: start a supervisor, SIGKILL one worker, and time
(a) until the admin status no longer shows it serving (detection) and (b) until a new pid is IDLE
on the same port (replacement). Prints two Markdown table rows (medians of 5 kills)."""

import json, os, signal, socket, statistics, subprocess, sys, tempfile, time

sup, cfg = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp()
# A private runtime dir so this supervisor does not collide with the benchmark's.
import re
text = re.sub(r'runtime_dir = ".*"', f'runtime_dir = "{tmp}/run"', open(cfg).read())
path = os.path.join(tmp, "gateway.toml")
open(path, "w").write(text)
p = subprocess.Popen([sup, "start", "-c", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    ready = json.loads(p.stdout.readline())
    sock_path = ready["admin_socket"]

    def workers():
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        s.sendall(b"GET /workers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        body = data.split(b"\r\n\r\n", 1)[1]
        if b"transfer-encoding: chunked" in data.split(b"\r\n\r\n", 1)[0].lower():
            out, rest = b"", body
            while rest:
                n, rest = rest.split(b"\r\n", 1)
                n = int(n, 16)
                if n == 0:
                    break
                out, rest = out + rest[:n], rest[n + 2:]
            body = out
        return json.loads(body)["workers"]

    detect, replace = [], []
    for _ in range(5):
        w = workers()[0]
        old = w["pid"]
        t = time.monotonic()
        os.kill(old, signal.SIGKILL)
        detected = None
        while True:
            w = workers()[0]
            now = time.monotonic()
            if detected is None and (w["pid"] != old or w["state"] not in ("IDLE", "BUSY", "BUSY_STREAMING")):
                detected = now - t
            if w["pid"] not in (old, 0) and w["state"] == "IDLE":
                replace.append(now - t)
                break
            if now - t > 30:
                raise SystemExit("worker not replaced within 30 s")
            time.sleep(0.001)
        detect.append(detected)
        time.sleep(1.5)  # past the backoff reset, so each kill is a first restart
    print(f"| worker kill -> detected (median of 5) | {statistics.median(detect) * 1000:.1f} ms |")
    print(f"| worker kill -> new worker IDLE (median of 5) | {statistics.median(replace) * 1000:.1f} ms |")
finally:
    p.send_signal(signal.SIGTERM)
    p.wait(30)
