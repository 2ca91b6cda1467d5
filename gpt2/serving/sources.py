"""Where a server's models come from, the names clients send for them, the labels people read, and the
precision each is served in.

A weights argument (`--weights`, `GPT2_WEIGHTS`) is a comma-separated list of sources:

    weights/                          every converted model in a folder (named by their metadata)
    weights/gpt2-124M.safetensors     one converted file
    hf://OWNER/REPO[@REVISION][/FILE] a model on the Hugging Face Hub, fetched when first used

With none of those, a server offers OpenAI's four sizes from the Hub (`HUB_DEFAULT`), the smallest first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import SIZES, GPT2Config
from ..engine import check_precision
from ..formats import hub
from ..formats.weights import list_models, read_metadata
from ..tokenizer import BPE_FILE_SHA256

# OpenAI's four releases as the Hub names them, smallest first: (a title for people, the size).
OPENAI_HUB = {
    "openai-community/gpt2": ("GPT-2", "124M"),
    "openai-community/gpt2-medium": ("GPT-2 Medium", "355M"),
    "openai-community/gpt2-large": ("GPT-2 Large", "774M"),
    "openai-community/gpt2-xl": ("GPT-2 XL", "1558M"),
}
HUB_DEFAULT = ",".join(hub.SCHEME + repo for repo in OPENAI_HUB)

AUTO = "auto"  # the precision per size from AUTO_PRECISION
# The most precise precision that still decodes at a readable pace on a free Space (2 vCPU, 16 GB) and
# leaves room for the other sizes. Measured on the 2-core Zen 3 (docs/history.md): 124M fp32 44 tokens/s;
# 355M fp32 16, bf16 23 (f16 reads as many bytes); 774M int8 18; 1558M int8 10.5, so 4 bits for it
# (on this project's 2-core Xeon, 1558M int4 18.6 tokens/s: benchmarks/results/sizes.json).
# A model of another shape takes the row of the largest size it reaches in parameters.
AUTO_PRECISION = {"124M": "fp32", "355M": "f16", "774M": "int8", "1558M": "int4"}


def check_wanted(precision: object) -> str:
    """`precision` if it is "auto" or one this build packs (ValueError otherwise)."""
    return AUTO if precision == AUTO else check_precision(precision)


@dataclass(frozen=True)
class Choice:
    """The precision a model is served in, and why it is not the one asked for (for the log), if it is not."""

    precision: str
    note: str = ""


def released_size(config: GPT2Config) -> str | None:
    """ "124M" ... "1558M" when `config` has the dimensions of one of OpenAI's releases."""
    dims = {k: v for k, v in config.to_hparams().items() if k != "tied_head"}
    return next((name for name, size in SIZES.items() if size == dims), None)


def size_label(config: GPT2Config) -> str:
    return released_size(config) or f"{config.num_parameters() / 1e6:.0f}M"


def auto_precision(config: GPT2Config) -> str:
    """`AUTO_PRECISION`'s row for `config`: the largest released size it reaches in parameters."""
    n = config.num_parameters()
    rows = [p for size, p in AUTO_PRECISION.items() if GPT2Config(**SIZES[size]).num_parameters() <= n]
    return rows[-1] if rows else next(iter(AUTO_PRECISION.values()))


@dataclass(frozen=True)
class Source:
    """One model a server offers: where its weights are and what is known of it before loading."""

    name: str  # what clients send (`model`): a converted file's name, or the Hub spec without hf://
    origin: Path | str  # a weights file, or an hf:// spec
    config: GPT2Config | None = None  # a file's metadata, or OpenAI's size; None until fetched
    stored: str = "fp32"  # a packed file's own precision (it loads only in that)
    title: str | None = None  # a friendlier name than `name` ("GPT-2 XL")

    @property
    def on_hub(self) -> bool:
        return isinstance(self.origin, str)

    def choose(
        self, wanted: str, config: GPT2Config | None = None, stored: str | None = None
    ) -> Choice | None:
        """The precision to serve it in when `wanted` ("auto" or a precision) was asked for; None while the
        config is unknown. `config`/`stored`: what a fetch found, where the source did not say."""
        config, stored = self.config or config, stored or self.stored
        if stored != "fp32":
            note = f"a {stored} file loads as it is packed" if wanted not in (AUTO, stored) else ""
            return Choice(stored, note)
        if wanted != AUTO:
            return Choice(wanted)
        if config is None:
            return None
        return Choice(auto_precision(config))

    def label(self, precision: str | None = None, config: GPT2Config | None = None) -> str:
        """What a person reads: "GPT-2 XL · 1558M · int4", "my-finetune · 124M · fp32"."""
        parts = [self.title or self.name]
        config = self.config or config
        if config is not None and size_label(config) not in parts[0]:
            parts.append(size_label(config))
        if precision:
            parts.append(precision)
        return " · ".join(parts)


@dataclass
class Sources:
    """What a weights argument names: the models by name, the folders to look in again for models converted
    after start-up, and the folder of GPT-2's tokenizer files if one came with the weights."""

    models: dict[str, Source]
    folders: list[Path]
    bpe_dir: Path | None = None


def hub_source(spec: str) -> Source:
    name = hub.model_name(spec)  # validates the spec: a malformed one is a HubError (ValueError)
    s = hub.parse_spec(spec)
    title, size = OPENAI_HUB.get(s.repo_id, (None, None)) if s.filename is None else (None, None)
    return Source(name, spec, GPT2Config.from_name(size) if size else None, title=title)


def file_source(path: Path, name: str | None = None) -> Source:
    meta = read_metadata(path)
    return Source(name or meta.get("name") or path.stem, path.resolve(), meta["config"], meta["precision"])


def parse_weights(weights: str | os.PathLike[str]) -> Sources:
    """The sources a weights argument names (see the module docstring), in its order; ValueError for a
    malformed part or two models of one name."""
    found = Sources({}, [])
    text = str(weights)
    parts = [text] if Path(text).exists() else [p.strip() for p in text.split(",")]  # (a path with a comma)
    for part in filter(None, parts):
        if hub.is_hub_spec(part):
            new = [hub_source(part)]
        elif Path(part).is_file():
            new = [file_source(Path(part))]
            found.bpe_dir = found.bpe_dir or _bpe_dir(Path(part).parent)
        elif not Path(part).is_dir():
            raise ValueError(f"--weights: {part[:200]!r} is not a weights file, a folder or an hf:// spec")
        else:
            new = [file_source(path, name) for name, path in list_models(part).items()]
            found.folders.append(Path(part))
            found.bpe_dir = found.bpe_dir or _bpe_dir(Path(part))
        for source in new:
            if source.name in found.models:
                raise ValueError(f"two models are named {source.name!r} in --weights {str(weights)[:200]}")
            found.models[source.name] = source
    return found


def _bpe_dir(folder: Path) -> Path | None:
    """`folder` if the converter left GPT-2's tokenizer files there."""
    return folder if all((folder / name).is_file() for name in BPE_FILE_SHA256) else None
