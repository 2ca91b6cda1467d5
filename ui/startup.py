"""`python app.py` up to where Gradio is needed: the arguments, the models (and whether there is anything
to serve at all), the first model's load and the engine's build. `start` runs before app.py imports
Gradio, which is half of the start-up, and leaves the load and the build running while it imports;
`finish` waits for them before the page is built.

Without weights it ends within seconds, with a paragraph on how to get them and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

try:  # Hugging Face ZeroGPU: present on Spaces that use it.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

from gpt2.engine import build
from gpt2.engine.precision import PRECISIONS
from gpt2.serving import AUTO, Loading, MemoryBudget, ModelRegistry, NoWeightsError, default_weights

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
NO_WEIGHTS_STATUS = 2  # exit status when there are no weights to serve (and how to get them was said)
NO_WEIGHTS = (
    "GPT-2's weights are not here: {why}. The app takes them in one of three ways: convert OpenAI's "
    "checkpoint once with `python -m convert --model 124M` (it writes weights/, which `python app.py` then "
    "serves); point --weights (or GPT2_WEIGHTS) at a converted .safetensors file or folder; or load them "
    "from the Hugging Face Hub with --weights hf://openai-community/gpt2 (the default while weights/ is "
    "empty), which needs the network once: later runs load from the cache. HF_HUB_OFFLINE=1 makes the "
    "Hub loader use only that cache, which is under HF_HOME (or wherever HF_HUB_CACHE says)."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Serve the GPT-2 demo (host/port: GRADIO_SERVER_NAME/PORT).")
    ap.add_argument(
        "--weights",
        default=default_weights(DEFAULT_WEIGHTS),
        help="comma-separated: converted .safetensors files or folders, hf://OWNER/REPO[@REVISION][/FILE] "
        "(GPT2_WEIGHTS; default: weights/ if it holds a model, else OpenAI's four sizes from the Hub)",
    )
    ap.add_argument("--share", action="store_true", help="also open a public *.gradio.live link")
    ap.add_argument(
        "--precision",
        choices=(AUTO, *PRECISIONS),
        default=os.environ.get("GPT2_PRECISION", AUTO),
        help=f"CPU weights of every model: {', '.join(PRECISIONS)} (fp32 is exact; fewer bytes per token "
        "are faster, see README 'Speed'), or auto (the default): per size, what fits and stays fast "
        "(GPT2_PRECISION)",
    )
    mcp_env = os.environ.get("GPT2_MCP", "").lower() in ("1", "true", "yes")
    ap.add_argument("--mcp", action="store_true", default=mcp_env, help="also serve the API as MCP tools")
    return ap.parse_args(argv)


def max_batch_from_env() -> int:
    """GPT2_MAX_BATCH (default 8): requests decoded together; 1 = one at a time. ZeroGPU: 1 (its GPU
    exists only inside each handler call, not in the scheduler's worker thread)."""
    value = os.environ.get("GPT2_MAX_BATCH", "8").strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"GPT2_MAX_BATCH must be a whole number >= 1, got {value!r}")
    return 1 if spaces is not None else int(value)


def no_weights(why: str) -> None:
    """Stop with the paragraph that says how to get weights (exit status 2)."""
    text = NO_WEIGHTS.format(why=why.rstrip("."))
    paragraph = textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)  # paths stay whole
    print(paragraph, file=sys.stderr, flush=True)
    sys.exit(NO_WEIGHTS_STATUS)


def build_engine() -> threading.Thread | None:
    """Compile the native engine for this CPU now, beside loading the first model, if it is not in the
    cache: otherwise the first model's load would wait for it, and the first visitor for that."""
    if not build.will_compile():
        return None

    def compile_now() -> None:
        start = time.perf_counter()
        build.library()
        print(f"decode engine: built in {time.perf_counter() - start:.1f} s", flush=True)

    print(f"decode engine: compiling it for this CPU (once; kept in {build.cache_dir()})", flush=True)
    thread = threading.Thread(target=compile_now, name="build engine", daemon=True)
    thread.start()
    return thread


@dataclass
class Started:
    args: argparse.Namespace
    registry: ModelRegistry
    max_batch: int
    first: Loading | None  # the default model's load (None: loaded already)
    engine: threading.Thread | None  # the engine's build (None: built already, or not built here)
    clock: float  # when the start-up began (perf_counter)


def start(argv: list[str] | None = None) -> Started:
    """Read the arguments, list the models, start building the engine and loading the first model; return
    once the load has found its weights (stop, saying why, if it cannot)."""
    clock = time.perf_counter()
    args = parse_args(argv)
    if args.mcp and importlib.util.find_spec("mcp") is None:
        sys.exit("--mcp needs Gradio's MCP extra: pip install 'gradio[mcp]==6.31.0'")
    try:
        max_batch = max_batch_from_env()
        budget = MemoryBudget(slots=max_batch)
        registry = ModelRegistry.from_path(args.weights, precision=args.precision, budget=budget)
    except NoWeightsError:
        no_weights(f"no converted model in {args.weights}")
    except (ValueError, RuntimeError) as exc:
        sys.exit(str(exc))
    print(f"models on {registry.device} (the first loads now, the others when first chosen):", flush=True)
    print("\n".join(registry.describe_models()), flush=True)
    engine = build_engine()
    first = registry.load(registry.default)
    if first is not None:
        print(first.line(), flush=True)
        while first.stage == "starting" and not first.wait(0.02):  # until its files are found (or not)
            pass
        if first.finished.is_set():
            _check(first)
    return Started(args, registry, max_batch, first, engine, clock)


def _check(first: Loading) -> None:
    if first.unreachable:
        no_weights(str(first.error))
    if first.error is not None:
        sys.exit(first.line())


def finish(started: Started) -> None:
    """Wait for the first model and the engine; say which engine decodes, and when the start-up was ready."""
    if started.first is not None:
        started.first.wait()
        _check(started.first)
    if started.engine is not None:
        started.engine.join()
    registry = started.registry
    print(f"decode engine: {registry.engine_line()} · batch: {started.max_batch}", flush=True)
    took = time.perf_counter() - started.clock
    print(f"{registry.label(registry.default)}: ready {took:.1f} s after start-up began", flush=True)
