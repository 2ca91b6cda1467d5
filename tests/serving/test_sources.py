"""`gpt2.serving.sources`: a weights argument read as a list of sources, their names and labels, and the
precision each is served in (the size table, the nearest precision this build has, packed files)."""

from __future__ import annotations

import pytest
from helpers.models import TINY, random_model

from gpt2 import SIZES, GPT2Config, prepare, save_model
from gpt2.serving import sources
from gpt2.serving.sources import (
    AUTO,
    AUTO_PRECISION,
    HUB_DEFAULT,
    OPENAI_HUB,
    auto_precision,
    parse_weights,
    released_size,
)


@pytest.fixture
def folder(tmp_path):
    """A weights/ folder with a plain and a packed model."""
    save_model(random_model(TINY, seed=1), tmp_path / "gpt2-tiny.safetensors", name="tiny")
    packed = prepare(random_model(TINY, seed=2), "int8", engine=False)
    save_model(packed, tmp_path / "gpt2-small8.safetensors", name="small8")
    return tmp_path


def test_the_default_is_openais_four_sizes_from_the_hub_smallest_first():
    found = parse_weights(HUB_DEFAULT)
    assert list(found.models) == list(OPENAI_HUB) and found.folders == [] and found.bpe_dir is None
    labels = [
        s.label(AUTO_PRECISION[size]) for s, (_, size) in zip(found.models.values(), OPENAI_HUB.values())
    ]
    assert labels == ["GPT-2 · 124M · fp32", "GPT-2 Medium · 355M · f16", "GPT-2 Large · 774M · int8",
                      "GPT-2 XL · 1558M · int4"]  # fmt: skip
    for source, (_, size) in zip(found.models.values(), OPENAI_HUB.values()):
        assert source.on_hub and source.config == GPT2Config.from_name(size)  # known before any download


def test_a_list_of_files_folders_and_hub_specs(folder):
    weights = f"{folder}, hf://me/repo@v1 ,{folder / 'gpt2-tiny.safetensors'}"
    with pytest.raises(ValueError, match="two models are named 'tiny'"):
        parse_weights(weights)
    found = parse_weights(f"{folder},hf://me/repo@v1")
    assert list(found.models) == ["small8", "tiny", "me/repo@v1"] and found.folders == [folder]
    hubbed = found.models["me/repo@v1"]
    assert hubbed.config is None and hubbed.title is None and hubbed.label() == "me/repo@v1"
    assert found.models["small8"].stored == "int8" and found.models["tiny"].stored == "fp32"
    assert parse_weights(str(folder / "gpt2-tiny.safetensors")).models["tiny"].origin.is_file()
    for bad, message in (
        (f"{folder / 'nope'}", "is not a weights file, a folder or an hf:// spec"),
        ("hf://gpt2", "expected hf://OWNER/REPO"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_weights(bad)


def test_auto_precision_follows_the_size_table():
    for size, want in AUTO_PRECISION.items():
        config = GPT2Config.from_name(size)
        assert released_size(config) == size and auto_precision(config) == want
    assert auto_precision(TINY) == AUTO_PRECISION["124M"]  # smaller than every release: the first row
    untied = GPT2Config(**SIZES["124M"], tied_head=False)  # a fine-tune's own head: 163M, still 124M's row
    assert auto_precision(untied) == "fp32" and released_size(untied) == "124M"


def test_a_packed_file_loads_in_its_own_precision(folder):
    packed = parse_weights(str(folder)).models["small8"]
    assert packed.choose(AUTO) == sources.Choice("int8")
    assert packed.choose("fp32").precision == "int8" and "loads as it is packed" in packed.choose("fp32").note
    assert packed.label("int8") == "small8 · 3M · int8"


def test_hub_models_of_unknown_shape_decide_once_fetched():
    source = sources.hub_source("hf://me/repo")
    assert source.choose(AUTO) is None
    assert source.choose(AUTO, GPT2Config.from_name("774M")) == sources.Choice("int8")
    assert source.choose("bf16") == sources.Choice("bf16")
