"""Publish an export folder to the Hugging Face Hub: `python -m convert … --push hf://OWNER/REPO`.

Three steps, each named when it fails: find a token (`HF_TOKEN`, else the login cache of `hf auth login`),
create the repository (or find it exists), upload every file in **one** commit. The Hub applies a commit
whole or not at all (large files travel before it and only appear once it lands), so a failed upload
never leaves a repository holding part of an export. A repository that this run created and could not
fill is deleted again: it holds nothing of the user's, and leaving it would leave an empty model under the
name, with the visibility of this attempt. A repository that existed before is left exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt2.formats.hub import HubError, parse_spec

from .common import ConvertError

STEPS = ("find a token", "create the repository", "upload")


class PublishError(ConvertError):
    """A push that failed: the message names the step and what state the repository was left in."""


@dataclass(frozen=True)
class Published:
    repo_id: str
    url: str  # the commit's page on the Hub
    created: bool  # whether this run created the repository

    def lines(self, private: bool) -> list[str]:
        out = [f"pushed to {self.url}"]
        if not self.created and private:
            out.append("  note: the repository already existed; its visibility was left as it was")
        return out


def repo_of(spec: str) -> str:
    """OWNER/REPO from `hf://OWNER/REPO`; a revision or a file path is refused (an export is a whole repo)."""
    try:
        s = parse_spec(spec)
    except HubError as exc:
        raise ConvertError(f"--push: {exc}") from None
    if s.revision or s.filename:
        raise ConvertError(f"--push takes hf://OWNER/REPO (the export is committed to main), got {spec!r}")
    return s.repo_id


def push_folder(folder: Path, repo_id: str, *, private: bool, message: str) -> Published:
    """Upload every file of `folder` to `repo_id` in one commit (creating the repository if needed)."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    def fail(step: str, why: str) -> PublishError:
        n = STEPS.index(step) + 1
        return PublishError(f"push to hf://{repo_id} failed at step {n}/{len(STEPS)} ({step}): {why}")

    token = get_token()
    if not token:
        raise fail(STEPS[0], "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)")
    api = HfApi()  # a fresh one reads HF_ENDPOINT now, not when huggingface_hub was imported
    created = _create(api, repo_id, token, private, lambda why: fail(STEPS[1], why))
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    try:
        info = api.create_commit(repo_id, ops, commit_message=message, token=token)
    except BaseException as exc:
        state = _clean_up(api, repo_id, token) if created else "the repository is as it was before"
        if not isinstance(exc, Exception):  # Ctrl-C: clean up as above, then stop as asked
            raise
        raise fail(STEPS[2], f"{_why(exc, api.endpoint)}; {state}") from None
    return Published(repo_id, info.commit_url, created)


def _create(api, repo_id: str, token: str, private: bool, fail) -> bool:
    """True if this call created the repository, False if it already existed."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=False)
        return True
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 409:  # it exists: commit into it
            return False
        raise fail(_why(exc, api.endpoint)) from None
    except Exception as exc:
        raise fail(_why(exc, api.endpoint)) from None


def _clean_up(api, repo_id: str, token: str) -> str:
    try:
        api.delete_repo(repo_id, token=token)
    except Exception as exc:
        return (
            f"the repository this run created is still there, empty, and could not be deleted "
            f"({_why(exc, api.endpoint)}): delete it on the Hub or push again"
        )
    return "the repository this run created was deleted again (nothing was published)"


def _why(exc: BaseException, endpoint: str) -> str:
    """One line for a huggingface_hub failure: the HTTP status and the Hub's own message, if any."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        said = exc.response.headers.get("X-Error-Message") or _first_line(exc)
        hint = " (does the token have write access there?)" if exc.response.status_code in (401, 403) else ""
        return f"{endpoint} answered HTTP {exc.response.status_code}: {said}{hint}"
    return f"{type(exc).__name__} talking to {endpoint}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return line if len(line) <= 300 else line[:297] + "..."
