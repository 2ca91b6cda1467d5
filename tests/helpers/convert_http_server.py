"""Test helper for `convert/download.py`: a real HTTP server on 127.0.0.1 (port 0) in a thread.

It serves files from memory under `/gpt-2/models/<size>/<file>` like OpenAI's bucket, answers Range
requests with 206 + Content-Range, answers unknown paths with a 404 and an XML body (like Azure's
`BlobNotFound`), records every request's Range header, and can misbehave on demand: cut the connection
after N bytes, or fail with an HTTP status a given number of times.
"""

from __future__ import annotations

import re
import socket
import threading

from helpers.local_http import LocalServer, QuietHandler


class _FileHandler(QuietHandler):
    owner: FileServer

    def do_GET(self) -> None:
        server, path = self.owner, self.path
        rng = self.headers.get("Range")
        with server._lock:
            server.requests.append((path, rng))
        status = server._take(server.fail, path)
        if status is not None:
            return self.send(status, b"<Error>try again</Error>", {"Content-Type": "application/xml"})
        data = server.files.get(path)
        if data is None:
            body = b'<?xml version="1.0"?><Error><Code>BlobNotFound</Code></Error>'
            return self.send(404, body, {"Content-Type": "application/xml"})
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                return self.send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = server._take(server.cut_after, path)
        if cut is not None:
            # Promise the whole body, send part of it, then drop the connection.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class FileServer(LocalServer):
    handler = _FileHandler

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cut_after: dict[str, tuple[int, int]] = {}  # path → (bytes to send, times left)
        self.fail: dict[str, tuple[int, int]] = {}  # path → (HTTP status, times left)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.url}/gpt-2"

    def add_model(self, size: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.files[f"/gpt-2/models/{size}/{name}"] = data

    def path(self, size: str, name: str) -> str:
        return f"/gpt-2/models/{size}/{name}"

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]

    def _take(self, table: dict[str, tuple[int, int]], path: str) -> int | None:
        with self._lock:
            if path in table and table[path][1] > 0:
                value, left = table[path]
                table[path] = (value, left - 1)
                return value
        return None
