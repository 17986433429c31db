"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3-compatible server.

Each request is forwarded to the upstream server (one connection per request, answered
with ``Connection: close``); then, with probability ``rate``, the client gets a fault
instead of the answer, of a kind drawn from ``kinds``:

- ``slowdown``: ``503 Slow Down`` with S3's ``SlowDown`` error body and ``Retry-After``;
- ``reset``: the headers and half the body, then a TCP reset;
- ``cut_headers``: half of the response headers, then the connection closes;
- ``delay``: the full answer after ``delay_s`` seconds.

It counts requests, bytes sent back and faults by kind, so tests and benchmarks can say
how many requests a job makes per sample and what it survived. Used by the tests and by
``bench/storage_faults.py``; nothing here is mocked: clients speak real HTTP to it.
"""

from __future__ import annotations

import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from urllib.parse import urlparse

KINDS = ("slowdown", "reset", "cut_headers", "delay")
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> int:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return -1
        buf += chunk
    return buf.index(marker) + len(marker)


def _read_request(sock: socket.socket) -> bytes | None:
    """One whole HTTP request (headers + body by Content-Length or chunked encoding)."""
    buf = bytearray()
    end = _read_until(sock, buf, b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    pairs = [line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line]
    headers = {k.strip().lower(): v.strip() for k, v in pairs}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        if _read_until(sock, buf, b"0\r\n\r\n") < 0:
            return None
        return bytes(buf)
    length = int(headers.get("content-length", "0") or 0)
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _close_header(request: bytes) -> bytes:
    head, sep, body = request.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + sep + body


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        rate: float = 0.0,
        kinds: tuple[str, ...] = KINDS,
        seed: int = 0,
        delay_s: float = 2.0,
        retry_after: str = "0",
        methods: tuple[str, ...] | None = None,
    ):
        u = urlparse(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.rate, self.kinds, self.delay_s, self.retry_after = rate, tuple(kinds), delay_s, retry_after
        self.methods = methods  # fault only these HTTP methods (None: all)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by method
        self.targets: Counter[str] = Counter()  # "METHOD /bucket/key" (which calls a job makes)
        self.faults: Counter[str] = Counter()  # by kind
        self.bytes_out = 0
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128  # not 5: a burst of connections must not become faults of its own

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.targets.clear()
            self.faults.clear()
            self.bytes_out = 0

    def _draw(self, method: str) -> str | None:
        with self.lock:
            if (self.methods is None or method in self.methods) and self.rate > 0 and self.rng.random() < self.rate:
                return self.rng.choice(self.kinds)
        return None

    def _serve(self, client: socket.socket) -> None:
        request = _read_request(client)
        if request is None:
            return
        method = request.split(b" ", 1)[0].decode("latin-1")
        with socket.create_connection(self.upstream, timeout=30) as up:
            up.sendall(_close_header(request))
            response = bytearray()
            while chunk := up.recv(65536):
                response += chunk
        fault = self._draw(method)
        with self.lock:
            self.requests[method] += 1
            self.targets[b" ".join(request.split(b" ", 2)[:2]).decode("latin-1")] += 1
            if fault:
                self.faults[fault] += 1
        head_end = response.find(b"\r\n\r\n") + 4
        if fault == "slowdown":
            out = (
                b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nRetry-After: "
                + self.retry_after.encode()
                + b"\r\nContent-Length: "
                + str(len(SLOWDOWN_BODY)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + SLOWDOWN_BODY
            )
            client.sendall(out)
        elif fault == "reset":
            body = len(response) - head_end
            client.sendall(bytes(response[: head_end + body // 2]))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        elif fault == "cut_headers":
            client.sendall(bytes(response[: max(1, head_end // 2)]))
        else:
            if fault == "delay":
                time.sleep(self.delay_s)
            client.sendall(bytes(response))
        with self.lock:
            self.bytes_out += len(response)
