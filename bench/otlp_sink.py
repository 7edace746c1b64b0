#!/usr/bin/env python3
"""A minimal OTLP/HTTP sink for bench/otel.sh: answers 200 to every POST /v1/traces on
127.0.0.1 (a free port, written to ADDR_FILE), and keeps `requests N bytes B` in COUNT_FILE.
Usage: otlp_sink.py ADDR_FILE COUNT_FILE"""
import http.server
import sys
import threading

addr_file, count_file = sys.argv[1], sys.argv[2]
lock = threading.Lock()
seen = {"requests": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        ok = self.path == "/v1/traces"
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
        if ok:
            with lock:
                seen["requests"] += 1
                seen["bytes"] += n
                with open(count_file, "w") as f:
                    f.write(f"requests {seen['requests']} bytes {seen['bytes']}\n")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
with open(count_file, "w") as f:
    f.write("requests 0 bytes 0\n")
with open(addr_file, "w") as f:
    f.write(f"127.0.0.1:{server.server_address[1]}\n")
server.serve_forever()
