"""Per-request sampling (azion_ai/_local/_sampling.py) on small CPU tensors, against values worked
out by hand from vLLM's / OpenAI's documented rules (no model needed)."""

from __future__ import annotations

import math

import pytest
from conftest import require

torch = require("torch")

from azion_ai._local._request import SamplingParams  # noqa: E402
from azion_ai._local._sampling import LogitBias, Penalties, RowSampler, logprobs  # noqa: E402


def params(**payload):
    return SamplingParams.resolve(payload)


# --- Penalties -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "wanted"),
    [
        ({}, False),
        ({"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}, False),
        ({"repetition_penalty": 1.2}, True),
        ({"repetition_penalty": 0.8}, True),
        ({"presence_penalty": 0.5}, True),
        ({"frequency_penalty": 0.5}, True),
        ({"presence_penalty": -0.5}, True),
    ],
)
def test_penalties_are_wanted_only_when_one_is_not_neutral(payload, wanted):
    assert Penalties.wanted(params(**payload)) is wanted


def test_neutral_penalties_keep_no_state_and_leave_scores_alone():
    penalties = Penalties(params(), torch.tensor([[1, 2]]), rows=1, width=4)
    assert penalties.seen is None and penalties.counts is None
    scores = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    penalties.update(torch.tensor([[1]]))
    assert penalties(scores).tolist() == [[1.0, -1.0, 2.0, 0.5]]


def test_frequency_penalty_alone_subtracts_count_times_penalty():
    penalties = Penalties(params(frequency_penalty=1.5), torch.tensor([[0]]), rows=1, width=4)
    assert penalties.seen is None  # no repetition state without a repetition penalty
    for token in (2, 2, 2, 1):
        penalties.update(torch.tensor([[token]]))
    # token 2 generated 3 times: 1.0 - 3 * 1.5 = -3.5; token 1 once: 1.0 - 1.5 = -0.5; prompt token 0 untouched
    assert penalties(torch.ones(1, 4)).tolist() == [[1.0, -0.5, -3.5, 1.0]]


def test_presence_penalty_alone_subtracts_once_whatever_the_count():
    penalties = Penalties(params(presence_penalty=2.0), torch.tensor([[0]]), rows=1, width=4)
    for token in (3, 3, 3):
        penalties.update(torch.tensor([[token]]))
    assert penalties(torch.ones(1, 4)).tolist() == [[1.0, 1.0, 1.0, -1.0]]
    assert penalties.counts.dtype == torch.float32


def test_repetition_penalty_below_one_raises_seen_positive_logits():
    # vLLM: seen tokens' positive logits divided by the penalty, negative ones multiplied
    penalties = Penalties(params(repetition_penalty=0.5), torch.tensor([[0, 1]]), rows=1, width=4)
    assert penalties.counts is None  # no counts without presence/frequency penalties
    out = penalties(torch.tensor([[3.0, -3.0, 3.0, -3.0]]))
    assert out.tolist() == [[6.0, -1.5, 3.0, -3.0]]


def test_all_three_penalties_apply_in_vllms_order():
    # repetition first (on prompt + output), then frequency and presence (output only)
    penalties = Penalties(
        params(repetition_penalty=2.0, frequency_penalty=1.0, presence_penalty=0.5), torch.tensor([[0]]), rows=1, width=3
    )
    penalties.update(torch.tensor([[1]]))
    penalties.update(torch.tensor([[1]]))
    out = penalties(torch.tensor([[4.0, 4.0, 4.0]]))
    # token 0: prompt only -> 4 / 2 = 2; token 1: 4 / 2 - 2 * 1.0 - 0.5 = -0.5; token 2 untouched
    assert out.tolist() == [[2.0, -0.5, 4.0]]


def test_penalty_state_lives_on_the_prompts_device():
    penalties = Penalties(params(repetition_penalty=1.5, presence_penalty=0.1), torch.tensor([[1]], device="meta"), rows=2, width=5)
    assert penalties.seen.device.type == "meta" and penalties.counts.device.type == "meta"
    assert tuple(penalties.seen.shape) == (2, 5) and tuple(penalties.counts.shape) == (2, 5)


# --- logit_bias ------------------------------------------------------------------------------


def test_logit_bias_adds_each_amount_to_its_token():
    bias = LogitBias(params(logit_bias={"1": 5.0, "3": -100.0}).logit_bias)
    assert bias(torch.zeros(2, 4)).tolist() == [[0.0, 5.0, 0.0, -100.0]] * 2


def test_logit_bias_row_follows_the_scores_width_and_dtype():
    bias = LogitBias([(0, 2.0)])
    assert bias(torch.zeros(1, 3)).tolist() == [[2.0, 0.0, 0.0]]
    wider = bias(torch.ones(1, 5))  # a new width: the row is rebuilt, not reused
    assert wider.tolist() == [[3.0, 1.0, 1.0, 1.0, 1.0]]
    half = bias(torch.zeros(1, 5, dtype=torch.float64))
    assert half.dtype == torch.float64 and half.tolist() == [[2.0, 0.0, 0.0, 0.0, 0.0]]
    on_meta = bias(torch.zeros(1, 5, device="meta", dtype=torch.float64))
    assert on_meta.device.type == "meta"
    assert bias(torch.zeros(1, 5, dtype=torch.float64)).tolist() == [[2.0, 0.0, 0.0, 0.0, 0.0]]


# --- RowSampler ------------------------------------------------------------------------------


def test_greedy_request_takes_the_argmax_with_no_warpers():
    sampler = RowSampler(params(temperature=0, top_k=2, top_p=0.5, min_p=0.1), torch.tensor([[0]]), rows=2, width=4)
    assert sampler.sample is False and sampler.warpers == []
    chosen = sampler.choose(torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 2.0]]))
    assert chosen.tolist() == [[1], [0]]


def test_neutral_sampling_has_no_warpers():
    sampler = RowSampler(params(), torch.tensor([[0]]), rows=1, width=4)
    assert sampler.sample is True and sampler.warpers == []
    assert sampler.penalties is None and sampler.bias is None


def test_each_non_neutral_setting_adds_its_warper_in_generates_order():
    from transformers import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    sampler = RowSampler(params(temperature=0.5, top_k=3, top_p=0.9, min_p=0.05), torch.tensor([[0]]), rows=1, width=8)
    kinds = [type(w) for w in sampler.warpers]
    assert kinds == [TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper]
    temperature, top_k, top_p, min_p = sampler.warpers
    assert temperature.temperature == 0.5 and top_k.top_k == 3
    assert top_p.top_p == 0.9 and min_p.min_p == 0.05


def test_warpers_keep_only_the_allowed_tokens():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_k 2 keeps {0, 1}; top_p 0.6 keeps {0, 1} (0.5 < 0.6);
    # min_p 0.5 keeps tokens with p >= 0.25 = {0, 1}
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for payload in ({"top_k": 2}, {"top_p": 0.6}, {"min_p": 0.5}):
        sampler = RowSampler(params(**payload), torch.tensor([[0]]), rows=1, width=4)
        assert len(sampler.warpers) == 1, payload
        generator = torch.Generator().manual_seed(0)
        sampler.generator = generator
        drawn = {sampler.choose(scores.clone()).item() for _ in range(200)}
        assert drawn == {0, 1}, payload


def test_temperature_sharpens_the_distribution():
    # temperature 0.01 over logits 0 and 1: p(1) = 1 / (1 + e^-100), so token 1 every time
    sampler = RowSampler(params(temperature=0.01), torch.tensor([[0]]), rows=1, width=2, generator=torch.Generator().manual_seed(1))
    assert {sampler.choose(torch.tensor([[0.0, 1.0]])).item() for _ in range(100)} == {1}


def test_seeded_draws_repeat_and_have_one_token_per_row():
    scores = torch.zeros(3, 50)
    first = RowSampler(params(seed=7), torch.tensor([[0]]), rows=3, width=50, generator=torch.Generator().manual_seed(7))
    again = RowSampler(params(seed=7), torch.tensor([[0]]), rows=3, width=50, generator=torch.Generator().manual_seed(7))
    a = [first.choose(scores).tolist() for _ in range(5)]
    b = [again.choose(scores).tolist() for _ in range(5)]
    assert a == b
    assert all(len(step) == 3 and all(len(row) == 1 for row in step) for step in a)
    assert len({tuple(map(tuple, step)) for step in a}) > 1  # a uniform draw over 50 tokens varies


def test_process_applies_penalties_then_logit_bias_and_update_feeds_the_penalties():
    sampler = RowSampler(params(frequency_penalty=1.0, logit_bias={"2": 10.0}), torch.tensor([[0]]), rows=1, width=3)
    sampler.update(torch.tensor([[1]]))
    sampler.update(torch.tensor([[1]]))
    assert sampler.process(torch.zeros(1, 3)).tolist() == [[0.0, -2.0, 10.0]]
    only_bias = RowSampler(params(logit_bias={"0": -1.0}), torch.tensor([[0]]), rows=1, width=2)
    only_bias.update(torch.tensor([[0]]))  # no penalties: nothing to count
    assert only_bias.process(torch.zeros(1, 2)).tolist() == [[-1.0, 0.0]]


# --- logprobs --------------------------------------------------------------------------------


def test_logprobs_are_log_softmax_of_the_raw_logits_with_the_top_alternatives():
    raw = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))  # softmax: 0.1 .. 0.4
    out = logprobs(raw, [1, 0], top=2)
    assert len(out) == 2
    (lp0, alt0), (lp1, alt1) = out
    assert lp0 == pytest.approx(math.log(0.2)) and lp1 == pytest.approx(math.log(0.4))
    assert [t for t, _ in alt0] == [3, 2] and [v for _, v in alt0] == pytest.approx([math.log(0.4), math.log(0.3)])
    assert [t for t, _ in alt1] == [0, 1] and [v for _, v in alt1] == pytest.approx([math.log(0.4), math.log(0.3)])


def test_logprobs_with_no_alternatives_asked():
    raw = torch.log(torch.tensor([[1.0, 3.0]]))
    [(lp, alternatives)] = logprobs(raw, [1], top=0)
    assert lp == pytest.approx(math.log(0.75)) and alternatives == []


def test_repetition_penalty_divides_logits_between_zero_and_one():
    penalties = Penalties(params(repetition_penalty=2.0), torch.tensor([[0, 1, 2]]), rows=1, width=3)
    assert penalties(torch.tensor([[0.5, 1.0, 0.0]])).tolist() == [[0.25, 0.5, 0.0]]


def test_penalised_scores_keep_the_logits_dtype():
    penalties = Penalties(params(frequency_penalty=1.0, presence_penalty=0.5), torch.tensor([[0]]), rows=1, width=3)
    penalties.update(torch.tensor([[1]]))
    out = penalties(torch.ones(1, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.tolist() == [[1.0, -0.5, 1.0]]


def test_penalty_counts_update_on_the_tokens_device():
    penalties = Penalties(params(frequency_penalty=1.0), torch.tensor([[0]], device="meta"), rows=1, width=3)
    penalties.update(torch.tensor([[1]], device="meta"))
    assert penalties.counts.device.type == "meta"


def test_logit_bias_row_is_rebuilt_for_a_new_dtype_or_width():
    bias = LogitBias([(1, 1.0)])
    assert bias(torch.zeros(1, 3, dtype=torch.float64)).dtype == torch.float64
    narrower = bias(torch.zeros(1, 3, dtype=torch.float32))
    assert narrower.dtype == torch.float32 and narrower.tolist() == [[0.0, 1.0, 0.0]]
    assert bias(torch.zeros(3, 3)).tolist() == [[0.0, 1.0, 0.0]] * 3
    assert bias(torch.zeros(3, 5)).tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]] * 3  # as many rows as the old width

