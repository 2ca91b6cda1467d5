"""What the benchmarks share: the machine they run on, our model and its peers, and the app's HTTP API.

- The run's facts (`environment`): the CPU's model and vector flags (from `gpt2.engine.cpu`), its memory
  read bandwidth (measured once per run), cores and threads, torch / transformers / llama.cpp versions,
  the git commit, the date and the exact command. Every header and every results file carries them.
- Our model and its peers, on the same weights: ours built from a weights file (`build_ours`) and driven
  through `GPT2.step` (`ours_stepper`); Hugging Face transformers filled through the library's own
  mapping (`hf_from_ours`); llama.cpp (`benchmarks.llamacpp`). `PAIRS` says which llama.cpp type races
  which of our precisions.
- Memory: `rss_mb` reads a process's resident set from /proc (peak, anonymous, file-backed).
- The app: `running_app` starts `app.py` on 127.0.0.1, and `call_api` is the one client of its plain
  HTTP event-stream API; `Clients` makes such calls at the same instant from a process of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import multiprocessing as mp
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import torch

from gpt2 import GPT2, PRECISIONS, GPT2Config, load_model, save_model
from gpt2.engine import cpu
from gpt2.engine.abi import MARCH_ENV
from gpt2.formats.hf import config_to_hf, ours_to_hf
from gpt2.tokenizer import ENCODER_JSON, PACKAGED_BPE_DIR, VOCAB_BPE

ROOT = Path(__file__).resolve().parents[1]
# Each of our precisions races the llama.cpp types closest to it in bytes per weight; the first type
# listed for a precision is its peer in the ratios. Only precisions that `gpt2.PRECISIONS` has are run.
PAIRS = (
    ("fp32", "f32"),
    ("bf16", "f16"),
    ("f16", "f16"),
    ("int8", "q8_0"),
    ("int4", "q4_0"),
    ("int4", "q4_K_M"),
)
LLAMA_PREFIX = "llama-"


def variants() -> list[str]:
    """Every variant the decode race knows, in the order its tables list them: HF, our PyTorch path,
    then each of our precisions next to its llama.cpp types (llama.cpp's rows are measured whether or not
    we have the precision they pair with; ours appear as `gpt2.PRECISIONS` has them)."""
    order = ["hf", "plain"]
    for precision, gguf_type in PAIRS:
        order += [precision] if precision in PRECISIONS else []
        order.append(LLAMA_PREFIX + gguf_type)
    return list(dict.fromkeys([*order, *PRECISIONS]))


def peer_of(precision: str) -> str | None:
    """The llama.cpp variant our `precision` is compared with (None when it has none)."""
    return next((LLAMA_PREFIX + t for p, t in PAIRS if p == precision), None)


# ---------------------------------------------------------------------------------------------- the run


@functools.cache
def read_bandwidth_gbs(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """The best of `repeats` streaming reads of a buffer far larger than the caches, with torch's
    threads: the memory bandwidth a decode step can use here. Measured once per process."""
    buf = torch.ones(n_bytes // 4)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        best = max(best, n_bytes / (time.perf_counter() - t0) / 1e9)
    return best


def git_commit() -> str:
    """The checkout's commit; "+dirty" when code differs from it (results files and docs do not count)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
                ":!*.md",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if changed else "")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(module: str, argv: list[str], threads: int) -> dict:
    """The facts a result depends on, for headers and results files (see the module docstring)."""
    from benchmarks import llamacpp

    llama = None if llamacpp.unavailable_reason() else package_version("llama-cpp-python")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        # the engine's -march where it is not the CPU's own (the AVX2 build on an AVX-512 CPU), as typed
        "command": shlex.join([*_march_prefix(), "python", "-m", module, *argv]),
        "cpu": cpu.model_name(),
        "flags": cpu.vector_flags(),
        "cores": os.cpu_count(),
        "threads": threads,
        "bandwidth_gbs": round(read_bandwidth_gbs(), 1),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "llama_cpp": llama,
        "llama_cpp_features": llamacpp.system_info() if llama else None,
    }


def _march_prefix() -> list[str]:
    march = os.environ.get(MARCH_ENV)
    return [f"{MARCH_ENV}={march}"] if march else []


def start(module: str, argv: list[str] | None, parse_args: Callable) -> tuple[argparse.Namespace, dict]:
    """A benchmark's first steps: its arguments (the command line's by default), torch on `--threads`,
    and the facts of the run (`environment`), printed as every benchmark's header."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(module, argv, args.threads)
    print(describe_environment(env))
    return args, env


def describe_environment(env: dict) -> str:
    """The header every benchmark prints: the machine, the versions, the commit."""
    flags = " ".join(env["flags"]) or "no AVX2/AVX-512"
    llama = f", llama-cpp-python {env['llama_cpp']}" if env["llama_cpp"] else ""
    lines = [
        f"CPU: {env['cpu']} · flags: {flags} · {env['cores']} cores, {env['threads']} threads ·"
        f" read bandwidth {env['bandwidth_gbs']} GB/s",
        f"torch {env['torch']}, transformers {env['transformers']}{llama} · commit {env['commit']} ·"
        f" {env['date']}",
    ]
    if env["llama_cpp_features"]:
        lines.append(f"llama.cpp built for: {env['llama_cpp_features']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- models


def random_weights(path: Path, config: GPT2Config, seed: int = 0) -> Path:
    """Random weights at `config`'s shapes, saved as the converter saves a model (speed does not depend
    on the values; GPT-2's own initialisation keeps them realistically scaled)."""
    torch.manual_seed(seed)
    save_model(GPT2(config).eval(), path, name=path.stem.removeprefix("gpt2-"))
    return path


def weights_folder(tmp: Path, size: str, weights: str | None = None, layers: int | None = None) -> Path:
    """`weights` if given, else random weights of `size`'s shapes (`layers` blocks if given: a smoke run)
    in `tmp` with GPT-2's BPE files, as the converter leaves a weights/ folder for the app."""
    if weights:
        return Path(weights)
    config = GPT2Config.from_name(size)
    random_weights(tmp / f"gpt2-{size}.safetensors", replace(config, n_layer=layers or config.n_layer))
    for name in (ENCODER_JSON, VOCAB_BPE):
        shutil.copy(PACKAGED_BPE_DIR / name, tmp / name)
    return tmp


def build_ours(path: str | os.PathLike[str], precision: str) -> GPT2:
    """Our fast model in `precision` from a weights file: the one place a benchmark builds it (`--sizes`
    times this call as the load time). The native engine is bound where it runs that precision."""
    return load_model(path, precision=precision)


def ours_stepper(runner: GPT2, max_len: int) -> Callable[[list[int]], torch.Tensor]:
    """A fresh KV cache for `max_len` positions, then `step(tokens)` runs the tokens after what is cached
    (a prompt, or one token) through `GPT2.step` and returns the last position's fp32 logits `(n_vocab,)`.
    Call it under `torch.inference_mode()`. `benchmarks.llamacpp.llama_stepper` is the same for llama.cpp."""
    cache = runner.new_cache(1, max_len=max_len)
    filled = [0]

    def step(tokens: list[int]) -> torch.Tensor:
        n, start = len(tokens), filled[0]
        positions = torch.arange(start, start + n)
        logits = runner.step(torch.tensor(tokens), positions, torch.zeros(n, dtype=torch.long), cache, n - 1)
        filled[0] = start + n
        return logits[0]

    return step


def greedy(
    new_stepper: Callable[[int], Callable], prompt: list[int], n_new: int
) -> tuple[float, float, float, list[int]]:
    """(time to first token s, decode tok/s, CPU ms/token, tokens) of greedy prefill + one-token steps;
    the speed counts the tokens after the first."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        step = new_stepper(len(prompt) + n_new)
        token = int(step(prompt).argmax())
        t1, c1 = time.perf_counter(), time.process_time()
        tokens = [token]
        for _ in range(n_new - 1):
            token = int(step([token]).argmax())
            tokens.append(token)
        t2, c2 = time.perf_counter(), time.process_time()
    return t1 - t0, (n_new - 1) / (t2 - t1), (c2 - c1) * 1000 / (n_new - 1), tokens


def hf_from_ours(model: GPT2):
    """transformers' GPT2LMHeadModel holding our model's weights, through `gpt2.formats.hf` (the
    converter's export), with transformers' default (sdpa) attention: the fair race."""
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(HFConfig(**config_to_hf(model.config))).eval()
    hf.config._attn_implementation = "sdpa"
    state = ours_to_hf({k: v.detach().float() for k, v in model.state_dict().items()}, model.config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"transformers' GPT-2 does not match the export: {missing} {unexpected}")
    hf.tie_weights()
    return hf


# ---------------------------------------------------------------------------------------------- memory


def rss_mb(pid: int | str = "self") -> dict[str, float]:
    """A process's resident memory in MB from /proc/<pid>/status: now (VmRSS), its peak (VmHWM), and
    now split into anonymous (heap: tensors) and file-backed (mapped files, libraries) pages."""
    keys = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[keys[key]] = int(value.split()[0]) / 1024
    return out


def reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) afresh from what it holds now (Linux's clear_refs "5")."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- the app

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_loopback(url: str) -> str:
    """`url` with a trailing slash, if it is on this machine (a benchmark never loads someone's server)."""
    if urlparse(url).hostname not in LOOPBACK:
        raise SystemExit(f"refusing to benchmark {url!r}: only 127.0.0.1/localhost")
    return url if url.endswith("/") else url + "/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "gradio_api/info", timeout=2).ok:
                return
        time.sleep(0.25)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


@contextlib.contextmanager
def running_app(weights: str | os.PathLike[str], env: dict[str, str], timeout: float = 300) -> Iterator:
    """`app.py --weights WEIGHTS` in its own process on a free 127.0.0.1 port, ready: yields (url, process);
    stopped on exit."""
    port = free_port()
    env = {**os.environ, **env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    env.update(NO_PROXY="localhost,127.0.0.1", GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, str(ROOT / "app.py"), "--weights", str(weights)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, proc, timeout)
        yield url, proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End a server process: asked first, killed if it has not gone within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class ApiCall:
    """What one call to the app's API gave: outcome "ok" (output: the final output), "busy" (every slot
    and queue place taken, said so), "error" or "timeout" (output: a one-line message)."""

    outcome: str
    output: object
    seconds: float
    ttft: float | None = None  # seconds to the first update holding any text


def _has_text(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and any(_has_text(v) for v in value)


def call_api(url: str, api: str, data: list, timeout: float) -> ApiCall:
    """One call to the endpoint `/API` over Gradio's plain REST API, as a remote program makes it:
    POST /gradio_api/call/API, then read the event stream it names to the end."""
    import requests

    start = time.perf_counter()
    ttft = None

    def done(outcome: str, output: object) -> ApiCall:
        return ApiCall(outcome, output, time.perf_counter() - start, ttft)

    try:
        r = requests.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=timeout)
        if r.status_code != 200:
            busy = r.status_code == 503 and "full" in r.text.lower()
            return done("busy" if busy else "error", f"HTTP {r.status_code}: {r.text[:200]}")
        event, event_url = None, f"{url}gradio_api/call/{api}/{r.json()['event_id']}"
        with requests.get(event_url, stream=True, timeout=timeout) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    payload = json.loads(line[5:])
                    if event == "error":
                        message = str(payload.get("error") if isinstance(payload, dict) else payload)
                        return done("busy" if "busy" in message.lower() else "error", message[:200])
                    if ttft is None and _has_text(payload):
                        ttft = time.perf_counter() - start
                    if event == "complete":
                        return done("ok", payload[0])
        return done("error", "the event stream ended without a result")
    except requests.Timeout:
        return done("timeout", f"no answer within {timeout:.0f} s")
    except requests.RequestException as exc:
        return done("error", f"{type(exc).__name__}: {exc}"[:200])


# The clients: a process of their own, as remote programs are (the benchmark's own threads would take the
# same cores' time as the app's), making calls at the same instant, each from a thread.


def client_main(url: str, conn) -> None:
    """Serve a benchmark's jobs: (api, [inputs, ...]) -> those calls made at the same time, each from its
    own thread, answered as {"wall": seconds, "calls": [ApiCall, ...]}. `api` is one endpoint for every
    call, or a list: each call's own."""
    while (job := conn.recv()) is not None:
        api, inputs = job
        apis = [api] * len(inputs) if isinstance(api, str) else api
        calls: list = [None] * len(inputs)

        def call(i: int, apis: list = apis, inputs: list = inputs, calls: list = calls) -> None:
            calls[i] = call_api(url, apis[i], inputs[i], timeout=600)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn.send({"wall": time.perf_counter() - start, "calls": calls})


class Clients:
    """The client process, seen from the benchmark."""

    def __init__(self, url: str) -> None:
        self.conn, child = mp.get_context("spawn").Pipe()
        self.process = mp.get_context("spawn").Process(target=client_main, args=(url, child), daemon=True)
        self.process.start()

    def call(self, api: str | list[str], inputs: list[list]) -> dict:
        self.conn.send((api, inputs))
        answer = self.conn.recv()
        failed = [c for c in answer["calls"] if c.outcome != "ok"]
        if failed:
            raise SystemExit(f"a call failed: {failed[0].outcome}: {failed[0].output}")
        return answer

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=10)
