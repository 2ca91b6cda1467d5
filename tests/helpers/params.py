"""A value other than the API's default for every declared request parameter (`gpt2.decoding.params`,
each declaration's `example`), for the tests that send each parameter through every door."""

from __future__ import annotations

from dataclasses import fields

from gpt2 import SamplingParams
from gpt2.decoding.params import PARAMS
from helpers.app_server import MODEL_NAME

EXAMPLES = {p.name: MODEL_NAME if p.name == "model" else p.example for p in PARAMS}
SAMPLING = tuple(f.name for f in fields(SamplingParams))  # the parameters that say how a token is drawn
