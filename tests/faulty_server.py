"""A loopback HTTP server that misbehaves on purpose, one way per URL prefix.

http://127.0.0.1:PORT/<mode>/v1/chat/completions, where mode is one of MODES. Every accepted
connection is counted per mode, so tests can assert how many tries a client made.
"""

from __future__ import annotations

import collections
import json
import socket
import socketserver
import threading
import time

CHUNK = {"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
COMPLETION = {"id": "chatcmpl-f", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}


def _response(status: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n".encode() + body


def _sse_head() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
        while len(body) < length:
            body += sock.recv(65536)
        mode = path.strip("/").split("/")[0]
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            server.hits[mode] += 1  # type: ignore[attr-defined]
            hit = server.hits[mode]  # type: ignore[attr-defined]
        stream = b'"stream":true' in body.replace(b" ", b"")
        getattr(self, "mode_" + mode.replace("-", "_"))(sock, stream, hit)

    def _reset(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    def mode_ok(self, sock, stream, hit):
        if stream:
            sock.sendall(_sse_head() + _event(CHUNK) + b"data: [DONE]\n\n")
        else:
            sock.sendall(_response("200 OK", json.dumps(COMPLETION).encode()))

    def mode_reset_before_headers(self, sock, stream, hit):
        self._reset(sock)

    def mode_reset_mid_stream(self, sock, stream, hit):
        sock.sendall(_sse_head() + _event(CHUNK))
        time.sleep(0.05)
        self._reset(sock)

    def mode_no_done(self, sock, stream, hit):
        sock.sendall(_sse_head() + _event(CHUNK) + _event(CHUNK))

    def mode_garbage_sse(self, sock, stream, hit):
        sock.sendall(_sse_head() + _event(CHUNK) + b"data: {this is not json\n\n")

    def mode_slow(self, sock, stream, hit):
        time.sleep(1.5)
        self.mode_ok(sock, stream, hit)

    def mode_rate_limited(self, sock, stream, hit):
        if hit < 3:
            sock.sendall(_response("429 Too Many Requests", b'{"error": {"message": "slow down"}}', extra="Retry-After: 0.2\r\n"))
        else:
            self.mode_ok(sock, stream, hit)

    def mode_always_503(self, sock, stream, hit):
        sock.sendall(_response("503 Service Unavailable", b'{"object": "error", "message": "overloaded", "code": 503}'))

    def mode_html(self, sock, stream, hit):
        sock.sendall(_response("200 OK", b"<html>oops</html>", content_type="text/html"))


class FaultyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/v1"

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens here once the socket closes
