"""What the stand-in HTTP servers (`hub_server`, `convert_http_server`) share: a threaded server on
127.0.0.1 at a free port, started and stopped with `with`, and a request handler that answers quietly."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-response is what some tests do on purpose


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive, as real servers), no request log in the test output; `owner` is the
    `LocalServer` whose state the answers come from."""

    protocol_version = "HTTP/1.1"
    server: _QuietServer

    @property
    def owner(self) -> LocalServer:
        return self.server.owner

    def log_message(self, *args: object) -> None:
        pass

    def send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        """One whole answer; for a HEAD request (`head`) the headers alone, Content-Length included."""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class LocalServer:
    """Serves `handler` (a `QuietHandler` subclass) on 127.0.0.1 at a port chosen when it is made; `with`
    (or start/stop) runs it in a daemon thread. Once stopped, nothing listens at `url`: a dead endpoint."""

    handler: type[QuietHandler]

    def __init__(self) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), self.handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
