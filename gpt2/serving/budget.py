"""Memory: what a model will hold once loaded, what the process may still use, and which loaded models to
unload (least recently used first) so that a new one fits, or a clear refusal when it cannot.

A model's need is estimated from its config before any tensor is read: its weights at the precision it
will be served in (`weight_bytes`), and a KV-cache budget for a full batch of texts of a typical length
(`KV_POSITIONS`; the cache grows with the text, so a batch of full 1024-token contexts can go past it).
What the process may use is the cgroup v2 limit less the group's use where a limit is set, else the
kernel's MemAvailable (`free_memory`). Every number comes in through `MemoryBudget`'s arguments, so
tests can put a server in any situation without real memory pressure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import GPT2Config
from ..engine import precision as packing
from ..engine.precision import BYTES_PER_WEIGHT

# The head's precision where the engine packs it otherwise than the blocks (int4 blocks keep an int8 head);
# engines without such a table pack the head like the blocks.
HEAD_PRECISION: dict[str, str] = getattr(packing, "HEAD_PRECISION", {})
KV_POSITIONS = 512  # positions per text the KV budget is made for: a prompt and its continuation
# Headroom beyond the estimates: the loader's temporaries (one fp32 tensor at a time, 64 MB slices of the
# head while packing it), the allocator's slack, requests' logits and sampling.
RESERVE_BYTES = 512 << 20
CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")  # "0::/PATH": this process's group under CGROUP (v2)
MEMINFO = Path("/proc/meminfo")


class NotEnoughMemoryError(RuntimeError):
    """A model would not fit in memory beside the ones that must stay; the message says what it needs."""


def weight_bytes(config: GPT2Config, precision: str) -> int:
    """Bytes a model holds once loaded in `precision`: the blocks' linear layers packed (their biases,
    the embeddings and LayerNorms stay fp32), and a packed head, a copy of `wte` when tied (the fp32
    table stays for the embedding lookup). int8's per-row scales (0.1%) are left out."""
    d, L, V = config.n_embd, config.n_layer, config.n_vocab
    linear = L * 12 * d * d  # c_attn 3d², attention c_proj d², c_fc 4d², MLP c_proj 4d²
    fp32 = L * 9 * d + (2 * L + 1) * 2 * d + (V + config.n_ctx) * d  # biases, LayerNorms, wte, wpe
    if precision == "fp32":
        head = 0 if config.tied_head else V * d * 4
    else:
        head = V * d * BYTES_PER_WEIGHT[HEAD_PRECISION.get(precision, precision)]
    return int(linear * BYTES_PER_WEIGHT[precision] + fp32 * 4 + head)


def kv_bytes(config: GPT2Config, slots: int, positions: int = KV_POSITIONS) -> int:
    """An fp32 KV cache of `slots` texts of `positions` each: keys and values of every layer."""
    return 2 * config.n_layer * slots * min(positions, config.n_ctx) * config.n_embd * 4


@dataclass(frozen=True)
class Need:
    weights: int
    kv: int

    @property
    def total(self) -> int:
        return self.weights + self.kv


def size(n: float) -> str:
    """Bytes for people: "6.4 GB", "548 MB"."""
    return f"{n / 1e9:.1f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.0f} MB"


def of_total(done: float, total: float) -> str:
    """ "2.1 / 6.4 GB", "120 / 548 MB": both in the total's unit."""
    return f"{done / 1e9:.1f} / {size(total)}" if total >= 1e9 else f"{done / 1e6:.0f} / {size(total)}"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is None


def _cgroup_free() -> int | None:
    """The cgroup v2 limit less the group's use, where a limit is set. Reclaimable page cache
    (`inactive_file`: e.g. a weights file just read) counts as free, as the kernel would reclaim it."""
    try:
        line = next(x for x in PROC_CGROUP.read_text().splitlines() if x.startswith("0::"))
    except (OSError, StopIteration):
        return None
    for folder in (CGROUP / line[3:].lstrip("/"), CGROUP):
        limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
        if limit is None or used is None:
            continue
        try:
            stat = dict(x.split() for x in (folder / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            stat = {}
        return limit - used + int(stat.get("inactive_file", 0))
    return None


def _mem_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_memory() -> int | None:
    """Bytes this process may still allocate (the smaller of the cgroup's room and MemAvailable), or None
    where neither is known."""
    known = [n for n in (_cgroup_free(), _mem_available()) if n is not None]
    return min(known) if known else None


@dataclass(frozen=True)
class Held:
    """A loaded model as the budget sees it, least recently used first in a list."""

    name: str
    need: Need
    busy: bool  # streaming now: unloading it would cut its requests off


@dataclass
class MemoryBudget:
    """Whether a model fits: `free()` bytes now, less `reserve`, less what loaded models' KV caches may
    still grow into; `slots` texts per model's KV budget (the server's batch), `positions` each."""

    free: Callable[[], int | None] = free_memory
    reserve: int = RESERVE_BYTES
    slots: int = 8
    positions: int = KV_POSITIONS

    def need(self, config: GPT2Config, precision: str) -> Need:
        return Need(weight_bytes(config, precision), kv_bytes(config, self.slots, self.positions))

    def plan(self, label: str, need: Need, held: list[Held], pending: int = 0) -> list[str]:
        """The models to unload, least recently used first, so that `need` fits (nothing unloaded that would
        not make it fit); NotEnoughMemoryError when even unloading every idle model is not enough.
        `pending`: bytes admitted for loads still running (not all allocated yet)."""
        free = self.free()
        if free is None:  # nothing to go by: load, as before there was a budget
            return []
        # A loaded model's weights are already out of `free`; its KV cache may grow back to its budget.
        room = free - self.reserve - pending - sum(h.need.kv for h in held)
        unload = []
        for h in held:
            if need.total <= room:
                break
            if not h.busy:
                unload.append(h.name)
                room += h.need.total
        if need.total > room:
            busy = [h.name for h in held if h.busy]
            verb = "is" if len(busy) == 1 else "are"
            texts = f"{self.slots} text" + ("s" if self.slots != 1 else "")
            wait = f", or try again when {' and '.join(busy)} {verb} idle" if busy else ""
            raise NotEnoughMemoryError(
                f"not enough memory to load {label} (needs ~{size(need.total)}: {size(need.weights)} of "
                f"weights, a KV cache for {texts} of {self.positions} tokens; "
                f"{size(max(room, 0))} free): choose a smaller model or a lower precision{wait}"
            )
        return unload
