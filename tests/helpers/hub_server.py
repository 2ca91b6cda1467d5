"""Test helper for `gpt2/formats/hub.py`: a stand-in for the Hugging Face Hub on 127.0.0.1, in a thread.

It answers exactly the requests huggingface_hub makes to load a model (found by reading its code and
logging its requests): the file list `GET /api/models/{repo}/tree/{revision}` and, per file,
`HEAD`/`GET /{repo}/resolve/{revision}/{path}` with the headers it insists on (`X-Repo-Commit`, `ETag`,
`Content-Length`). Unknown repositories, revisions and files get the Hub's 404s with its `X-Error-Code`
(RepoNotFound / RevisionNotFound / EntryNotFound), so huggingface_hub raises the same errors as for real.
Every request is recorded; anything else gets a 400 so an unexpected call fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}  # repo id → (commit sha, files)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publish `files` as the `main` branch of `repo_id`; returns the commit hash."""
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = (commit, dict(files))
        return commit

    def fetched(self) -> list[str]:
        """Paths of the file bodies served (GETs of resolve URLs)."""
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | str:
        """(commit, files), or the X-Error-Code to answer with."""
        if repo_id not in self.repos:
            return "RepoNotFound"
        commit, files = self.repos[repo_id]
        if revision not in ("main", commit):
            return "RevisionNotFound"
        return commit, files

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, code: str, head: bool, commit: str | None = None) -> None:
                headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
                if commit:
                    headers["X-Repo-Commit"] = commit
                self._send(404, json.dumps({"error": code}).encode(), headers, head)

            def _serve(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if tree and not head:
                    found = hub._lookup(tree.group(1), tree.group(2))
                    if isinstance(found, str):
                        return self._error(found, head)
                    _, files = found
                    listing = [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                        }
                        for name, data in sorted(files.items())
                    ]
                    return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
                if resolve:
                    found = hub._lookup(resolve.group(1), resolve.group(2))
                    if isinstance(found, str):
                        return self._error(found, head)
                    commit, files = found
                    name = resolve.group(3)
                    if name not in files:
                        return self._error("EntryNotFound", head, commit)
                    data = files[name]
                    headers = {
                        "X-Repo-Commit": commit,
                        "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                        "Accept-Ranges": "bytes",
                        "Content-Type": "application/octet-stream",
                    }
                    return self._send(200, data, headers, head)
                self._send(
                    400, b"unexpected request", {"X-Error-Message": f"unexpected {self.command} {path}"}, head
                )

            def do_GET(self) -> None:
                self._serve(head=False)

            def do_HEAD(self) -> None:
                self._serve(head=True)

        return Handler
