"""POSTs a JSON file exactly COUNT times to URL over CONNS keep-alive connections (one thread
each) and prints the number of failed requests (non-200 or a broken body). Used where the
request count must be exact (bench/path_instr.sh), not for load: its speed does not matter.

Usage: python3 keepalive_post.py URL BODY_FILE CONNS COUNT
With TRACEPARENT set in the environment, every request carries it as its `traceparent`.
"""

import http.client
import os
import sys
import threading
import urllib.parse


def main():
    url, body_file, conns, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    u = urllib.parse.urlsplit(url)
    body = open(body_file, "rb").read()
    headers = {"content-type": "application/json"}
    if os.environ.get("TRACEPARENT"):
        headers["traceparent"] = os.environ["TRACEPARENT"]
    errors = [0] * conns

    def run(i, n):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        for _ in range(n):
            try:
                c.request("POST", u.path, body, headers)
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                c.close()
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        c.close()

    per = [count // conns + (1 if i < count % conns else 0) for i in range(conns)]
    threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(per)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(errors))


if __name__ == "__main__":
    main()
