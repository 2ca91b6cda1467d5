"""The first visitor's wait: from `python app.py` to the first token streamed through the HTTP API.

    python -m benchmarks.first_visit                  # 124M shapes, 3 rounds
    python -m benchmarks.first_visit --save           # ... and write benchmarks/results/first_visit.json
    python -m benchmarks.first_visit --quick          # a tiny model, one round (the tests' smoke run)

A fresh machine runs `python app.py` with no arguments: nothing converted in `weights/`, so the app takes
GPT-2 124M from the Hugging Face Hub. Here random weights at the size's shapes, in Hugging Face's layout,
are put into a temporary HF_HOME under that name (`hf_cache`: huggingface_hub's own cache layout), as a
Space's build (`preload_from_hub`) or an earlier run leaves them, and the app runs with HF_HUB_OFFLINE=1:
it loads from that cache without asking the Hub (online, one round trip to the Hub comes on top). Then,
round by round, the app is started in its own process from a copy of app.py and ui/ beside an empty
weights/ folder (the checkout's own converted models do not count), twice: with an empty engine build
cache (the C engine compiles at start-up, beside the load) and with that cache, now warm. This process
is the visitor: it asks for the page every 50 ms and, as soon as it answers, streams /generate over
plain HTTP. It reports the seconds from starting the process to the page answering and to the first
streamed token, medians over rounds, and checks each start's log: the engine compiled when its cache was
empty, and not when it was warm.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import torch

from benchmarks import common, results
from gpt2 import GPT2, SIZES, GPT2Config

MODULE = "benchmarks.first_visit"
REPO = "openai-community/gpt2"  # what `python app.py` serves first with nothing in weights/
DATA = ["Once upon a time", 8, 1.0, 40, 1.0, 1.0, 1]  # /generate's first inputs; the rest keep defaults
QUICK = GPT2Config(n_ctx=128, n_embd=64, n_head=4, n_layer=2)
POLL_S = 0.05
COMPILING = "decode engine: compiling it for this CPU"  # ui/startup.py's line when it builds the engine
KINDS = results.FIRST_VISIT_KINDS


def hf_cache(config: GPT2Config, hf_home: Path) -> None:
    """Random weights at `config`'s shapes as Hugging Face stores GPT-2 (config.json, model.safetensors), in
    huggingface_hub's cache under HF_HOME as a download leaves them: each file a blob named by its hash,
    linked from the snapshot of a commit that refs/main names."""
    torch.manual_seed(0)
    repo = hf_home / "hub" / ("models--" + REPO.replace("/", "--"))
    staging = repo / "staging"
    common.hf_from_ours(GPT2(config).eval()).save_pretrained(staging)
    files = sorted(p for p in staging.iterdir() if p.is_file())
    commit = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in files:
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        path.rename(repo / "blobs" / blob)
        (repo / "snapshots" / commit / path.name).symlink_to(Path("..", "..", "blobs", blob))
    shutil.rmtree(staging)


def fresh_checkout(tmp: Path) -> Path:
    """app.py and ui/ beside an empty weights/ folder: `python app.py` where nothing was converted."""
    root = tmp / "app"
    root.mkdir()
    shutil.copy(common.ROOT / "app.py", root / "app.py")
    shutil.copytree(common.ROOT / "ui", root / "ui", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "weights").mkdir()
    return root


def app_env(hf_home: Path, engine_cache: Path, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GPT2_", "GRADIO_"))
    }
    env.update(
        PYTHONPATH=str(common.ROOT),
        PYTHONUNBUFFERED="1",
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        GPT2_NATIVE_CACHE=str(engine_cache),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        NO_PROXY="localhost,127.0.0.1",
    )
    return env


def first_visit(root: Path, env: dict[str, str], timeout: float) -> dict:
    """Start `python app.py`, be its first visitor, stop it: seconds to the page and to the first token,
    and whether it compiled the engine."""
    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
    log = root / "app.log"
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=out, stderr=out)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"the app did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(url, timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(POLL_S)
        page = time.perf_counter() - start
        call = common.call_api(url, "generate", DATA, timeout)
        if call.outcome != "ok" or call.ttft is None:
            raise SystemExit(f"/generate failed: {call.outcome}: {call.output}")
        first_token = page + call.ttft
    finally:
        common.stop(proc)
    compiled = COMPILING in log.read_text()
    return {"page_s": round(page, 2), "first_token_s": round(first_token, 2), "compiled": compiled}


def measure(config: GPT2Config, rounds: int, timeout: float) -> dict:
    """`rounds` of (engine cache empty, then warm): every start's numbers."""
    with tempfile.TemporaryDirectory(prefix="first-visit-") as tmp_name:
        tmp = Path(tmp_name)
        root, hf_home = fresh_checkout(tmp), tmp / "hf-home"
        hf_cache(config, hf_home)
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for r in range(rounds):
            cache = tmp / f"engine-{r}"  # empty for the cold start, built by it for the warm one
            for kind in KINDS:
                run = first_visit(root, app_env(hf_home, cache, common.free_port()), timeout)
                page, token = run["page_s"], run["first_token_s"]
                print(
                    f"  {KINDS[kind]}: page after {page:.2f} s, first token after {token:.2f} s", flush=True
                )
                runs[kind].append(run)
    check_compiles(runs)
    return {kind: summary(runs[kind]) for kind in KINDS}


def check_compiles(runs: dict[str, list[dict]]) -> None:
    """Each kind measured what it says: every cold start compiled the engine or none did (no compiler),
    and a warm one never."""
    if any(run["compiled"] for run in runs["warm"]):
        raise SystemExit("a start with a warm engine cache compiled the engine: the cache was not used")
    if len({run["compiled"] for run in runs["cold"]}) > 1:
        raise SystemExit("some starts with an empty engine cache compiled the engine, others did not")


def summary(runs: list[dict]) -> dict:
    return {
        "page_s": round(statistics.median(r["page_s"] for r in runs), 2),
        "first_token_s": round(statistics.median(r["first_token_s"] for r in runs), 2),
        "runs": runs,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="124M", choices=list(SIZES), help="shapes of the random weights")
    p.add_argument("--rounds", type=int, default=3, help="pairs of starts (engine cache empty, then warm)")
    p.add_argument("--quick", action="store_true", help="a 2-layer, 64-wide model and one round (smoke run)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a start may take to stream a token")
    p.add_argument("--save", nargs="?", const="", default=None, metavar="FILE", help=results.SAVE_HELP)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config = QUICK if args.quick else GPT2Config.from_name(args.size)
    rounds = 1 if args.quick else args.rounds
    env = common.environment(MODULE, argv, torch.get_num_threads())
    print(common.describe_environment(env), flush=True)
    model = "a 2-layer, 64-wide model" if args.quick else f"{args.size} shapes"
    record = {
        "benchmark": "first_visit",
        "environment": env,
        "settings": {
            "model": f"{model}, random weights in Hugging Face's layout",
            "hub": f"HF_HOME's cache as {REPO} (HF_HUB_OFFLINE=1)",
            "rounds": rounds,
            "prompt": DATA[0],
            "new_tokens": DATA[1],
            "poll_s": POLL_S,
        },
        "results": measure(config, rounds, args.timeout),
    }
    print(results.render_first_visit(record))
    if args.save is not None:
        print(f"saved {results.save(record, args.save)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
