"""Test helper for `gpt2/formats/hub.py` and `convert/publish.py`: a stand-in for the Hugging Face Hub on
127.0.0.1, in a thread.

It answers exactly the requests huggingface_hub makes to load a model (found by reading its code and
logging its requests): the file list `GET /api/models/{repo}/tree/{revision}` and, per file,
`HEAD`/`GET /{repo}/resolve/{revision}/{path}` with the headers it insists on (`X-Repo-Commit`, `ETag`,
`Content-Length`). Unknown repositories, revisions and files get the Hub's 404s with its `X-Error-Code`
(RepoNotFound / RevisionNotFound / EntryNotFound), so huggingface_hub raises the same errors as for real.

And the requests `create_repo`, `create_commit` and `delete_repo` make (huggingface_hub 2.4's
`hf_api.py` and `_commit_api.py`): `POST /api/repos/create` (409 if the repository exists; a new one starts
with a `.gitattributes`, as on the Hub), `POST /api/validate-yaml` (for a README.md), `POST
/api/models/{repo}/preupload/{revision}` (answered "regular" for every file, so contents travel inline
in the commit, base64, never through LFS), `POST /api/models/{repo}/commit/{revision}` (ndjson; applied
whole, as the Hub does, then served for download like any repository) and `DELETE /api/repos/delete`.
Those need an `Authorization: Bearer` header (else 401). `fail[step] = status` makes a step answer that
HTTP status instead ("create", "preupload", "commit", "delete").
Every request is recorded; anything else gets a 400 so an unexpected call fails loudly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.parse import unquote, urlsplit

from helpers.local_http import LocalServer, QuietHandler


class _HubHandler(QuietHandler):
    """Routes each request to the part of the Hub's API it belongs to: reads (GET/HEAD) to `_tree` and
    `_resolve`, writes (POST/DELETE) through `_write`'s checks to `_answer`."""

    owner: FakeHub

    def do_GET(self) -> None:
        self._read(head=False)

    def do_HEAD(self) -> None:
        self._read(head=True)

    def do_POST(self) -> None:
        self._write()

    def do_DELETE(self) -> None:
        self._write()

    def _path(self) -> str:
        path = unquote(urlsplit(self.path).path)
        self.owner.requests.append((self.command, path))
        return path

    def _error(self, code: str, head: bool, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self.send(404, json.dumps({"error": code}).encode(), headers, head)

    def _read(self, head: bool) -> None:
        path = self._path()
        tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if tree and not head:
            return self._tree(tree.group(1), tree.group(2))
        if resolve:
            return self._resolve(*resolve.groups(), head=head)
        self.send(400, b"unexpected request", {"X-Error-Message": f"unexpected {self.command} {path}"}, head)

    def _tree(self, repo_id: str, revision: str) -> None:
        """The file list of a revision."""
        found = self.owner._lookup(repo_id, revision)
        if isinstance(found, str):
            return self._error(found, head=False)
        _, files = found
        listing = [
            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for name, data in sorted(files.items())
        ]
        self.send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        """One file of a revision (its headers alone for HEAD)."""
        found = self.owner._lookup(repo_id, revision)
        if isinstance(found, str):
            return self._error(found, head)
        commit, files = found
        if name not in files:
            return self._error("EntryNotFound", head, commit)
        data = files[name]
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        self.send(200, data, headers, head)

    def _write(self) -> None:
        """The write API: one JSON answer per request, or the failure a test asked for."""
        path = self._path()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        step = _WRITES.get((self.command, path))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/main", path)
        if api and self.command == "POST":
            step = api.group(2)
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if step is None:
            status, answer = 400, {"error": f"unexpected {self.command} {path}"}
        elif step in self.owner.fail:
            status, answer = self.owner.fail[step], {"error": f"{step} failed (told to)"}
        elif not token and step != "validate-yaml":
            status, answer = 401, {"error": "Invalid credentials in Authorization header"}
        else:
            self.owner.tokens.append(token)
            status, answer = self._answer(step, api.group(1) if api else None, body)
        headers = {"Content-Type": "application/json"}
        if status >= 400:
            headers["X-Error-Message"] = answer["error"]
        self.send(status, json.dumps(answer).encode(), headers)

    def _answer(self, step: str, repo_id: str | None, body: bytes) -> tuple[int, dict]:
        hub = self.owner
        if step == "validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if step == "create":
            return hub._create(json.loads(body))
        if step == "delete":
            payload = json.loads(body)
            gone = hub.repos.pop(f"{payload.get('organization')}/{payload.get('name')}", None)
            return (200, {}) if gone else (404, {"error": "RepoNotFound"})
        if step == "preupload":
            files = json.loads(body)["files"]
            return 200, {
                "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            }
        return hub._commit(repo_id, body)


# The write requests at fixed paths → the step they are (`FakeHub.fail` names steps).
_WRITES = {
    ("POST", "/api/repos/create"): "create",
    ("POST", "/api/validate-yaml"): "validate-yaml",
    ("DELETE", "/api/repos/delete"): "delete",
}


class FakeHub(LocalServer):
    handler = _HubHandler

    def __init__(self) -> None:
        super().__init__()
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}  # repo id → (commit sha, files)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.fail: dict[str, int] = {}  # write step → HTTP status to answer instead
        self.created: dict[str, dict] = {}  # repo id → the create_repo payload (visibility, ...)
        self.commits: list[tuple[str, str]] = []  # (repo id, commit summary) of every applied commit
        self.tokens: list[str] = []  # the bearer token of every write request

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publish `files` as the `main` branch of `repo_id`; returns the commit hash."""
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = (commit, dict(files))
        return commit

    def fetched(self) -> list[str]:
        """Paths of the file bodies served (GETs of resolve URLs)."""
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def _create(self, payload: dict) -> tuple[int, dict]:
        repo_id = f"{payload.get('organization')}/{payload.get('name')}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        self.add_repo(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        self.created[repo_id] = payload
        return 200, {"url": f"{self.url}/{repo_id}"}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, dict]:
        """Apply an ndjson commit whole (or not at all): only inline ("regular") files are accepted."""
        if repo_id not in self.repos:
            return 404, {"error": "RepoNotFound"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, ops = lines[0], lines[1:]
        if header.get("key") != "header" or any(op.get("key") != "file" for op in ops):
            return 400, {"error": f"unexpected commit operations {[op.get('key') for op in lines]}"}
        files = dict(self.repos[repo_id][1])
        for op in ops:
            files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
        commit = self.add_repo(repo_id, files)
        self.commits.append((repo_id, header["value"]["summary"]))
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{commit}", "commitOid": commit}

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | str:
        """(commit, files), or the X-Error-Code to answer with."""
        if repo_id not in self.repos:
            return "RepoNotFound"
        commit, files = self.repos[repo_id]
        if revision not in ("main", commit):
            return "RevisionNotFound"
        return commit, files


def point_hub_at(monkeypatch, url: str, cache, offline: bool = False) -> None:
    """What HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE would have set, had they been set before import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
