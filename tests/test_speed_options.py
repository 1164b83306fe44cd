"""Decode-path speed options give exactly the default path's greedy output (correctness on CPU;
their speed is a GPU matter, see docs/benchmarks.md)."""

from __future__ import annotations

import pytest
from conftest import INTERNVL_ID, QWEN_ID, png_data_uri

from azion_ai import AI

pytestmark = pytest.mark.local
pytest.importorskip("torch")
PAYLOAD = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 12, "temperature": 0}
IMAGE = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}}, {"type": "text", "text": "What?"}]}], "max_tokens": 6, "temperature": 0}


def outputs(ai, model_id):
    return [
        ai.run(model_id, PAYLOAD).choices[0].message.content,
        ai.run(model_id, {**PAYLOAD, "stream": True}).get_final_completion().choices[0].message.content,
        ai.run(model_id, IMAGE).choices[0].message.content,
    ]


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_static_cache_matches_default(tiny_dirs, local_ai, model_id):
    expected = outputs(local_ai, model_id)
    with AI(backend="local", models={model_id: str(tiny_dirs[model_id])}, device="cpu", static_cache=True) as ai:
        assert outputs(ai, model_id) == expected


def test_compiled_decoding_matches_default(tiny_dirs, local_ai):
    import torch._dynamo

    torch._dynamo.utils.counters.clear()
    expected = local_ai.run(INTERNVL_ID, PAYLOAD).choices[0].message.content
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu", compile=True) as ai:
        first = ai.run(INTERNVL_ID, PAYLOAD).choices[0].message.content  # compiles
        again = ai.run(INTERNVL_ID, PAYLOAD).choices[0].message.content  # reuses the compiled step
    assert first == again == expected
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really was compiled
