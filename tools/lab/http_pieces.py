#!/usr/bin/env python3
"""Sends HTTP requests on one keep-alive connection, each request in pieces (separate TCP
segments, 100 ms apart), and prints, as JSON, what came back for each: {"status", "body"}, or
{"closed": true} once the server side closed the connection.

  http_pieces.py HOST PORT REQUEST...

A REQUEST is its pieces joined by '|', with \\r and \\n written as escapes, e.g.
  'GET /api/us|ers/1 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'
"""
import codecs
import json
import socket
import sys
import time


def read_response(f):
    line = f.readline()
    if not line:
        return {"closed": True}
    status = int(line.split()[1])
    length = 0
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return {"status": status, "body": f.read(length).decode(errors="replace")}


host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
out = []
for req in sys.argv[3:]:
    try:
        for piece in codecs.decode(req, "unicode_escape").split("|"):
            s.sendall(piece.encode("latin-1"))
            time.sleep(0.1)
        out.append(read_response(f))
    except OSError as e:
        out.append({"error": str(e)})
    if "status" not in out[-1]:
        break
print(json.dumps(out))
