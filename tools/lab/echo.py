#!/usr/bin/env python3
"""Lab helpers for long-lived TCP connections.

  echo.py serve NAME PORT         line echo server answering "NAME: <line>" (threads, any family)
  echo.py talk HOST PORT SECONDS  one connection, a line every 50 ms; prints JSON
                                  {"sent", "echoed", "backends": [...], "error"}
"""
import json
import socket
import socketserver
import sys
import time


def serve(name, port):
    class H(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(f"{name}: ".encode() + line)

    class S(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True

    S(("::", port), H).serve_forever()


def talk(host, port, seconds):
    out = {"sent": 0, "echoed": 0, "backends": [], "error": None}
    try:
        s = socket.create_connection((host, port), timeout=3)
        f = s.makefile("rb")
        end = time.time() + seconds
        while time.time() < end:
            msg = f"line {out['sent']}\n".encode()
            s.sendall(msg)
            out["sent"] += 1
            reply = f.readline()
            if not reply.endswith(msg):
                raise RuntimeError(f"bad echo {reply!r}")
            out["echoed"] += 1
            name = reply.split(b":")[0].decode()
            if name not in out["backends"]:
                out["backends"].append(name)
            time.sleep(0.05)
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["error"] = repr(e)
    print(json.dumps(out), flush=True)


if sys.argv[1] == "serve":
    serve(sys.argv[2], int(sys.argv[3]))
else:
    talk(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
