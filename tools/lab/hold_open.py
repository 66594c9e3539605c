#!/usr/bin/env python3
"""Long-lived HTTP/1.1 keep-alive connections, each asking GET / again and again.

  hold_open.py HOST PORT CONNS SECONDS [INTERVAL]

Every connection is opened once and never reopened: it sends a request every INTERVAL seconds
(0.1 by default) for SECONDS, each answered in full before the next. Prints JSON:
  connections  how many were opened
  answered     requests answered, in all and per connection
  errors       the first error of each connection that had one (it ends that connection)
  max_wait_ms  the longest wait for one answer (an appliance restart shows as a wait, a lost
               connection as an error)
"""
import json
import socket
import sys
import threading
import time

# a restart holds packets for up to the appliance's restart hold (5 s by default) and TCP
# retransmits after it; an answer later than this is an error
TIMEOUT = 15.0


def read_answer(f):
    length = None
    status = f.readline()
    if not status.startswith(b"HTTP/1.1 200"):
        raise OSError(f"bad status line {status!r}")
    while True:
        line = f.readline()
        if not line:
            raise OSError("connection closed in the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise OSError("no Content-Length")
    body = f.read(length)
    if len(body) != length:
        raise OSError("connection closed in the body")


def talk(host, port, seconds, interval, out, i):
    answered, error, max_wait = 0, None, 0.0
    try:
        s = socket.create_connection((host, port), timeout=TIMEOUT)
        f = s.makefile("rb")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            read_answer(f)
            max_wait = max(max_wait, time.monotonic() - t0)
            answered += 1
            time.sleep(interval)
        s.close()
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal here
        error = f"connection {i} after {answered} answers: {type(e).__name__}: {e}"
    out[i] = (answered, error, max_wait)


def main():
    host, port, conns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
    out = [None] * conns
    threads = [
        threading.Thread(target=talk, args=(host, port, seconds, interval, out, i))
        for i in range(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({
        "connections": conns,
        "answered": sum(o[0] for o in out),
        "per_connection": [o[0] for o in out],
        "errors": [o[1] for o in out if o[1]],
        "max_wait_ms": round(max(o[2] for o in out) * 1000),
    }))


if __name__ == "__main__":
    main()
