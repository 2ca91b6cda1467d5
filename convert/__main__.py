"""`python -m convert`: make a `weights/gpt2-<name>.safetensors` the app can serve.

    python -m convert --model 124M                  # download OpenAI's checkpoint, convert (needs TensorFlow)
    python -m convert --source-dir models/124M      # an OpenAI-layout folder already on disk
    python -m convert --from-pth model_and_optimizer.pth --size 124M --name my-finetune
    python -m convert --from-hf path/to/distilgpt2  # a Hugging Face GPT-2 folder

User errors end with one `error: ...` line and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Only the standard library at import time, so `--help` answers at once; torch, requests and (for the
# TensorFlow route only) TensorFlow are imported when a conversion actually runs.
SIZES = ("124M", "355M", "774M", "1558M")  # = download.KNOWN_SIZES (a test checks)
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # = common.DTYPES (a test checks)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "weights"


def default_cache_dir() -> Path:
    """Where `--model` downloads go without `--cache-dir`: $GPT2_CACHE_DIR, else the user's cache."""
    if os.environ.get("GPT2_CACHE_DIR"):
        return Path(os.environ["GPT2_CACHE_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "gpt2-handbuilt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert GPT-2 weights (OpenAI's TF checkpoints, the book's .pth, Hugging Face folders) "
        "into the app's weights/ format.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=SIZES, help="download OpenAI's checkpoint of this size")
    src.add_argument("--source-dir", type=Path, metavar="DIR", help="an OpenAI-layout folder already on disk")
    src.add_argument(
        "--from-pth", type=Path, metavar="FILE", help="a state dict saved by the book's GPTModel"
    )
    src.add_argument("--from-hf", type=Path, metavar="DIR", help="a Hugging Face GPT-2 folder")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="output folder (default: weights/)"
    )
    p.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32", help="stored precision (default float32)"
    )
    p.add_argument(
        "--name", help="model name shown in the app (letters, digits, -_.); default: size or file name"
    )
    p.add_argument(
        "--bpe-dir",
        type=Path,
        metavar="DIR",
        help="copy GPT-2's encoder.json/vocab.bpe from here (default: the download, the source folder, "
        "else the copy packaged in gpt2/bpe/)",
    )
    g = p.add_argument_group("--from-pth")
    g.add_argument("--size", choices=SIZES, help="the GPT-2 size the checkpoint was built as")
    g.add_argument(
        "--n-head", type=int, help="attention heads, for a custom size (other dimensions are read)"
    )
    d = p.add_argument_group("--model (download)")
    d.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"downloads go to <DIR>/<size>/ (default: {default_cache_dir()}); if given, files are kept",
    )
    d.add_argument(
        "--keep-download", action="store_true", help="keep the downloaded checkpoint after converting"
    )
    d.add_argument("--base-url", help="mirror of OpenAI's gpt-2 bucket (also $GPT2_BASE_URL)")
    d.add_argument(
        "--retries", type=int, default=4, help="retries per file after a transient failure (default 4)"
    )
    d.add_argument(
        "--retry-backoff", type=float, default=1.0, metavar="S", help="first retry delay in seconds"
    )
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _matching_size(config) -> str | None:
    from gpt2 import SIZES, GPT2Config

    return next((name for name, dims in SIZES.items() if GPT2Config(**dims) == config), None)


def run(args: argparse.Namespace) -> int:
    from .common import ConvertError, default_name, validate_name, write_output
    from .download import FILES

    if args.retries < 0 or args.retry_backoff < 0:
        raise ConvertError("--retries and --retry-backoff must not be negative")
    if args.name is not None:
        validate_name(args.name)
    if args.n_head is not None and args.n_head <= 0:
        raise ConvertError("--n-head must be a positive integer")
    if args.from_pth is None and (args.size or args.n_head):
        raise ConvertError("--size and --n-head apply to --from-pth only")
    if args.bpe_dir is not None and not args.bpe_dir.is_dir():
        raise ConvertError(f"--bpe-dir {args.bpe_dir} is not a directory")
    downloaded: Path | None = None
    bpe_dir = args.bpe_dir

    if args.model is not None:
        from .download import download_model
        from .tf_checkpoint import load_tf_model

        cache_root = args.cache_dir or default_cache_dir()
        downloaded = cache_root / args.model
        print(f"downloading GPT-2 {args.model} into {downloaded}", file=sys.stderr)
        download_model(
            args.model,
            downloaded,
            url=args.base_url,
            retries=args.retries,
            backoff=args.retry_backoff,
            progress=not args.no_progress,
        )
        print("reading the TensorFlow checkpoint", file=sys.stderr)
        model = load_tf_model(downloaded)
        name = args.name or args.model
        source = f"OpenAI GPT-2 {args.model} (TensorFlow checkpoint)"
        bpe_dir = bpe_dir or downloaded
    elif args.source_dir is not None:
        from .tf_checkpoint import load_tf_model

        model = load_tf_model(args.source_dir)
        name = args.name or default_name(_matching_size(model.config), args.source_dir.resolve().name)
        source = f"OpenAI-layout TensorFlow checkpoint {args.source_dir.resolve().name}"
        if bpe_dir is None and all((args.source_dir / f).is_file() for f in ("encoder.json", "vocab.bpe")):
            bpe_dir = args.source_dir
    elif args.from_pth is not None:
        from .from_pth import load_pth_model

        if args.size is None and args.n_head is None:
            raise ConvertError("--from-pth needs --size (124M, 355M, 774M, 1558M) or --n-head")
        model = load_pth_model(args.from_pth, size=args.size, n_head=args.n_head)
        name = args.name or default_name(args.from_pth.stem)
        source = f"PyTorch state dict {args.from_pth.name}"
    else:
        from .from_hf import load_hf_model

        model = load_hf_model(args.from_hf)
        name = args.name or default_name(args.from_hf.resolve().name)
        source = f"Hugging Face GPT-2 folder {args.from_hf.resolve().name}"

    if name is None:
        raise ConvertError("cannot derive a valid model name from the input: pass --name")
    if bpe_dir is None:  # the routes whose input carries no tokenizer files: the package's verified copy
        from gpt2.tokenizer import PACKAGED_BPE_DIR

        bpe_dir = PACKAGED_BPE_DIR
    summary = write_output(model, args.out, name=name, dtype=args.dtype, source=source, bpe_dir=bpe_dir)
    print("\n".join(summary.lines()))
    if downloaded is not None and not (args.keep_download or args.cache_dir):
        # The checkpoint is no longer needed (the summary's file is the model now); keep anything else.
        for fname in FILES:
            (downloaded / fname).unlink(missing_ok=True)
        if not any(downloaded.iterdir()):
            downloaded.rmdir()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .common import ConvertError

    try:
        return run(args)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(
            "error: interrupted (nothing was written; a partial download resumes on the next run)",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # disk full, permissions: the user's environment, not a bug
        print(f"error: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
