"""Test helper for `convert/`: real TensorFlow checkpoints in OpenAI's layout, and an independent reference.

The checkpoints are written by TensorFlow itself (`tf.raw_ops.SaveV2`, the op `tf.train.Saver` used),
under OpenAI's exact variable names and shapes (`model/h0/attn/c_attn/w` is `[1, nx, nf]`), next to an
`hparams.json`, a `checkpoint` file and GPT-2's tokenizer files. The reference model is built from the
same checkpoint with this file's own mapping into Hugging Face's GPT2LMHeadModel, sharing no code with
the converter.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHECKPOINT_FILE = 'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'


def openai_variable_shapes(hp: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """OpenAI's variables for these hparams, as listed in gpt2-facts.md."""
    d = hp["n_embd"]
    shapes = {
        "model/wte": (hp["n_vocab"], d),
        "model/wpe": (hp["n_ctx"], d),
        "model/ln_f/g": (d,),
        "model/ln_f/b": (d,),
    }
    for i in range(hp["n_layer"]):
        p = f"model/h{i}/"
        shapes.update(
            {
                p + "ln_1/g": (d,),
                p + "ln_1/b": (d,),
                p + "attn/c_attn/w": (1, d, 3 * d),
                p + "attn/c_attn/b": (3 * d,),
                p + "attn/c_proj/w": (1, d, d),
                p + "attn/c_proj/b": (d,),
                p + "ln_2/g": (d,),
                p + "ln_2/b": (d,),
                p + "mlp/c_fc/w": (1, d, 4 * d),
                p + "mlp/c_fc/b": (4 * d,),
                p + "mlp/c_proj/w": (1, 4 * d, d),
                p + "mlp/c_proj/b": (d,),
            }
        )
    return shapes


def random_arrays(hp: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Random weights; LayerNorm gains near 1 and non-zero biases so that no parameter is a no-op."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in openai_variable_shapes(hp).items():
        a = rng.standard_normal(shape, dtype=np.float32)
        arrays[name] = (1.0 + 0.1 * a) if name.endswith("/g") else 0.02 * a
    return arrays


def write_checkpoint(
    directory: Path,
    hp: dict[str, int],
    arrays: dict[str, np.ndarray],
    bpe_dir: Path | None = None,
) -> Path:
    """An OpenAI-layout folder: model.ckpt.{index,data-00000-of-00001,meta}, checkpoint, hparams.json."""
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    names = list(arrays)
    tf.raw_ops.SaveV2(
        prefix=str(directory / "model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[arrays[n] for n in names],
    )
    (directory / "hparams.json").write_text(json.dumps(hp, indent=2))
    (directory / "checkpoint").write_text(CHECKPOINT_FILE)
    # The converter never reads the graph; the file is here so the folder has all seven names.
    (directory / "model.ckpt.meta").write_bytes(b"placeholder meta graph for tests\n")
    if bpe_dir is not None:
        for f in ("encoder.json", "vocab.bpe"):
            shutil.copy(bpe_dir / f, directory / f)
    return directory


def list_variables(directory: Path) -> dict[str, tuple[int, ...]]:
    import tensorflow as tf

    return {name: tuple(shape) for name, shape in tf.train.list_variables(str(directory / "model.ckpt"))}


def hf_reference(directory: Path):
    """Hugging Face's GPT2LMHeadModel holding the checkpoint's arrays, read back with TensorFlow."""
    import tensorflow as tf
    from transformers import GPT2LMHeadModel

    from helpers.reference import hf_gpt2_config

    hp = json.loads((directory / "hparams.json").read_text())
    reader = tf.train.load_checkpoint(str(directory / "model.ckpt"))

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(reader.get_tensor(name)))

    cfg = hf_gpt2_config(hp["n_vocab"], hp["n_ctx"], hp["n_embd"], hp["n_layer"], hp["n_head"])
    with torch.device("meta"):  # no random init of 40M parameters that are overwritten next
        hf = GPT2LMHeadModel(cfg).eval()
    hf.config._attn_implementation = "eager"
    state = {
        "transformer.wte.weight": get("model/wte"),
        "transformer.wpe.weight": get("model/wpe"),
        "transformer.ln_f.weight": get("model/ln_f/g"),
        "transformer.ln_f.bias": get("model/ln_f/b"),
        "lm_head.weight": get("model/wte"),
    }
    for i in range(hp["n_layer"]):
        src, dst = f"model/h{i}/", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            state[f"{dst}{ln}.weight"] = get(f"{src}{ln}/g")
            state[f"{dst}{ln}.bias"] = get(f"{src}{ln}/b")
        for scope in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            key = dst + scope.replace("/", ".")
            state[f"{key}.weight"] = get(f"{src}{scope}/w")[0]  # HF's Conv1D is [in, out], like OpenAI's w[0]
            state[f"{key}.bias"] = get(f"{src}{scope}/b")
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    assert not missing and not unexpected, (missing, unexpected)
    hf.tie_weights()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    return hf
