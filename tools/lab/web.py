#!/usr/bin/env python3
"""The lab backends' HTTP server: HTTP/1.1 with keep-alive, every method.

  web.py NAME PORT

  GET / (or /index.html)  -> "hello from backend NAME"
  any other request       -> "NAME METHOD PATH (N bytes)" (the body it read)

Logs one line per request on stderr in http.server's format (peer first), which the tests read
to see which backend got what, and that a request L7 policy refused never arrived.
"""
import http.server
import socket
import sys


def main(name, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "GET" and self.path in ("/", "/index.html"):
                text = f"hello from backend {name}\n"
            else:
                text = f"{name} {self.command} {self.path} ({len(body)} bytes)\n"
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                # the client asked to close: say so (wrk counts a silent close as an error)
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = answer

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        daemon_threads = True
        # socketserver's default listen backlog is 5: a burst of connects overflows it and the
        # kernel drops SYNs (ListenDrops), which measures the server, not the path to it
        request_queue_size = 1024

        def server_bind(self):
            # both families on one socket, as `python3 -m http.server --bind ::` does
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    Server(("::", port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
