"""Which models a server offers, by name, and loading them when first asked for: in the background, with
progress anyone can watch, within the memory the process has.

Names are the only handle a request has on a model: a name must be one the registry listed, so no
request can make the server open a path of its choosing.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..decoding.probs import first_token_score
from ..engine import describe, memory
from ..formats import hub
from ..formats.weights import list_models, load_model
from ..model import GPT2
from ..tokenizer import Tokenizer, load_tokenizer
from .budget import Held, MemoryBudget, Need, of_total
from .sources import AUTO, HUB_DEFAULT, Choice, Source, check_wanted, file_source, parse_weights

CONVERT_COMMAND = "python -m convert --model 124M"
log = logging.getLogger(__name__)


class NoWeightsError(RuntimeError):
    pass


class LoadError(RuntimeError):
    """A model could not be loaded; the message says why. The next request for it tries again."""


def default_weights(folder: Path) -> str:
    """Where the app's models come from by default: $GPT2_WEIGHTS, else the converted models in `folder`,
    else OpenAI's four sizes from the Hugging Face Hub."""
    if os.environ.get("GPT2_WEIGHTS"):
        return os.environ["GPT2_WEIGHTS"]
    return str(folder) if list_models(folder) else HUB_DEFAULT


@dataclass
class Loading:
    """One model's load, shared by every request waiting for it: where it is, for progress lines."""

    name: str
    label: str
    stage: str = "starting"  # then "download" (Hub only), "load", and "ready" or "failed"
    done: int = 0  # bytes, of `total`, in this stage
    total: int = 0
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def report(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    @property
    def unreachable(self) -> bool:
        """Whether it failed for want of the Hub: offline, or no answer, and nothing in the cache."""
        return isinstance(self.error, hub.HubUnreachable)

    def line(self) -> str:
        """The load as a status line: downloading GPT-2 XL: 2.1 / 6.4 GB, loading ... · int4: 0.4 / 6.4 GB."""
        if self.stage == "failed":
            return f"loading {self.label} failed: {reason(self.error)}"
        if self.stage == "ready":
            return f"{self.label} is ready"
        verb = {"download": "downloading", "load": "loading"}.get(self.stage, "preparing")
        return f"{verb} {self.label}" + (f": {of_total(self.done, self.total)}" if self.total else "…")


def reason(exc: BaseException | None) -> str:
    """Why a load failed, in one line: our own errors say it themselves; anything else says what it was."""
    if isinstance(exc, MemoryError):
        return "not enough memory (an allocation failed while loading)"
    if isinstance(exc, (ValueError, RuntimeError, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class ModelRegistry:
    """Models by name, each loaded on first use (in a background thread; `load` starts it and says how far
    it got, `get` waits for it) and kept while memory allows: a model that would not fit beside the loaded
    ones unloads the least recently used idle ones first, or is refused with a message saying why.

    `precision` is "auto" (each model's from `sources.AUTO_PRECISION`) or one precision for every model; a
    packed file loads in its own. `budget` decides what fits (tests give it their own numbers).
    """

    def __init__(
        self,
        sources: dict[str, Source],
        tokenizer: Tokenizer,
        *,
        folders: list[Path] | None = None,
        device: str | None = None,
        precision: str = AUTO,
        budget: MemoryBudget | None = None,
    ) -> None:
        if not sources:
            raise NoWeightsError("no converted models")
        self.sources = dict(sources)
        self.tokenizer = tokenizer
        self.folders = list(folders or [])  # re-scanned when a request names a model converted after start-up
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = check_wanted(precision)
        if precision not in (AUTO, "fp32") and not self.device.startswith("cpu"):
            raise ValueError(f"precision {precision!r} is a CPU mode; on {self.device} use fp32")
        self.budget = budget or MemoryBudget()
        self._models: OrderedDict[str, GPT2] = OrderedDict()  # least recently used first
        self._needs: dict[str, Need] = {}  # for loaded models and admitted loads
        self._loads: dict[str, Loading] = {}
        self._users: Counter[str] = Counter()  # streams using each model now
        self._lock = threading.Lock()
        self.loaded_hooks: list[Callable[[str, GPT2 | None], None]] = []  # (name, model or None = unloaded)

    @classmethod
    def from_path(
        cls,
        weights: str | os.PathLike[str],
        device: str | None = None,
        precision: str = AUTO,
        budget: MemoryBudget | None = None,
    ) -> ModelRegistry:
        """The models a weights argument names (`sources.parse_weights`): converted files and folders, and
        hf:// specs (fetched through huggingface_hub on first use)."""
        found = parse_weights(weights)
        if not found.models:
            raise NoWeightsError(
                f"No converted GPT-2 weights found in {weights}. Convert OpenAI's checkpoint first:\n\n"
                f"    {CONVERT_COMMAND}\n\n(or point --weights at a converted .safetensors file or folder, "
                f"or at hf://openai-community/gpt2)"
            )
        tokenizer = load_tokenizer(found.bpe_dir)
        return cls(
            found.models, tokenizer, folders=found.folders, device=device, precision=precision, budget=budget
        )

    # -- names, labels, precisions ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    @property
    def default(self) -> str:
        return self.names[0]  # the smallest (fastest) model first: list_models sorts so, and OPENAI_HUB

    def is_loaded(self, name: str) -> bool:
        return name in self._models

    def check_name(self, name: object) -> str:
        if name is None or name == "":
            return self.default
        if not isinstance(name, str):
            raise ValueError(f"model must be a model name (a string), got {type(name).__name__}")
        if name not in self.sources:
            for folder in self.folders:
                for found, path in list_models(folder).items():
                    self.sources.setdefault(found, file_source(path, found))
        if name not in self.sources:
            raise ValueError(f"unknown model {name[:80]!r}; available: {', '.join(self.names)}")
        return name

    @property
    def _wanted(self) -> str:
        return self.precision if self.device.startswith("cpu") else "fp32"  # (packing is a CPU mode)

    def choice(self, name: str) -> Choice | None:
        """The precision `name` is (or will be) served in; None for a Hub model not fetched yet."""
        model = self._models.get(name)
        if model is not None:
            return Choice(model.runtime.precision)
        return self.sources[name].choose(self._wanted)

    def label(self, name: str) -> str:
        """What people read for `name`: "GPT-2 XL · 1558M · int4"."""
        choice, model = self.choice(name), self._models.get(name)
        return self.sources[name].label(choice and choice.precision, model and model.config)

    def describe_models(self) -> list[str]:
        """A line per model for the start-up log: its label, name and where its precision came from."""
        lines = []
        for name, source in self.sources.items():
            choice = self.choice(name)
            why = choice.note if choice and choice.note else "decided when fetched" if choice is None else ""
            origin = name if source.on_hub else str(source.origin)
            lines.append(f"  {self.label(name)}  ({origin}{'; ' + why if why else ''})")
        return lines

    # -- loading -------------------------------------------------------------------------------------------

    def load(self, name: str) -> Loading | None:
        """Start loading `name` in the background, or join the load already running; None when it is
        loaded. A failed load is forgotten once reported, so the next call tries again."""
        name = self.check_name(name)
        with self._lock:
            if name in self._models:
                return None
            state = self._loads.get(name)
            if state is None:
                state = self._loads[name] = Loading(name, self.label(name))
                threading.Thread(target=self._run, args=(state,), name=f"load {name}", daemon=True).start()
            return state

    def get(self, name: str) -> GPT2:
        """The loaded model `name`, waiting for its load if it is not (LoadError if that fails)."""
        name = self.check_name(name)
        while True:
            state = self.load(name)
            if state is not None:
                state.wait()
                if state.error is not None:
                    raise LoadError(reason(state.error))
            with self._lock:
                if name in self._models:  # (unloaded again in between: load it again)
                    self._models.move_to_end(name)
                    return self._models[name]

    @contextmanager
    def using(self, name: str) -> Iterator[GPT2]:
        """`get(name)`, kept loaded (never unloaded to make room) until the block ends."""
        while True:
            model = self.get(name)
            with self._lock:
                if self._models.get(name) is model:
                    self._users[name] += 1
                    break
        try:
            yield model
        finally:
            with self._lock:
                self._users[name] -= 1

    def engine_line(self, name: str | None = None) -> str:
        """Which path decodes a (loaded) model: for the start-up log."""
        return describe(self.get(name or self.default))

    def _run(self, state: Loading) -> None:
        name = state.name
        try:
            model = self._load(state, self.sources[name])
            # The first prompt token is scored after <|endoftext|>: that distribution is the same for
            # every prompt, so compute it now rather than on a request's time.
            first_token_score(model, self.tokenizer, 0)
        except BaseException as exc:  # reported to everyone waiting; the next request tries again
            if not isinstance(exc, (ValueError, RuntimeError, OSError, MemoryError)):
                log.exception("loading %s failed", name)  # a bug: its traceback belongs in the log
            with self._lock:
                self._loads.pop(name, None)
                self._needs.pop(name, None)
            state.error, state.stage = exc, "failed"
            state.finished.set()
            return
        with self._lock:
            self._models[name] = model
            self._loads.pop(name, None)
        for hook in self.loaded_hooks:
            hook(name, model)
        state.stage, state.label = "ready", self.label(name)
        state.finished.set()

    def _load(self, state: Loading, source: Source) -> GPT2:
        wanted, progress = self._wanted, state.report
        if not source.on_hub:
            precision = self._admit(state, source, source.choose(wanted))
            return load_model(
                source.origin,
                device=self.device,
                precision=precision,
                progress=lambda d, t: progress("load", d, t),
            )
        choice = source.choose(wanted)  # known before the download for OpenAI's sizes: checked first
        precision = self._admit(state, source, choice) if choice else None
        fetched = hub.fetch(source.origin, progress)
        if precision is None:
            precision = self._admit(
                state, source, source.choose(wanted, fetched.config, fetched.stored), fetched.config
            )
        return hub.load_fetched(fetched, device=self.device, precision=precision, progress=progress)

    def _admit(self, state: Loading, source: Source, choice: Choice, config=None) -> str:
        """Make room for `source` in `choice.precision` (unloading idle models, least recently used first)
        or raise budget.NotEnoughMemoryError; the precision."""
        precision = choice.precision
        state.label = source.label(precision, config)
        if not self.device.startswith("cpu"):  # the weights live in the accelerator's memory, not here
            return precision
        need = self.budget.need(source.config or config, precision)
        with self._lock:
            held = [Held(n, self._needs[n], self._users[n] > 0) for n in self._models if n in self._needs]
            pending = sum(self._needs[n].total for n in self._loads if n in self._needs and n != source.name)
            unload = self.budget.plan(state.label, need, held, pending)
            for n in unload:
                del self._models[n], self._needs[n]
            self._needs[source.name] = need
        if unload:
            for n in unload:
                log.warning("unloading %s to make room for %s", n, state.label)
                for hook in self.loaded_hooks:
                    hook(n, None)
            gc.collect()  # the engine and the model refer to each other: free both now, not eventually
            memory.release_free_memory()
        return precision
