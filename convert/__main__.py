"""`python -m convert`: make a `weights/gpt2-<name>.safetensors` the app can serve.

    python -m convert --model 124M                  # download OpenAI's checkpoint, convert (needs TensorFlow)
    python -m convert --source-dir models/124M      # an OpenAI-layout folder already on disk
    python -m convert --from-pth model_and_optimizer.pth --size 124M --name my-finetune
    python -m convert --from-hf path/to/distilgpt2  # a Hugging Face GPT-2 folder
    python -m convert --model 774M --precision int8 # packed for serving: loads without an fp32 copy

Any of them (or `--from-weights weights/gpt2-124M.safetensors`, a file made earlier) can leave in the Hub's
GPT-2 layout instead, for transformers, vLLM or TGI, and be published:

    python -m convert --from-weights weights/gpt2-124M.safetensors --to-hf exports/gpt2-124M
    python -m convert --from-pth model.pth --size 124M --push hf://me/my-finetune --private

User errors end with one `error: ...` line and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        "into the app's weights/ format, or export them in the Hub's GPT-2 layout (--to-hf, --push).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=SIZES, help="download OpenAI's checkpoint of this size")
    src.add_argument("--source-dir", type=Path, metavar="DIR", help="an OpenAI-layout folder already on disk")
    src.add_argument(
        "--from-pth", type=Path, metavar="FILE", help="a state dict saved by the book's GPTModel"
    )
    src.add_argument("--from-hf", type=Path, metavar="DIR", help="a Hugging Face GPT-2 folder")
    src.add_argument(
        "--from-weights",
        type=Path,
        metavar="FILE",
        help="a file this converter wrote (gpt2-<name>.safetensors)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: weights/)")
    p.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32", help="stored precision (default float32)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        metavar="NAME",
        help="pack the linear layers for serving, e.g. int8 (see gpt2.PRECISIONS): a smaller file that the "
        "app and gpt2.load_model load as it is, never in fp32 (default fp32: plain tensors)",
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
    e = p.add_argument_group("export to the Hub's GPT-2 layout (transformers, vLLM, TGI) instead of weights/")
    e.add_argument(
        "--to-hf",
        type=Path,
        metavar="DIR",
        help="write config.json, model.safetensors, tokenizer files and a model card into DIR (new or empty)",
    )
    e.add_argument(
        "--push",
        metavar="hf://OWNER/REPO",
        help="upload the export to the Hub in one commit (token: $HF_TOKEN or `hf auth login`)",
    )
    e.add_argument("--private", action="store_true", help="with --push: create the repository as private")
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


@dataclass
class Source:
    """A checkpoint read into our model, and what the outputs need to know about where it came from."""

    model: Any  # gpt2.GPT2 (imported lazily)
    name: str | None  # the default model name
    description: str
    files: list[Path]  # the checkpoint's own files, hashed for an export's model card
    bpe_dir: Path | None = None  # tokenizer files that came with it
    downloaded: Path | None = None  # a download to remove once the output is written


def check_args(args: argparse.Namespace) -> None:
    """Every option that can be refused without reading anything, refused first."""
    from .common import ConvertError, validate_name

    if args.retries < 0 or args.retry_backoff < 0:
        raise ConvertError("--retries and --retry-backoff must not be negative")
    if args.name is not None:
        validate_name(args.name)
    if args.n_head is not None and args.n_head <= 0:
        raise ConvertError("--n-head must be a positive integer")
    if args.from_pth is None and (args.size or args.n_head):
        raise ConvertError("--size and --n-head apply to --from-pth only")
    if args.from_pth is not None and args.size is None and args.n_head is None:
        raise ConvertError("--from-pth needs --size (124M, 355M, 774M, 1558M) or --n-head")
    if args.bpe_dir is not None and not args.bpe_dir.is_dir():
        raise ConvertError(f"--bpe-dir {args.bpe_dir} is not a directory")
    if args.private and not args.push:
        raise ConvertError("--private applies to --push only")
    if args.precision != "fp32":
        from gpt2 import PRECISIONS

        if args.precision not in PRECISIONS:
            raise ConvertError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
        if args.dtype != "float32":
            raise ConvertError(
                "--dtype applies to fp32 files; a packed file stores its precision's own types"
            )
        if args.to_hf or args.push:
            raise ConvertError("--precision packs weights for this app; the Hub's layout takes --dtype")
    if args.out is not None and (args.to_hf or args.push):
        raise ConvertError(
            "--out is the app's weights/ folder; an export goes to --to-hf DIR (or only to --push)"
        )
    if args.push:
        from .publish import repo_of

        repo_of(args.push)
    if args.to_hf:
        from .to_hf import check_target

        check_target(args.to_hf)


def load_source(args: argparse.Namespace) -> Source:
    from .common import default_name

    if args.model is not None or args.source_dir is not None:
        return _load_tf(args)
    if args.from_pth is not None:
        from .from_pth import load_pth_model

        model = load_pth_model(args.from_pth, size=args.size, n_head=args.n_head)
        return Source(
            model,
            default_name(args.from_pth.stem),
            f"PyTorch state dict {args.from_pth.name}",
            [args.from_pth],
        )
    if args.from_hf is not None:
        from .from_hf import load_hf_model, weight_files

        model = load_hf_model(args.from_hf)
        folder = args.from_hf.resolve().name
        return Source(
            model, default_name(folder), f"Hugging Face GPT-2 folder {folder}", weight_files(args.from_hf)
        )
    from .from_weights import load_weights_file

    model, meta = load_weights_file(args.from_weights)
    origin = f" (converted from: {meta['source']})" if meta.get("source") else ""
    stem = args.from_weights.name.removesuffix(".safetensors").removeprefix("gpt2-")
    description = f"converted weights file {args.from_weights.name}{origin}"
    return Source(model, default_name(meta.get("name"), stem), description, [args.from_weights])


def _load_tf(args: argparse.Namespace) -> Source:
    from .common import default_name
    from .tf_checkpoint import checkpoint_prefix, load_tf_model

    if args.model is not None:
        from .download import download_model

        folder = (args.cache_dir or default_cache_dir()) / args.model
        print(f"downloading GPT-2 {args.model} into {folder}", file=sys.stderr)
        download_model(
            args.model,
            folder,
            url=args.base_url,
            retries=args.retries,
            backoff=args.retry_backoff,
            progress=not args.no_progress,
        )
        print("reading the TensorFlow checkpoint", file=sys.stderr)
        name, description = args.model, f"OpenAI GPT-2 {args.model} (TensorFlow checkpoint)"
    else:
        folder = args.source_dir
        name = None
        description = f"OpenAI-layout TensorFlow checkpoint {folder.resolve().name}"
    model = load_tf_model(folder)
    if name is None:
        name = default_name(_matching_size(model.config), folder.resolve().name)
    prefix = checkpoint_prefix(folder)
    files = sorted(prefix.parent.glob(f"{prefix.name}.data-*")) + [Path(f"{prefix}.index")]
    has_bpe = all((folder / f).is_file() for f in ("encoder.json", "vocab.bpe"))
    downloaded = folder if args.model is not None else None
    return Source(model, name, description, files, folder if has_bpe else None, downloaded)


def run(args: argparse.Namespace) -> int:
    from .common import ConvertError, write_output
    from .download import FILES

    check_args(args)
    src = load_source(args)
    name = args.name or src.name
    if name is None:
        raise ConvertError("cannot derive a valid model name from the input: pass --name")
    # The routes whose input carries no tokenizer files use the package's verified copy.
    from gpt2.tokenizer import PACKAGED_BPE_DIR

    bpe_dir = args.bpe_dir or src.bpe_dir or PACKAGED_BPE_DIR
    if args.to_hf or args.push:
        export(args, src, name, bpe_dir)
    else:
        if args.precision != "fp32":
            import gpt2

            print(f"packing the linear layers as {args.precision}", file=sys.stderr)
            gpt2.prepare(src.model, args.precision, engine=False)
        out = args.out or DEFAULT_OUT
        summary = write_output(
            src.model, out, name=name, dtype=args.dtype, source=src.description, bpe_dir=bpe_dir
        )
        print("\n".join(summary.lines()))
    if src.downloaded is not None and not (args.keep_download or args.cache_dir):
        # The checkpoint is no longer needed (the output is the model now); keep anything else.
        for fname in FILES:
            (src.downloaded / fname).unlink(missing_ok=True)
        if not any(src.downloaded.iterdir()):
            src.downloaded.rmdir()
    return 0


def export(args: argparse.Namespace, src: Source, name: str, bpe_dir: Path) -> None:
    """--to-hf DIR and/or --push hf://OWNER/REPO (without --to-hf, the folder is a temporary one)."""
    import tempfile

    from .publish import PublishError, push_folder, repo_of
    from .to_hf import Provenance, export_hf

    repo_id = repo_of(args.push) if args.push else None
    provenance = Provenance.of(src.description, src.files)
    with tempfile.TemporaryDirectory(prefix="gpt2-export-") as tmp:
        out = args.to_hf or Path(tmp) / name
        result = export_hf(
            src.model,
            out,
            name=name,
            provenance=provenance,
            bpe_dir=bpe_dir,
            dtype=args.dtype,
            repo_id=repo_id,
        )
        print("\n".join(result.lines() if args.to_hf else [f"  note: {n}" for n in result.notes]))
        if repo_id is None:
            return
        try:
            pushed = push_folder(result.path, repo_id, private=args.private, message=f"Upload {name} (GPT-2)")
        except PublishError as exc:
            if args.to_hf:  # the local export is complete: say how to upload it once the cause is fixed
                raise PublishError(
                    f"{exc}; the export in {result.path} is complete (hf upload {repo_id} {result.path})"
                ) from None
            raise
        print("\n".join(pushed.lines(args.private)))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .common import ConvertError

    try:
        return run(args)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(
            "error: interrupted (unfinished output was removed; a partial download resumes on the next run)",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # disk full, permissions: the user's environment, not a bug
        print(f"error: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
