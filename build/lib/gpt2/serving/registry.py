"""Which models a server offers, by display name, and loading them on first use.

Names are the only handle a request has on a model: a name must be one the registry listed, so no
request can make the server open a path of its choosing.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

from ..decoding.probs import first_token_score
from ..engine import check_precision, describe, prepare
from ..formats import hub
from ..formats.weights import list_models, load_model, read_metadata
from ..model import GPT2
from ..tokenizer import BPE_FILE_SHA256, Tokenizer, load_tokenizer

CONVERT_COMMAND = "python -m convert --model 124M"
HUB_DEFAULT = "hf://openai-community/gpt2"  # what a Space serves when its repo holds no converted weights


class NoWeightsError(RuntimeError):
    pass


def default_weights(folder: Path) -> str:
    """Where the app's models come from by default: $GPT2_WEIGHTS, else `folder` — except on a Space
    (SPACE_ID set) whose `folder` holds no converted model: then GPT-2 124M from the Hub."""
    if os.environ.get("GPT2_WEIGHTS"):
        return os.environ["GPT2_WEIGHTS"]
    if os.environ.get("SPACE_ID") and not list_models(folder):
        return HUB_DEFAULT
    return str(folder)


class ModelRegistry:
    """Models by display name, loaded on first use and kept (at most `max_loaded` at a time).

    Names are the only handle a request has on a model: a name must be one the registry listed, so no
    request can make the server open a path of its choosing. `sources` maps each name to a weights file
    or to a function that returns the fp32 model (e.g. one fetched from the Hugging Face Hub).
    """

    def __init__(
        self,
        sources: dict[str, Path | Callable[[], GPT2]],
        tokenizer: Tokenizer,
        *,
        directory: Path | None = None,
        device: str | None = None,
        precision: str = "fp32",
        max_loaded: int = 2,
    ) -> None:
        if not sources:
            raise NoWeightsError("no converted models")
        self.sources = dict(sources)
        self.tokenizer = tokenizer
        self.directory = directory  # re-scanned when a request names a model converted after start-up
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = check_precision(precision)
        if precision != "fp32" and not self.device.startswith("cpu"):
            raise ValueError(f"precision {precision!r} is a CPU mode; on {self.device} use fp32")
        self.max_loaded = max_loaded
        self._models: OrderedDict[str, GPT2] = OrderedDict()
        self._lock = threading.Lock()
        self.loaded_hooks: list[Callable[[str, GPT2 | None], None]] = []  # (name, model or None = unloaded)

    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], device: str | None = None, precision: str = "fp32"
    ) -> ModelRegistry:
        """Every converted model in a folder, the single model in a weights file, or the model an
        `hf://OWNER/REPO[@REVISION][/FILE]` spec names (fetched through huggingface_hub on first use)."""
        if hub.is_hub_spec(str(path)):
            spec = str(path)
            name = hub.model_name(spec)  # validates the spec: a malformed one is a HubError (ValueError)
            return cls(
                {name: lambda: hub.load_hub_model(spec)}, load_tokenizer(), device=device, precision=precision
            )
        path = Path(path)
        if path.is_file():
            name = read_metadata(path).get("name") or path.stem
            sources, directory, bpe = {name: path.resolve()}, None, path.parent
        else:
            sources, directory, bpe = list_models(path), path, path
        if not sources:
            raise NoWeightsError(
                f"No converted GPT-2 weights found in {path}. Convert OpenAI's checkpoint first:\n\n"
                f"    {CONVERT_COMMAND}\n\n(or point --weights at a converted .safetensors file or folder)"
            )
        has_bpe = all((bpe / name).is_file() for name in BPE_FILE_SHA256)  # the converter puts them there
        tokenizer = load_tokenizer(bpe if has_bpe else None)
        return cls(sources, tokenizer, directory=directory, device=device, precision=precision)

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def default(self) -> str:
        return self.names[0]  # list_models sorts by size: the smallest (fastest) model first

    def is_loaded(self, name: str) -> bool:
        return name in self._models

    def check_name(self, name: object) -> str:
        if name is None or name == "":
            return self.default
        if not isinstance(name, str):
            raise ValueError(f"model must be a model name (a string), got {type(name).__name__}")
        if name not in self.sources and self.directory is not None:
            self.sources = {**self.sources, **list_models(self.directory)}
        if name not in self.sources:
            raise ValueError(f"unknown model {name[:80]!r}; available: {', '.join(self.names)}")
        return name

    @property
    def device_label(self) -> str:
        return self.device if self.precision == "fp32" else f"{self.device}, {self.precision}"

    def get(self, name: str) -> GPT2:
        name = self.check_name(name)
        with self._lock:  # two first requests for one model load it once
            if name not in self._models:
                source = self.sources[name]
                if isinstance(source, Path):
                    model = load_model(source, device=self.device, precision=self.precision)
                else:
                    model = prepare(source().to(self.device).eval(), self.precision)
                # The first prompt token is scored after <|endoftext|>: that distribution is the same for
                # every prompt, so compute it now rather than on a request's time.
                first_token_score(model, self.tokenizer, 0)
                self._models[name] = model
                for hook in self.loaded_hooks:
                    hook(name, model)
                while len(self._models) > self.max_loaded:
                    old, _ = self._models.popitem(last=False)
                    for hook in self.loaded_hooks:
                        hook(old, None)
            self._models.move_to_end(name)
            return self._models[name]

    def engine_line(self, name: str | None = None) -> str:
        """Which path decodes a (loaded) model: for the start-up log."""
        return describe(self.get(name or self.default))
