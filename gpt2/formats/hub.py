"""Weights from the Hugging Face Hub: `hf://OWNER/REPO[@REVISION][/FILE]`.

Two kinds of repository load:

* one holding this project's converted `.safetensors` (the `gpt2-handbuilt` metadata, `gpt2.formats.weights`),
  e.g. `hf://me/my-gpt2` when it holds a single weights file, or `hf://me/my-gpt2/gpt2-355M.safetensors`;
* a Hugging Face-format GPT-2 (`config.json` + `model.safetensors`), e.g. `hf://openai-community/gpt2`,
  converted in memory with the same checks and mapping as `python -m convert --from-hf` (gpt2.formats.hf).
  Only safetensors are fetched: never `pytorch_model.bin` (a pickle) nor TensorFlow files.

Everything goes through `huggingface_hub` (installed with Gradio), so its cache, `HF_TOKEN`, `HF_ENDPOINT`
and `HF_HUB_OFFLINE` apply as everywhere else: a model downloaded once loads again with no network.
Every failure is one `HubError` whose message is a single line saying what to do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..config import GPT2Config
from ..engine import prepare
from ..model import GPT2
from .checks import CheckpointError
from .hf import HF_HEAD, config_from_hf, load_hf_file, parse_config_json
from .stream import TensorFile
from .weights import FORMAT, load_model, read_metadata

SCHEME = "hf://"
DEFAULT_REVISION = "main"
# The Hub's own rules for user, organisation and repository names ("--" and ".." are reserved there).
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
# A branch, tag or commit hash. No "/": it would be ambiguous with the file part (use the commit hash of
# a branch whose name has one).
_REVISION_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_FILE_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.+-]{1,200}")
_MAX_MESSAGE = 400
# One quick look before any real request: huggingface_hub retries a refused or timed-out connection with
# backoff (the file list alone took 25 s against a closed port). Unreachable means "use the cache" at once.
PROBE_TIMEOUT_S = 3.0


class HubError(ValueError):
    """Loading from the Hub failed; the message is one line that says why and what to do."""


class HubUnreachable(HubError):
    """The Hub cannot be asked (offline, or no answer) and the local cache does not hold what was asked."""


@dataclass(frozen=True)
class HubSpec:
    repo_id: str  # "OWNER/REPO"
    revision: str | None  # None: the repository's default branch
    filename: str | None  # a path inside the repository, or None to pick the weights by the layout

    def __str__(self) -> str:
        return SCHEME + model_name_of(self)


def is_hub_spec(s: str) -> bool:
    """Whether `s` asks for Hub weights (it may still be malformed: `parse_spec` says how)."""
    return isinstance(s, str) and s.startswith(SCHEME)


def parse_spec(spec: str) -> HubSpec:
    """`hf://OWNER/REPO[@REVISION][/FILE]` → HubSpec, or a HubError naming the part that is wrong."""
    if not is_hub_spec(spec):
        raise HubError(f"{str(spec)[:80]!r} is not a Hub spec: expected hf://OWNER/REPO[@REVISION][/FILE]")
    parts = spec[len(SCHEME) :].split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(
            f"{spec[:120]!r}: expected hf://OWNER/REPO[@REVISION][/FILE], e.g. hf://openai-community/gpt2"
        )
    owner, repo_part, file_parts = parts[0], parts[1], parts[2:]
    repo, _, revision = repo_part.partition("@")
    for what, name in (("owner", owner), ("repository name", repo)):
        if not _NAME_RE.fullmatch(name) or "--" in name or ".." in name:
            raise HubError(
                f"{spec[:120]!r}: invalid {what} {name[:100]!r} (letters, digits, '-', '_', '.'; "
                "at most 96 characters, not starting or ending with '-' or '.')"
            )
    if "@" in repo_part and not _REVISION_RE.fullmatch(revision):
        raise HubError(
            f"{spec[:120]!r}: invalid revision {revision[:100]!r} (a branch, tag or commit hash of letters, "
            "digits, '-', '_', '.'; for a branch with '/' in its name use its commit hash)"
        )
    filename = None
    if file_parts:
        if not all(_FILE_SEGMENT_RE.fullmatch(p) and p not in (".", "..") for p in file_parts):
            raise HubError(
                f"{spec[:120]!r}: invalid file path {'/'.join(file_parts)[:100]!r} inside the repository"
            )
        filename = "/".join(file_parts)
        if not filename.endswith(".safetensors"):
            raise HubError(
                f"{spec[:120]!r}: only .safetensors weights are loaded from the Hub (never pickles), "
                f"got {filename[:100]!r}"
            )
    return HubSpec(f"{owner}/{repo}", revision or None, filename)


def model_name_of(s: HubSpec) -> str:
    return s.repo_id + (f"@{s.revision}" if s.revision else "") + (f"/{s.filename}" if s.filename else "")


def model_name(spec: str) -> str:
    """The display name for the model selector: the spec without `hf://`, e.g. "openai-community/gpt2"."""
    return model_name_of(parse_spec(spec))


def load_hub_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> GPT2:
    """Download (or take from the cache) the weights `spec` names and return the model, its linear layers
    packed into `precision` as the file is read (None: fp32, or a packed file's own). `progress(stage,
    done, total)` hears about the download ("download", bytes) and the loading ("load", bytes)."""
    return load_fetched(fetch(spec, progress), device=device, precision=precision, progress=progress)


@dataclass(frozen=True)
class Fetched:
    """A Hub model's files in the local cache, and what they say before any tensor is read: enough to
    decide its precision and whether it fits in memory."""

    spec: str
    filename: str  # the weights file's path in the repository
    weights: Path  # ... and in the local cache
    file: TensorFile  # the header only, so far
    config: GPT2Config  # an HF-format model's head counted as untied when its file holds one
    stored: str  # the file's own precision: "fp32" unless it is one of ours, packed
    hf_config: dict[str, Any] | None = None  # an HF-format model's parsed config.json
    config_file: str | None = None  # ... and its path in the repository


def fetch(spec: str, progress: Callable[[str, int, int], None] | None = None) -> Fetched:
    """Download (or find in the cache) the files `spec` names; nothing is loaded yet. `progress("download",
    done, total)` hears about the weights file's download."""
    s = parse_spec(spec)
    try:
        return _fetch(s, progress)
    except HubError as exc:
        raise type(exc)(f"{spec}: {exc}") from None
    except CheckpointError as exc:  # a config our GPT2 cannot serve faithfully
        raise HubError(f"{spec}: {_one_line(str(exc))}") from None


def load_fetched(
    fetched: Fetched,
    *,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> GPT2:
    """The model of `fetch`ed files (see `load_hub_model`); `progress("load", done, total)` as it reads."""
    spec = fetched.spec
    fetched.file.progress = None if progress is None else lambda done, total: progress("load", done, total)
    try:
        if fetched.hf_config is None:  # this project's own format
            try:
                model = load_model(
                    fetched.weights, device=device, precision=precision, progress=fetched.file.progress
                )
            except ValueError as exc:
                raise HubError(f"{fetched.filename}: {_one_line(str(exc))}") from None
        else:
            repo = parse_spec(spec).repo_id
            where = dict(config_source=f"{repo}/{fetched.config_file}", source=f"{repo}/{fetched.filename}")
            precision = precision or "fp32"
            model = load_hf_file(fetched.hf_config, fetched.file, precision=precision, **where)
            model = prepare(model.to(device), precision)  # in place, as load_model does: the engine bound
    except HubError as exc:
        raise HubError(f"{spec}: {exc}") from None
    except CheckpointError as exc:  # a tensor our GPT2 cannot serve faithfully
        raise HubError(f"{spec}: {_one_line(str(exc))}") from None
    model.runtime.name = model_name(spec)
    return model


# ----------------------------------------------------------------------------------------------------------


def _fetch(s: HubSpec, progress) -> Fetched:
    online = _reachable()
    if s.filename is not None:
        weights, config = s.filename, None
    else:
        weights, config = _choose_files(s, _list_files(s, online))
    path = _download(s, weights, online, progress)
    try:
        file = TensorFile(path)
    except ValueError as exc:
        raise HubError(_corrupt(weights, exc)) from None
    spec = str(s)
    if file.metadata.get("format") == FORMAT:  # this project's own format: hyper-parameters in the metadata
        try:
            meta = read_metadata(path)
        except ValueError as exc:
            raise HubError(f"{weights}: {_one_line(str(exc))}") from None
        return Fetched(spec, weights, path, file, meta["config"], meta["precision"])
    # Otherwise a Hugging Face-format GPT-2: its config.json sits beside the weights.
    config = config or str(PurePosixPath(weights).parent / "config.json")
    cfg = parse_config_json(_download(s, config, online).read_bytes(), f"{s.repo_id}/{config}")
    untied = HF_HEAD in file.entries  # (an HF file may hold a copy of a tied head: counted as untied)
    ours = config_from_hf(cfg, f"{s.repo_id}/{config}")
    return Fetched(spec, weights, path, file, replace(ours, tied_head=not untied), "fp32", cfg, config)


def _choose_files(s: HubSpec, files: list[str]) -> tuple[str, str | None]:
    """(weights file, HF config file or None) for a spec without FILE, from the repository's file list."""
    if "config.json" in files:  # a Hugging Face model folder
        if "model.safetensors" in files:
            return "model.safetensors", "config.json"
        if "model.safetensors.index.json" in files:
            raise HubError(
                "its weights are sharded (model.safetensors.index.json); GPT-2 checkpoints fit one file: "
                "convert it locally with `python -m convert --from-hf`"
            )
        raise HubError(
            "it has a config.json but no model.safetensors; only safetensors are loaded from the Hub, "
            "never pickled (pytorch_model.bin) or TensorFlow weights"
        )
    ours = [f for f in files if f.endswith(".safetensors")]
    if len(ours) == 1:
        return ours[0], None
    if not ours:
        listed = ", ".join(files[:8]) + (", ..." if len(files) > 8 else "") or "nothing"
        raise HubError(f"no .safetensors weights and no config.json in the repository (it holds {listed})")
    raise HubError(
        f"the repository holds {len(ours)} weights files ({', '.join(ours[:6])}): name one, "
        f"e.g. {SCHEME}{s.repo_id}{'@' + s.revision if s.revision else ''}/{ours[0]}"
    )


def _reachable() -> bool:
    """Whether the Hub answers at all (any HTTP status will do), asked once, quickly; False when offline."""
    from huggingface_hub import constants, get_session, is_offline_mode

    if is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception:  # refused, timed out, no route, bad proxy: all mean "not now"
        return False
    return True


def _list_files(s: HubSpec, online: bool) -> list[str]:
    """The repository's files at the revision: from the Hub, or from the local cache if it cannot be asked."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if online:
        try:
            # A fresh HfApi reads HF_ENDPOINT (huggingface_hub.constants) now, not at import time.
            return HfApi().list_repo_files(s.repo_id, revision=s.revision)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:  # a definite answer from the Hub
            raise HubError(_explain(exc, s, "the file list")) from None
        except Exception as exc:  # a failing Hub: what is cached still loads
            cached = _cached_files(s)
            if cached is None:
                raise HubError(_explain(exc, s, "the file list")) from None
            return cached
    cached = _cached_files(s)
    if cached is None:
        raise HubUnreachable(_not_cached(s, "the file list"))
    return cached


def _cached_files(s: HubSpec) -> list[str] | None:
    """Files of the cached snapshot of the spec's revision (a branch/tag through its ref), if any."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:  # the cache hf_hub_download uses (scan_cache_dir's own default is fixed when it is imported)
        cache = scan_cache_dir(_cache_dir())
    except (CacheNotFound, OSError):
        return None
    revision = s.revision or DEFAULT_REVISION
    for repo in cache.repos:
        if repo.repo_type != "model" or repo.repo_id != s.repo_id:
            continue
        for rev in repo.revisions:
            if rev.commit_hash == revision or revision in rev.refs:
                return sorted(Path(f.file_path).relative_to(rev.snapshot_path).as_posix() for f in rev.files)
    return None


def _download(
    s: HubSpec, filename: str, online: bool = True, progress: Callable[[str, int, int], None] | None = None
) -> Path:
    """One file through huggingface_hub's cache (which also serves it offline once downloaded); its
    progress bar (size, rate, time left) on the terminal as always, and to `progress` as it goes."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                s.repo_id,
                filename,
                revision=s.revision,
                tqdm_class=_reporting(progress),
                local_files_only=not online,
            )
        )
    except LocalEntryNotFoundError:
        raise HubUnreachable(_not_cached(s, filename, online)) from None
    except Exception as exc:  # whatever stopped huggingface_hub is a failed download: say which
        raise HubError(_explain(exc, s, filename)) from None


def _reporting(progress: Callable[[str, int, int], None] | None):
    """huggingface_hub's own progress bar, also reporting each update to `progress` (None: the bar alone)."""
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def update(self, n=1):  # type: ignore[no-untyped-def]
            shown = super().update(n)
            progress("download", int(self.n), int(self.total or 0))
            return shown

    return Reporting


def _corrupt(name: str, exc: BaseException) -> str:
    return f"{name} is not a readable safetensors file (truncated or corrupt upload?): {_one_line(str(exc))}"


def _explain(exc: BaseException, s: HubSpec, what: str) -> str:
    """One line for a huggingface_hub failure: what was asked, what went wrong, what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = _where(s)
    if isinstance(exc, GatedRepoError):
        return f"{s.repo_id} is gated: accept its conditions on the Hub, then set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return f"repository {s.repo_id} not found on {constants.ENDPOINT} (a private one needs HF_TOKEN)"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {s.revision!r} not found in {s.repo_id}"
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return _not_cached(s, what)
    if isinstance(exc, EntryNotFoundError):
        return f"{where} has no file {what!r}"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"{constants.ENDPOINT} answered HTTP {exc.response.status_code} for {what} of {where}"
    why = f"{type(exc).__name__}: {_one_line(str(exc))}"
    return f"fetching {what} of {where} from {constants.ENDPOINT} failed: {why}"


def _not_cached(s: HubSpec, what: str, asked: bool = False) -> str:
    """Why `what` of `s` is not here: offline, or the Hub did not answer, and the cache does not hold it."""
    from huggingface_hub import constants, is_offline_mode

    where = f"{what} of {_where(s)} is not in the local cache ({_cache_dir()})"
    if is_offline_mode():
        return f"HF_HUB_OFFLINE is set and {where}: load it once with network access"
    if asked:  # the Hub answered at first, then not for this file
        return f"{constants.ENDPOINT} stopped answering and {where}: check the network or HF_ENDPOINT"
    return f"cannot reach {constants.ENDPOINT} and {where}: check the network or HF_ENDPOINT"


def _where(s: HubSpec) -> str:
    return f"{s.repo_id}@{s.revision or DEFAULT_REVISION}"


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _one_line(text: Any) -> str:
    """The first non-empty line, shortened: messages from libraries can run to paragraphs."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."
