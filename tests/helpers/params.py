"""A value other than the API's default for every declared request parameter (`gpt2.decoding.params`),
for the tests that send each parameter through every door. A new parameter needs one here
(tests/decoding/test_params.py checks), chosen so that it changes the fixture model's text."""

from __future__ import annotations

from dataclasses import fields

from gpt2 import SamplingParams

EXAMPLES = {
    "prompt": "The lighthouse keeper",
    "max_new_tokens": 12,
    "temperature": 0.3,
    "top_k": 12,
    "top_p": 0.8,
    "repetition_penalty": 1.5,
    "seed": 21,
    "stop": "THE END",
    "model": "fixture",  # helpers.app_server.MODEL_NAME
    "n": 3,
    "min_p": 0.7,  # (the fixture models are nearly uniform: a small min_p keeps every top-40 token)
}
SAMPLING = tuple(f.name for f in fields(SamplingParams))  # the parameters that say how a token is drawn
