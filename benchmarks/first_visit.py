"""The first visitor's wait: from `python app.py` to the first token streamed through the HTTP API.

    python -m benchmarks.first_visit                  # 124M shapes, 3 rounds
    python -m benchmarks.first_visit --save           # ... and write benchmarks/results/first_visit.json
    python -m benchmarks.first_visit --quick          # a tiny model, one round (the tests' smoke run)

A fresh machine runs `python app.py` with no arguments: nothing converted in `weights/`, so the app takes
GPT-2 124M from the Hugging Face Hub. Here a stand-in Hub on 127.0.0.1 (the one the tests use) serves
random weights at the size's shapes in Hugging Face's layout under that name, and a first start, not
timed, fills a temporary HF_HOME, as a Space's build (`preload_from_hub`) or an earlier run would. Then,
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


def stand_in_hub():
    """The tests' stand-in Hub (tests/helpers/hub_server.py), shared rather than copied."""
    sys.path.insert(0, str(common.ROOT / "tests"))
    from helpers.hub_server import FakeHub

    return FakeHub()


def hf_files(config: GPT2Config, folder: Path) -> dict[str, bytes]:
    """Random weights at `config`'s shapes as Hugging Face stores GPT-2 (config.json, model.safetensors)."""
    torch.manual_seed(0)
    common.hf_from_ours(GPT2(config).eval()).save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def fresh_checkout(tmp: Path) -> Path:
    """app.py and ui/ beside an empty weights/ folder: `python app.py` where nothing was converted."""
    root = tmp / "app"
    root.mkdir()
    shutil.copy(common.ROOT / "app.py", root / "app.py")
    shutil.copytree(common.ROOT / "ui", root / "ui", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "weights").mkdir()
    return root


def app_env(hub_url: str, hf_home: Path, engine_cache: Path, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GPT2_", "GRADIO_"))
    }
    env.update(
        PYTHONPATH=str(common.ROOT),
        PYTHONUNBUFFERED="1",
        HF_HOME=str(hf_home),
        HF_ENDPOINT=hub_url,
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
    """The fill start, then `rounds` of (engine cache empty, then warm): every start's numbers."""
    with tempfile.TemporaryDirectory(prefix="first-visit-") as tmp_name, stand_in_hub() as hub:
        tmp = Path(tmp_name)
        hub.add_repo(REPO, hf_files(config, tmp / "repo"))
        root, hf_home = fresh_checkout(tmp), tmp / "hf-home"

        def start(kind: str, cache: Path) -> dict:
            run = first_visit(root, app_env(hub.url, hf_home, cache, common.free_port()), timeout)
            page, token = run["page_s"], run["first_token_s"]
            print(f"  {kind}: page after {page:.2f} s, first token after {token:.2f} s", flush=True)
            return run

        fill = start("filling HF_HOME (download from 127.0.0.1, not counted)", tmp / "engine-fill")
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for r in range(rounds):
            cache = tmp / f"engine-{r}"  # empty for the cold start, built by it for the warm one
            for kind in KINDS:
                runs[kind].append(start(KINDS[kind], cache))
    check_compiles(runs, fill)
    return {"fill": fill, **{kind: summary(runs[kind]) for kind in KINDS}}


def check_compiles(runs: dict[str, list[dict]], fill: dict) -> None:
    """Each kind measured what it says: a cold start compiled the engine (wherever the fill start did:
    without a compiler neither does), a warm one never."""
    if any(run["compiled"] for run in runs["warm"]):
        raise SystemExit("a start with a warm engine cache compiled the engine: the cache was not used")
    if fill["compiled"] and not all(run["compiled"] for run in runs["cold"]):
        raise SystemExit("a start with an empty engine cache did not compile the engine")


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
            "hub": f"a stand-in Hub on 127.0.0.1 as {REPO}",
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
