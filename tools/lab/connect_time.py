#!/usr/bin/env python3
"""TCP connect latency: COUNT connections to HOST:PORT one after another, each closed at once.

  connect_time.py HOST PORT [COUNT]

Prints JSON: connects made, failures, and the connect() times' p50/p90/p99 in microseconds (the
handshake's round trip through whatever is between: a kube-proxy's rules, sluice).
"""
import json
import socket
import sys
import time


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    times, failed = [], 0
    for _ in range(count):
        s = socket.socket(af, socket.SOCK_STREAM)
        s.settimeout(2)
        # no TIME_WAIT on our side: the next connect may reuse nothing of this one
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        t0 = time.perf_counter_ns()
        try:
            s.connect((host, port))
            times.append((time.perf_counter_ns() - t0) / 1000)
        except OSError:
            failed += 1
        finally:
            s.close()
    times.sort()
    q = lambda p: round(times[min(len(times) - 1, int(p * len(times)))], 1) if times else None
    print(json.dumps({"connects": len(times), "failed": failed,
                      "connect_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}}))


if __name__ == "__main__":
    main()
