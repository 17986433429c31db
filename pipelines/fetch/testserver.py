"""A scriptable media server on 127.0.0.1, for the fetch tests, the benchmark and offline demos.

Serves files from memory; each path can be scripted with a list of behaviours used
in turn (the last one repeats): ``ok``, ``404`` / ``403`` / ``410`` / ``429`` / ``500`` /
``503``, ``slow`` (stall ``slow_s`` seconds before the body), ``truncate`` (announce the
full Content-Length, send half, close), ``redirect:<path>``. ``hits`` counts requests
per path, so a test can prove nothing was fetched twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) drops connections when many downloads start at once; the
    # kernel resends a dropped SYN after 1 s, past a short client timeout: an attempt the test
    # never scripted.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out and hang up are part of the script


class MediaServer:
    def __init__(self, delay: float = 0.0, slow_s: float = 5.0):
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, list[str]] = {}
        self.hits: Counter[str] = Counter()
        self.delay = delay  # seconds before every response (a far-away server)
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def add(self, path: str, data: bytes, script: list[str] | None = None) -> str:
        self.files[path] = data
        if script:
            self.scripts[path] = list(script)
        return self.url(path)

    def script(self, path: str, behaviours: list[str]) -> None:
        self.scripts[path] = list(behaviours)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def _next(self, path: str) -> str:
        with self._lock:
            self.hits[path] += 1
            s = self.scripts.get(path)
            if not s:
                return "ok"
            return s.pop(0) if len(s) > 1 else s[0]

    def start(self) -> MediaServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                how = server._next(path)
                if server.delay:
                    time.sleep(server.delay)
                data = server.files.get(path)
                if how.startswith("redirect:"):
                    self.send_response(302)
                    self.send_header("Location", how.split(":", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data is None or how.isdigit():
                    code = int(how) if how.isdigit() else 404
                    self.send_response(code)
                    if code in (429, 503):
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4" if path.endswith(".mp4") else "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                if how == "truncate":
                    self.send_header("Connection", "close")
                self.end_headers()
                if not body:
                    return
                if how == "slow":
                    time.sleep(server.slow_s)
                try:
                    self.wfile.write(data[: len(data) // 2] if how == "truncate" else data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if how == "truncate":
                    self.close_connection = True

            def do_GET(self) -> None:
                self._serve(True)

            def do_HEAD(self) -> None:
                self._serve(False)

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
