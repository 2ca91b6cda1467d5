"""The declared request parameters: the library's signatures, `Request` and `SamplingParams` are derived
from them, and one check serves every number."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
from helpers.params import EXAMPLES, SAMPLING

from gpt2 import BatchScheduler, Limits, Request, SamplingParams, generate, generate_samples, generate_steps
from gpt2.decoding.params import (
    BY_NAME,
    LIBRARY,
    MAX_SEED,
    PARAMS,
    REQUEST,
    REQUIRED,
    SAMPLES,
    SAMPLES_DEFAULT,
    SERVER,
    SERVING,
    check_number,
    params,
)
from gpt2.serving import DEFAULTS, make_request


def declared_options(fn) -> dict[str, object]:
    """The keyword-only parameters of `fn`'s signature and their defaults."""
    kw = inspect.Parameter.KEYWORD_ONLY
    return {q.name: q.default for q in inspect.signature(fn).parameters.values() if q.kind is kw}


def test_the_library_takes_every_declared_parameter_with_its_default():
    one = {p.name: p.default for p in params(REQUEST) if p.name != "prompt"}
    assert declared_options(generate) == declared_options(generate_steps) == one
    assert declared_options(BatchScheduler.stream) == {**one, "n": BY_NAME["n"].default}
    assert declared_options(generate_samples) == {**one, "n": SAMPLES_DEFAULT}
    assert declared_options(Request.create) == {**one, "n": 1, "limits": LIBRARY}
    assert [q.annotation for q in inspect.signature(generate).parameters.values()][3:] == [
        p.type for p in params(REQUEST)[1:]
    ]
    # The API's entry point takes them all, positionally in the API's order, with the API's defaults.
    api = list(inspect.signature(make_request).parameters.values())
    assert [q.name for q in api] == ["registry", *[p.name for p in PARAMS], "limits"]
    assert {q.name: q.default for q in api[2:-1]} == {k: v for k, v in DEFAULTS.items()}
    assert DEFAULTS["max_new_tokens"] != BY_NAME["max_new_tokens"].default  # the API asks for more text


def test_unknown_or_misplaced_options_are_type_errors():
    with pytest.raises(TypeError, match=r"generate\(\): got an unexpected keyword argument 'n'"):
        generate(None, None, "x", n=2)  # one continuation: samples are generate_samples' business
    with pytest.raises(TypeError, match="top_q"):
        Request.create("x", top_q=0.9)
    with pytest.raises(TypeError, match="model"):
        Request.create("x", model="124M")  # the server's choice, not the request's


def test_request_and_sampling_params_are_the_declared_parameters():
    sampling = {f.name for f in fields(SamplingParams)}
    assert sampling <= {p.name for p in params(REQUEST)}
    request = Request.create("Hi", max_new_tokens=7.0, top_k=40.0, seed=" 12 ", stop="END", n=2)
    values = request.values()
    assert set(values) == {p.name for p in params(REQUEST, SAMPLES)}
    assert values["max_new_tokens"] == 7 and values["top_k"] == 40 and isinstance(values["top_k"], int)
    assert values["seed"] == 12 and values["stop"] == ("END",) and values["n"] == 2
    assert SamplingParams() == Request.create("x").sampling  # the same library defaults
    with pytest.raises(ValueError, match="temperature must be between 0 and 10"):
        SamplingParams(temperature=11)  # checked against the library's bounds


def test_limits_are_derived_and_can_be_narrowed():
    assert LIBRARY.bounds("max_new_tokens") == BY_NAME["max_new_tokens"].library
    assert SERVING.bounds("max_new_tokens") == BY_NAME["max_new_tokens"].serving
    assert SERVING.bounds("n") == LIBRARY.bounds("n")  # no serving bounds declared: the library's
    assert SERVING.max_prompt_chars == 20_000 < LIBRARY.max_prompt_chars
    narrow = Limits(max_new_tokens=(1, 10))
    assert narrow.bounds("max_new_tokens") == (1, 10) and narrow.bounds("top_k") == LIBRARY.bounds("top_k")
    with pytest.raises(TypeError, match="model"):
        Limits(model=(0, 1))
    for p in PARAMS:  # serving never allows what the library does not
        if p.serving is not None:
            assert p.library[0] <= p.serving[0] <= p.serving[1] <= p.library[1], p.name


@pytest.mark.parametrize(
    "name,value,want",
    [
        ("top_k", 40.0, 40),
        ("temperature", 1, 1.0),
        ("seed", 2**53 + 1, 2**53 + 1),  # exact: through a float it would become 2**53
        ("seed", MAX_SEED, MAX_SEED),
        ("seed", "  9007199254740993 ", 9007199254740993),
    ],
)
def test_one_number_check_keeps_whole_numbers_exact(name, value, want):
    p = BY_NAME[name]
    got = p.check(p, value, LIBRARY)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("top_k", True, "top_k must be a number, got bool"),
        ("temperature", float("nan"), "temperature must be a finite number"),
        ("max_new_tokens", 10**400, "between 1 and 8192, got a 401-digit number"),
        ("max_new_tokens", 2.5, "max_new_tokens must be a whole number, got 2.5"),
        ("seed", MAX_SEED + 1, f"seed must be between 0 and {MAX_SEED}"),
        ("seed", 1.5, "seed must be a whole number"),
        ("top_p", 0.0, "top_p must be greater than 0 and at most 1"),
    ],
)
def test_one_number_check_says_what_is_wrong(name, value, message):
    p = BY_NAME[name]
    with pytest.raises(ValueError, match=message):
        p.check(p, value, LIBRARY)


def test_every_parameter_is_fully_declared():
    assert [p.name for p in PARAMS][:1] == ["prompt"] and BY_NAME["prompt"].default is REQUIRED
    assert [p.name for p in PARAMS if p.scope == SERVER] == ["model"]
    for p in PARAMS:
        assert p.doc and "\n" not in p.doc and p.control.label, p.name
        if p.check is check_number:
            assert p.library is not None and p.number
            lo, hi = LIBRARY.bounds(p.name)
            for default in (p.default, p.api):
                assert lo <= default <= hi, p.name


def test_every_parameter_has_an_example_for_the_tests():
    assert list(EXAMPLES) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert EXAMPLES[p.name] != p.api, p.name


@pytest.mark.parametrize("name", SAMPLING)
def test_batched_rows_with_different_values_each_get_their_own_text(tiny_model, tokenizer, name):
    """Requests that differ only in one sampling parameter, decoded together: each gets its own text."""
    base = dict(max_new_tokens=12, top_k=40, seed=21)
    settings = [base, {**base, name: EXAMPLES[name]}] * 2
    alone = ["".join(generate(tiny_model, tokenizer, "Hello", **s)) for s in settings]
    assert alone[0] != alone[1]  # the value matters
    with BatchScheduler(tiny_model, tokenizer, max_batch=4) as scheduler:
        streams = [scheduler.stream("Hello", **s) for s in settings]
        together = ["".join(step.text for step in stream) for stream in streams]
        assert scheduler.max_rows_seen > 1
    assert together == alone
