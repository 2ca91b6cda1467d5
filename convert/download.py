"""Download OpenAI's GPT-2 release files carefully: streamed, resumable, size- and hash-checked.

What other ports get wrong and this must not: an HTTP error page saved as a checkpoint (errors raise
before any file is opened), a truncated file accepted (every file is checked against Content-Length, the
sizes we know, and for `encoder.json`/`vocab.bpe` the SHA-256 that tiktoken pins), and starting over
after an interruption (a `<file>.partial` is resumed with an HTTP Range request). A file only gets its
real name once it is complete.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import requests
from tqdm import tqdm

from gpt2.tokenizer import BPE_FILE_SHA256, sha256_file

from .common import ConvertError

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
BASE_URL_ENV = "GPT2_BASE_URL"
DATA_FILE = "model.ckpt.data-00000-of-00001"
# OpenAI's download order; hparams.json comes before the data file, whose size it determines.
FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    DATA_FILE,
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
_SHARED = {"checkpoint": 77, "encoder.json": 1042301, "vocab.bpe": 456318}
# Sizes of the released files, in bytes. The data file holds float32 weights only: 4 × parameters.
KNOWN_SIZES: dict[str, dict[str, int]] = {
    "124M": {
        **_SHARED,
        "hparams.json": 90,
        DATA_FILE: 497759232,
        "model.ckpt.index": 5215,
        "model.ckpt.meta": 471155,
    },
    "355M": {
        **_SHARED,
        "hparams.json": 91,
        DATA_FILE: 1419292672,
        "model.ckpt.index": 10399,
        "model.ckpt.meta": 926519,
    },
    "774M": {**_SHARED, DATA_FILE: 4 * 774_030_080},
    "1558M": {**_SHARED, DATA_FILE: 4 * 1_557_611_200},
}
CHUNK = 1 << 16
_SIZE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(ConvertError):
    """A download that cannot succeed by retrying (HTTP 404, wrong size, wrong hash)."""


class _Retryable(Exception):
    """A transient failure (connection reset, timeout, HTTP 5xx): try again, resuming."""


def base_url(override: str | None = None) -> str:
    return (override or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def download_file(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Fetch `url` to `dest`, resuming `dest.partial` if an earlier attempt (or run) left one.

    Transient failures are retried `retries` times with exponential backoff starting at `backoff`
    seconds; each retry resumes where the last one stopped.
    """
    dest = Path(dest)
    if dest.is_file() and _complete(dest, expected_size, sha256):
        return dest
    session = session or requests.Session()
    attempt = 0
    while True:
        try:
            _fetch_once(session, url, dest, expected_size, sha256, timeout, progress)
            return dest
        except _Retryable as exc:
            attempt += 1
            if attempt > retries:
                partial = _partial(dest)
                have = partial.stat().st_size if partial.is_file() else 0
                raise DownloadError(
                    f"{url}: {exc}; gave up after {attempt} attempt(s) "
                    f"({have:,} bytes kept in {partial.name}: run again to resume)"
                ) from None
            time.sleep(min(backoff * 2 ** (attempt - 1), 30.0))


def _partial(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _complete(path: Path, expected_size: int | None, sha256: str | None) -> bool:
    if expected_size is not None and path.stat().st_size != expected_size:
        return False
    return sha256 is None or sha256_file(path) == sha256


def _fetch_once(
    session: requests.Session,
    url: str,
    dest: Path,
    expected_size: int | None,
    sha256: str | None,
    timeout: float,
    progress: bool,
) -> None:
    partial = _partial(dest)
    offset = partial.stat().st_size if partial.is_file() else 0
    if expected_size is not None and offset > expected_size:
        partial.unlink()  # longer than the whole file: not a prefix of it
        offset = 0
    # identity: a gzip-encoding server would otherwise make byte counts and Range offsets meaningless.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retryable(f"cannot connect ({type(exc).__name__})") from None
    except requests.RequestException as exc:
        raise DownloadError(f"{url}: {exc}") from None
    with resp:
        if resp.status_code == 416 and offset:
            # Our partial file already reaches the end (or the server's file changed): check, or restart.
            total = _range_total(resp.headers.get("Content-Range", ""))
            if total == offset:
                _finish(partial, dest, url, expected_size, sha256)
                return
            partial.unlink()
            raise _Retryable("server refused to resume; restarting from the beginning")
        mode, offset, total = _resume_or_restart(resp, url, partial, offset)
        if expected_size is not None and total is not None and total != expected_size:
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: the server offers {total:,} bytes but {dest.name} is {expected_size:,} bytes "
                "(a wrong file or a broken mirror)"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_body(resp, partial, mode, offset, total or expected_size, progress)
    size = partial.stat().st_size
    if total is not None and size < total:
        raise _Retryable(f"connection closed after {size:,} of {total:,} bytes")
    _finish(partial, dest, url, expected_size, sha256)


def _resume_or_restart(
    resp: requests.Response, url: str, partial: Path, offset: int
) -> tuple[str, int, int | None]:
    """What an answer to our GET means for the partial file: (open mode, bytes kept, the file's whole
    size if the server says). Errors the server may get over are `_Retryable`; the rest are final."""
    status = resp.status_code
    if status == 429 or status >= 500:
        raise _Retryable(f"HTTP {status} {resp.reason}")
    if status >= 400:
        hint = " (no such file: check the model size and the base URL)" if status == 404 else ""
        raise DownloadError(f"{url}: HTTP {status} {resp.reason}{hint}")
    if status == 206 and offset:
        match = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            partial.unlink()
            raise _Retryable("server answered the resume with the wrong range; restarting")
        return "ab", offset, None if match.group(3) == "*" else int(match.group(3))
    if status == 200:  # the server ignored Range (or none was sent): start over
        length = resp.headers.get("Content-Length")
        return "wb", 0, int(length) if length and length.isdigit() else None
    raise DownloadError(f"{url}: unexpected HTTP {status} {resp.reason}")


def _write_body(
    resp: requests.Response, partial: Path, mode: str, offset: int, total: int | None, progress: bool
) -> None:
    """Stream the answer's body into `partial` (a dropped connection is `_Retryable`: the bytes stay)."""
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=partial.name.removesuffix(".partial"),
        disable=not progress,
    )
    try:
        with open(partial, mode) as f:
            for chunk in resp.iter_content(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise _Retryable(f"connection lost ({type(exc).__name__})") from None
    finally:
        bar.close()


def _range_total(content_range: str) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", content_range)
    return int(match.group(1)) if match else None


def _finish(partial: Path, dest: Path, url: str, expected_size: int | None, sha256: str | None) -> None:
    size = partial.stat().st_size
    if expected_size is not None and size != expected_size:
        partial.unlink()
        raise DownloadError(f"{url}: received {size:,} bytes, but {dest.name} is {expected_size:,} bytes")
    if sha256 is not None:
        actual = sha256_file(partial)
        if actual != sha256:
            partial.unlink()
            raise DownloadError(f"{url}: SHA-256 {actual} does not match GPT-2's {dest.name} ({sha256})")
    os.replace(partial, dest)


def download_model(
    size: str,
    dest_dir: str | os.PathLike[str],
    *,
    url: str | None = None,
    known_sizes: dict[str, int] | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch OpenAI's seven files for `size` from `<base>/models/<size>/` into `dest_dir`.

    `known_sizes` defaults to the released sizes for `size`; the data file's size is in any case
    checked against 4 bytes × the parameter count that the downloaded `hparams.json` describes.
    """
    if not _SIZE_RE.fullmatch(size):
        raise ConvertError(f"invalid model size {size!r}")
    dest_dir = Path(dest_dir)
    known = dict(KNOWN_SIZES.get(size, {}) if known_sizes is None else known_sizes)
    root = f"{base_url(url)}/models/{size}"
    with requests.Session() as session:
        for fname in FILES:
            download_file(
                f"{root}/{fname}",
                dest_dir / fname,
                expected_size=known.get(fname),
                sha256=BPE_FILE_SHA256.get(fname),
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=progress,
                session=session,
            )
            if fname == "hparams.json":
                _check_data_size(dest_dir / fname, known, size)
    return dest_dir


def _check_data_size(hparams_path: Path, known: dict[str, int], size: str) -> None:
    """The data file is float32 weights only, so hparams.json fixes its size to 4 × parameters."""
    from .tf_checkpoint import read_hparams  # TF-free: only parses JSON

    try:
        params = read_hparams(hparams_path.parent).num_parameters()
    except ConvertError:
        hparams_path.unlink()  # a bad file must not count as downloaded on the next run
        raise
    if DATA_FILE in known and known[DATA_FILE] != 4 * params:
        hparams_path.unlink()
        raise DownloadError(
            f"{hparams_path} describes a model of {params:,} parameters, not OpenAI's {size} "
            f"({known[DATA_FILE] // 4:,}); the mirror serves the wrong files"
        )
    known.setdefault(DATA_FILE, 4 * params)
