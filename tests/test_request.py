"""What an engine is handed (``_local/_request.py``): sampling resolved as vLLM resolves it (the
payload, then generation_config, then the neutral value, field by field), the output budget, and
a job's cancellation. Expected values are written out by hand from vLLM's rules."""

from __future__ import annotations

import pytest

import azion_ai
from azion_ai._local._request import (
    GREEDY_EPS,
    MIN_TEMPERATURE,
    ImageLimits,
    Job,
    PreparedRequest,
    SamplingParams,
    prompt_too_long,
)

FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


def fields(p: SamplingParams):
    return tuple(getattr(p, name) for name in FIELDS)


def test_neutral_values_when_nothing_is_given():
    p = SamplingParams.resolve({})
    assert fields(p) == (1.0, 1.0, 0, 0.0, 1.0, 0.0, 0.0)
    assert (p.max_tokens, p.n, p.include_usage, p.stop, p.seed, p.logprobs, p.logit_bias) == (None, 1, False, (), None, None, ())
    assert not p.greedy


@pytest.mark.parametrize("name", FIELDS)
def test_each_field_payload_then_generation_config_then_neutral(name):
    mine, theirs = {"top_k": 7}.get(name, 0.5), {"top_k": 3}.get(name, 0.25)
    assert getattr(SamplingParams.resolve({name: mine}, {name: theirs}), name) == mine
    assert getattr(SamplingParams.resolve({}, {name: theirs}), name) == theirs
    assert getattr(SamplingParams.resolve({name: None}, {name: theirs}), name) == theirs  # null is "not given"
    others = [f for f in FIELDS if f != name]
    resolved = SamplingParams.resolve({name: mine}, {f: {"top_k": 3}.get(f, 0.25) for f in others})
    assert all(getattr(resolved, f) == {"top_k": 3}.get(f, 0.25) for f in others)  # each field on its own


def test_types_are_normalised():
    p = SamplingParams.resolve({"temperature": 1, "top_p": 1, "top_k": 5.0, "min_p": 0, "repetition_penalty": 2, "presence_penalty": 1, "frequency_penalty": -1})
    assert [type(v) for v in fields(p)] == [float, float, int, float, float, float, float]
    assert fields(p) == (1.0, 1.0, 5, 0.0, 2.0, 1.0, -1.0)


def test_temperature_greedy_and_the_minimum():
    assert SamplingParams.resolve({"temperature": 0}).greedy
    assert SamplingParams.resolve({"temperature": GREEDY_EPS / 2}).temperature == MIN_TEMPERATURE  # raised, as vLLM
    assert SamplingParams.resolve({"temperature": 0.005}).temperature == MIN_TEMPERATURE == 0.01
    assert SamplingParams.resolve({"temperature": 0.01}).temperature == 0.01
    assert SamplingParams.resolve({"temperature": 0.02}).temperature == 0.02
    assert not SamplingParams.resolve({"temperature": 0.005}).greedy
    assert SamplingParams.resolve({"temperature": 0.0}).temperature == 0.0
    assert SamplingParams(None, 0.99e-5, 1, 0, 0, 1, 0, 0, 1).greedy and not SamplingParams(None, 1e-5, 1, 0, 0, 1, 0, 0, 1).greedy


def test_top_k_minus_one_and_zero_mean_off():
    assert SamplingParams.resolve({"top_k": -1}).top_k == 0
    assert SamplingParams.resolve({"top_k": 0}, {"top_k": 5}).top_k == 0  # 0 given is given
    assert SamplingParams.resolve({"top_k": 1}).top_k == 1


def test_max_tokens_names_and_defaults():
    assert SamplingParams.resolve({"max_tokens": 9}).max_tokens == 9
    assert SamplingParams.resolve({"max_tokens": 9, "max_completion_tokens": 4}).max_tokens == 4
    assert SamplingParams.resolve({"max_completion_tokens": 4}).max_tokens == 4
    assert SamplingParams.resolve({}, {"max_new_tokens": 64}).max_tokens == 64
    assert SamplingParams.resolve({"max_tokens": 5}, {"max_new_tokens": 64}).max_tokens == 5


def test_the_other_fields():
    p = SamplingParams.resolve({"n": 3, "stop": "END", "seed": 42, "logprobs": True, "top_logprobs": 4, "logit_bias": {"17": 5, "3": -100.0}})
    assert (p.n, p.stop, p.seed, p.logprobs, p.logit_bias) == (3, ("END",), 42, 4, ((17, 5.0), (3, -100.0)))
    assert [type(x) for pair in p.logit_bias for x in pair] == [int, float, int, float]
    assert SamplingParams.resolve({"stop": ["a", "b"]}).stop == ("a", "b")
    assert SamplingParams.resolve({"stop": None, "n": None}).stop == () and SamplingParams.resolve({"n": None}).n == 1
    assert SamplingParams.resolve({"logprobs": True}).logprobs == 0
    assert SamplingParams.resolve({"logprobs": False, "top_logprobs": 3}).logprobs is None


def test_include_usage_only_for_streams_that_ask():
    assert SamplingParams.resolve({"stream": True, "stream_options": {"include_usage": True}}).include_usage is True
    assert SamplingParams.resolve({"stream": False, "stream_options": {"include_usage": True}}).include_usage is False
    assert SamplingParams.resolve({"stream": True, "stream_options": {"include_usage": False}}).include_usage is False
    assert SamplingParams.resolve({"stream": True}).include_usage is False
    assert SamplingParams.resolve({"stream": True, "stream_options": ["include_usage"]}).include_usage is False


def request(max_tokens=None, max_model_len=100, **payload):
    params = SamplingParams.resolve({"max_tokens": max_tokens, **payload})
    return PreparedRequest(azion_ai.get_model("qwen-qwen25-vl-3b-instruct-awq"), "p", (), params, False, max_model_len)


def test_the_budget_is_max_tokens_cut_to_the_context():
    assert request(10).budget(50) == 10
    assert request(60).budget(50) == 50  # cut to what is left
    assert request(50).budget(50) == 50
    assert request(None).budget(30) == 70  # no max_tokens: the rest of the context
    assert request(None).budget(99) == 1
    for prompt_len in (100, 150):
        with pytest.raises(azion_ai.ValidationError) as caught:
            request(10).budget(prompt_len)
        assert caught.value.paths == ["messages"] and "qwen-qwen25-vl-3b-instruct-awq" in str(caught.value)
        assert f"maximum context length is 100 tokens; the prompt is {prompt_len} tokens, which leaves no room for output" in str(caught.value)


def test_prompt_too_long_names_the_model_and_what_to_do():
    error = prompt_too_long("m-1", None, 2048)
    assert error.paths == ["messages"] and "m-1" in str(error)
    assert "This model's maximum context length is 2048 tokens; the prompt is longer than that, which leaves no room for output. Shorten the messages or send fewer or smaller images." in str(error)


def test_what_needs_the_token_step():
    assert not request(5).needs_token_step
    for extra in ({"seed": 1}, {"logprobs": True}, {"stop": ["x"]}, {"logit_bias": {"1": 1}}):
        assert request(5, **extra).needs_token_step, extra
    assert request(5).image_limits == ImageLimits(None, None, None)


def test_a_job_cancels_once_and_late_hooks_run_at_once():
    events: list[str] = []
    job = Job(request(5), events.append)
    job.on_cancel(lambda: events.append("first"))
    assert not job.cancelled.is_set() and events == []
    job.cancel()
    job.cancel()  # once
    assert job.cancelled.is_set() and events == ["first"]
    job.on_cancel(lambda: events.append("late"))
    assert events == ["first", "late"]
    other = Job(request(5), events.append)
    other.on_cancel(lambda: events.append("a"))
    other.on_cancel(lambda: events.append("b"))
    other.cancel()
    assert events[-2:] == ["a", "b"]
