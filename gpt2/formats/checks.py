"""Turning another project's state dict into our GPT2: the checks every importer shares.

The converter's routes (OpenAI's TF checkpoints, the book's `.pth`, Hugging Face folders) and the app's
Hub loader only rename and reshape tensors; checking them against the shapes the model expects, choosing
a tied or untied head, and refusing anything that would be served subtly wrong happens here, once.
"""

from __future__ import annotations

import torch

from ..config import GPT2Config
from ..model import GPT2
from .weights import expected_shapes

# The app serves every model with GPT-2's tokenizer, so a model must have exactly its vocabulary.
GPT2_VOCAB = 50257


class CheckpointError(ValueError):
    """A problem with the user's input (a bad file, a wrong shape, a refused config): shown as one line."""


def heads_tied(head: torch.Tensor | None, wte: torch.Tensor) -> bool:
    """A head equal in value to the token embedding is stored once (tied); any other is kept as is."""
    return head is None or (head.shape == wte.shape and torch.equal(head, wte))


def check_source_tensors(
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    source: str,
    *,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Names and shapes in the checkpoint's own naming, so an error names what the user can look up."""
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = sorted(k for k in state if k not in expected)
    if missing:
        raise CheckpointError(
            f"{source}: tensor {missing[0]} is missing (expected shape {expected[missing[0]]})"
            + (f"; {len(missing) - 1} more missing" if len(missing) > 1 else "")
        )
    if unexpected:
        k = unexpected[0]
        raise CheckpointError(
            f"{source}: unexpected tensor {k} with shape {tuple(state[k].shape)}"
            + (f"; {len(unexpected) - 1} more unexpected" if len(unexpected) > 1 else "")
        )
    for k, shape in expected.items():
        if k in state and tuple(state[k].shape) != shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, expected {shape}")


def check_vocabulary(config: GPT2Config, source: str) -> None:
    if config.n_vocab != GPT2_VOCAB:
        raise CheckpointError(
            f"{source}: the model has a vocabulary of {config.n_vocab} tokens, but the app serves GPT-2's "
            f"tokenizer with {GPT2_VOCAB}; such a model cannot be served faithfully"
        )


def checked_tensor(key: str, t: torch.Tensor, source: str) -> torch.Tensor:
    """`t` as an fp32 CPU tensor, or a CheckpointError if it is not a float tensor of finite values."""
    if not t.is_floating_point():
        raise CheckpointError(f"{source}: {key} has dtype {t.dtype}, expected a floating-point tensor")
    t = t.detach().to("cpu", torch.float32).contiguous()
    # A NaN or inf weight means a corrupt file or a diverged run; serving it would only print garbage.
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{source}: {key} contains NaN or infinite values")
    return t


def build_model(state: dict[str, torch.Tensor], config: GPT2Config, source: str) -> GPT2:
    """Check `state` (our module names, Linear weights `[out, in]`) against `config` and load it (fp32, CPU).

    Every problem is reported with the tensor's name and both shapes; nothing is guessed or padded.
    """
    check_vocabulary(config, source)
    want = expected_shapes(config)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing[:5])}" + _more(missing))
    if unexpected:
        names = ", ".join(unexpected[:5])
        raise CheckpointError(f"{source}: unexpected tensor(s) {names}" + _more(unexpected))
    tensors = {}
    for key, shape in want.items():
        t = state[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}, expected {shape}")
        tensors[key] = checked_tensor(key, t, source)
    with torch.device("meta"):
        model = GPT2(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _more(items: list[str]) -> str:
    return f" and {len(items) - 5} more" if len(items) > 5 else ""
