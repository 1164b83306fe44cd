"""Every tensor the token step uses follows the model's device, checked without a GPU.

The sampling state, penalties, logit_bias, the batch's KV cache and its masks are driven with
tensors on PyTorch's ``meta`` device: a tensor made anywhere else (a default device, the CPU)
meets them in an operation and fails, as a CPU tensor meets CUDA ones on a GPU (the bug that
failed every default Qwen2.5-VL request on CUDA: a penalty mask built on the CPU). Then whole
requests run on the CPU with the device thread's default device set to ``meta``, so a tensor the
engine creates without ``device=`` fails the request.
"""

from __future__ import annotations

import pytest
from conftest import INTERNVL_ID, QWEN_ID, png_data_uri, require

pytestmark = pytest.mark.local
torch = require("torch")

META = torch.device("meta")
EVERYTHING = {
    "temperature": 0.8, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3,
    "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {"3": 2.0, "7": -1.0}, "n": 2,
}


def _params(payload):
    from azion_ai._local._request import SamplingParams

    return SamplingParams.resolve(payload)


def test_penalties_state_lives_on_the_prompts_device():
    from azion_ai._local._sampling import Penalties

    penalties = Penalties(_params(EVERYTHING), torch.zeros(1, 4, dtype=torch.long, device=META), rows=2, width=16)
    penalties.update(torch.zeros(2, 1, dtype=torch.long, device=META))
    out = penalties(torch.zeros(2, 16, device=META))
    assert out.device == META and out.shape == (2, 16)


def test_logit_bias_follows_the_logits_device():
    from azion_ai._local._sampling import LogitBias

    out = LogitBias(((3, 2.0), (7, -1.0)))(torch.zeros(2, 16, device=META))
    assert out.device == META


@pytest.mark.parametrize("payload", [EVERYTHING, {"temperature": 0, "repetition_penalty": 1.05}, {"temperature": 1.0, "seed": 3}])
def test_a_whole_sampling_step_stays_on_the_device(payload):
    from azion_ai._local._sampling import RowSampler

    params = _params(payload)
    rows = params.n
    sampler = RowSampler(params, torch.zeros(1, 5, dtype=torch.long, device=META), rows, 16)
    for _ in range(2):
        scores = sampler.process(torch.zeros(rows, 16, device=META))
        tokens = sampler.choose(scores)
        assert tokens.device == META and tokens.shape == (rows, 1)
        sampler.update(tokens)


def test_the_batch_cache_and_its_mask_stay_on_the_device():
    from transformers import DynamicCache

    from azion_ai._local._batch import KVBatch

    def cache(rows, length):
        made = DynamicCache()
        for layer in range(2):
            made.update(torch.zeros(rows, 2, length, 4, device=META), torch.zeros(rows, 2, length, 4, device=META), layer)
        return made

    batch = KVBatch()
    batch.join(cache(1, 5), 1)
    batch.join(cache(2, 3), 2)
    assert batch.pads == [0, 2, 2] and batch.width == 5
    mask = batch.mask(META)
    assert mask.device == META and mask.shape == (3, 6)
    batch.keep([1, 2])  # the long row leaves: the padding the others shared goes
    assert batch.pads == [0, 0] and batch.width == 3 and batch.mask(META) is None
    assert batch.cache.layers[0].keys.device == META


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_decode_positions_follow_the_device(family):
    from azion_ai._local._families import FAMILIES

    positions = FAMILIES[family].decode_positions(torch.zeros(3, dtype=torch.long, device=META))
    assert positions.device == META


# -- whole requests, with the device thread's default device on meta ------------------------------------


@pytest.fixture
def meta_default(local_ai):
    """The device thread makes tensors on ``meta`` unless told where: a tensor made without
    ``device=`` then meets the CPU model's tensors and fails the request."""
    from azion_ai._local import _device_worker

    local_ai.transport.load(QWEN_ID)
    worker = _device_worker.workers()["cpu"]
    worker.call(lambda: torch.set_default_device(META))
    yield local_ai
    worker.call(lambda: torch.set_default_device(None))


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_every_feature_runs_with_no_tensor_off_the_models_device(meta_default, model_id):
    image = [{"type": "image_url", "image_url": {"url": png_data_uri((10, 200, 30), size=(96, 64))}}, {"type": "text", "text": "What?"}]
    base = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 6}
    payloads = [
        {"messages": base["messages"], "max_tokens": 6},  # the checkpoint's defaults (Qwen: repetition_penalty 1.05)
        {**base, **EVERYTHING, "seed": 7, "logprobs": True, "top_logprobs": 2, "stop": ["zz"]},
        {**base, "temperature": 0, "response_format": {"type": "json_object"}},
        {**base, "stream": True, "temperature": 0, "presence_penalty": 1.0},
    ]
    if model_id == QWEN_ID:
        payloads.append({**base, "temperature": 0, "tools": TOOLS, "tool_choice": "required"})
    if model_id == INTERNVL_ID:  # Qwen2.5-VL's vision tower itself makes host tensors (transformers' window index)
        payloads.append({"messages": [{"role": "user", "content": image}], "max_tokens": 4, "temperature": 0, "repetition_penalty": 1.2})
    for payload in payloads:
        out = meta_default.run(model_id, payload)
        final = out.get_final_completion() if payload.get("stream") else out
        assert final.choices[0].finish_reason in ("stop", "length", "tool_calls"), payload
