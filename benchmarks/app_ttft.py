"""Time to first token through the app's API, against the model's own, for a 20-token prompt.

    python -m benchmarks.app_ttft [--rounds 7] [--layers 12]

Serves app.py on 127.0.0.1 with random 124M-shaped weights (the Space's step source: the batching
scheduler), calls `/generate` with gradio_client, and stamps the first streamed update. The model's own
time to first token (prefill of the same prompt + the first greedy pick) is timed in the same process,
alternating with the API calls; the table shows medians and their difference (the app's overhead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gpt2 import GPT2, GPT2Config, load_tokenizer, save_model
from gpt2.fast import runner_for
from gpt2.tokenizer import PACKAGED_BPE_DIR

PROMPT = "The quick brown fox jumps over the lazy dog while the farmer watches from the old red barn at dawn"


def model_ttft(model: GPT2, ids: list[int]) -> float:
    runner = runner_for(model)
    with torch.inference_mode():
        t0 = time.perf_counter()
        cache = runner.new_cache(max_len=len(ids) + 16)
        int(runner.prefill(torch.tensor([ids]), cache)[0].argmax())
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bpe-dir", default=os.environ.get("GPT2_BPE_DIR") or str(PACKAGED_BPE_DIR))
    args = ap.parse_args()
    os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    torch.set_num_threads(args.threads)
    from gradio_client import Client

    import app  # imported late: it builds on the environment variables above

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp)
        torch.manual_seed(0)
        save_model(GPT2(GPT2Config(n_layer=args.layers)), weights / "gpt2-bench.safetensors", name="bench")
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copy(Path(args.bpe_dir) / name, weights / name)
        registry = app.ModelRegistry.from_path(weights)
        model = registry.get(registry.default)
        ids = load_tokenizer(weights).encode(PROMPT)
        step_source, concurrency = app.batching_step_source()
        demo = app.build_demo(registry, step_source=step_source, concurrency=concurrency)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _, url, _ = demo.launch(
            server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
        )
        try:
            client = Client(url, verbose=False)
            api, own = [], []
            for rnd in range(args.rounds + 1):  # round 0 warms both paths up
                t0 = time.perf_counter()
                job = client.submit(PROMPT, max_new_tokens=8, temperature=0, api_name="/generate")
                for update in job:
                    if update:
                        first = time.perf_counter() - t0
                        break
                for _ in job:  # drain the rest
                    pass
                m = model_ttft(model, ids)
                if rnd:
                    api.append(first * 1000)
                    own.append(m * 1000)
        finally:
            demo.close()
    a, o = statistics.median(api), statistics.median(own)
    print(f"prompt {len(ids)} tokens, {args.layers} layers, {args.threads} threads, median of {args.rounds}")
    print("| path | TTFT ms |\n|---|---|")
    print(f"| model (prefill + first pick) | {o:.1f} |\n| app API (/generate, gradio_client) | {a:.1f} |")
    print(f"| app overhead | {a - o:.1f} |")


if __name__ == "__main__":
    main()
