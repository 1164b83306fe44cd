"""Decode-path speed options give exactly the default path's greedy output (correctness on CPU;
their speed is a GPU matter, see docs/benchmarks.md)."""

from __future__ import annotations

import pytest
from conftest import INTERNVL_ID, QWEN_ID, png_data_uri, require

from azion_ai import AI

pytestmark = pytest.mark.local
require("torch")
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


def test_compiled_decoding_of_the_awq_model_matches_default(tiny_dirs, local_ai):
    """transformers alone would refuse to compile an AWQ model; the backend compiles it and the
    greedy tokens stay the same."""
    import torch._dynamo

    expected = local_ai.run(QWEN_ID, PAYLOAD).choices[0].message.content
    torch._dynamo.utils.counters.clear()
    with AI(backend="local", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cpu", compile=True) as ai:
        first = ai.run(QWEN_ID, PAYLOAD).choices[0].message.content
        again = ai.run(QWEN_ID, {**PAYLOAD, "stream": True}).get_final_completion().choices[0].message.content
        quantizer = ai.transport._engines[QWEN_ID].loaded.model.hf_quantizer
        assert quantizer.is_compileable
    assert first == again == expected
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    untouched = local_ai.transport._engines[QWEN_ID].loaded.model.hf_quantizer
    assert not untouched.is_compileable  # only the compiling backend's model was changed


def _text_logits(loaded):
    import torch

    conv = [{"role": "user", "content": [{"type": "text", "text": "Name the european capitals"}]}]
    text = loaded.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    inputs = loaded.processor(text=[text], return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**inputs).logits.float()


@pytest.mark.parametrize("kernel", ["torch_awq", "torch_fused_awq", "auto"])
def test_awq_kernels_that_run_on_cpu_match_the_reference(tiny_dirs, kernel):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with AI(backend="local", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cpu", awq_kernel=kernel) as ai:
        ai.transport.load(QWEN_ID)
        loaded = ai.transport._engines[QWEN_ID].loaded
        q_proj = loaded.model.model.language_model.layers[0].self_attn.q_proj
        assert loaded.quantized_layer == type(q_proj).__name__ and type(q_proj).__module__.startswith("gptqmodel")
        if kernel != "auto":
            assert {"torch_awq": "AwqTorchLinear", "torch_fused_awq": "TorchFusedAwqLinear"}[kernel] == loaded.quantized_layer
        reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dirs[QWEN_ID] / "reference"), dtype=torch.float32)
        ours = _text_logits(loaded)
        ref = _text_logits(type(loaded)(**{**loaded.__dict__, "model": reference}))
        assert (ours - ref).abs().max().item() < 0.05 * ref.abs().max().item()
        assert ai.run(QWEN_ID, PAYLOAD).usage.completion_tokens == PAYLOAD["max_tokens"]


def test_an_awq_kernel_the_device_lacks_is_a_clear_load_error(tiny_dirs):
    import azion_ai

    with pytest.raises(ValueError, match="awq_kernel must be one of"):
        AI(backend="local", device="cpu", awq_kernel="warp-drive")
    models = {k: str(v) for k, v in tiny_dirs.items()}
    with AI(backend="local", models=models, device="cpu", awq_kernel="marlin") as ai:
        with pytest.raises(azion_ai.ModelLoadError, match=r"awq_kernel='marlin' on cpu.*torch_awq"):
            ai.run(QWEN_ID, PAYLOAD)
        # the backend stays usable: the unquantized model ignores the kernel choice
        assert ai.run(INTERNVL_ID, PAYLOAD).usage.completion_tokens == PAYLOAD["max_tokens"]


# -- our token step against generate() ------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def _runs(ai, model_id):
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri((10, 200, 30), size=(96, 64))}}, {"type": "text", "text": "What?"}]}], "max_tokens": 10, "temperature": 0}
    penalties = {**PAYLOAD, "presence_penalty": 1.5, "frequency_penalty": 0.8, "max_tokens": 20}
    out = [
        ai.run(model_id, PAYLOAD).choices[0].message.content,
        ai.run(model_id, image).choices[0].message.content,
        ai.run(model_id, PAYLOAD).choices[0].message.content,  # text right after an image (Qwen's 3D-rope state)
        ai.run(model_id, {**image, "stream": True}).get_final_completion().choices[0].message.content,
        ai.run(model_id, penalties).choices[0].message.content,
        ai.run(model_id, {**PAYLOAD, "repetition_penalty": 1.3, "max_tokens": 20}).choices[0].message.content,
    ]
    if model_id == QWEN_ID:  # the checkpoint's defaults: top_k 1 and repetition_penalty 1.05
        out.append(ai.run(model_id, {"messages": PAYLOAD["messages"], "max_tokens": 12}).choices[0].message.content)
        out.append(ai.run(model_id, {**PAYLOAD, "tools": TOOLS}).model_dump()["choices"])
    return out


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_token_step_gives_generates_greedy_output(tiny_dirs, model_id):
    models = {model_id: str(tiny_dirs[model_id])}
    with AI(backend="local", models=models, device="cpu", fast_decode=False) as ai:
        expected = _runs(ai, model_id)
    with AI(backend="local", models=models, device="cpu") as ai:
        steps: list[int] = []
        ai.transport.load(model_id)
        model = ai.transport._engines[model_id].loaded.model
        model.generate = lambda *a, **k: steps.append(1)  # the token step must not fall back to generate()
        got = _runs(ai, model_id)
    assert got == expected
    assert steps == []


def test_token_step_sampling_uses_generates_warpers(local_ai):
    greedy = local_ai.run(INTERNVL_ID, PAYLOAD).choices[0].message.content
    # top_p so small that only the most likely token survives: sampling must reproduce greedy
    narrow = local_ai.run(INTERNVL_ID, {**PAYLOAD, "temperature": 0.7, "top_p": 1e-9}).choices[0].message.content
    assert narrow == greedy
    # top_k 1 keeps only the most likely token, whatever the temperature (top_k applied)
    top1 = local_ai.run(INTERNVL_ID, {**PAYLOAD, "temperature": 1.5, "top_k": 1}).choices[0].message.content
    assert top1 == greedy
    wide = {local_ai.run(INTERNVL_ID, {**PAYLOAD, "temperature": 2.0, "seed": seed}).choices[0].message.content for seed in range(4)}
    assert len(wide) > 1  # and a hot temperature really samples (seeded: the same draws every run)


def test_compiled_token_step_reuses_its_graphs_and_cache(tiny_dirs, local_ai):
    """Lone requests with compile=True run the compiled token step (not generate()) on one static
    cache; after each kind of request has been seen once, nothing compiles again."""
    import torch._dynamo

    def image(color):
        return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri(color, size=(96, 64))}}, {"type": "text", "text": "What?"}]}], "max_tokens": 8, "temperature": 0}

    requests = [PAYLOAD, image((10, 200, 30)), {**PAYLOAD, "messages": [{"role": "user", "content": "Tell me more"}]}, image((200, 10, 30)), PAYLOAD]
    expected = [local_ai.run(QWEN_ID, r).choices[0].message.content for r in requests]
    torch._dynamo.reset()  # no graph from an earlier test: this one must compile its own
    torch._dynamo.utils.counters.clear()
    with AI(backend="local", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cpu", compile=True) as ai:
        ai.transport.load(QWEN_ID)
        worker = ai.transport._engines[QWEN_ID]
        worker.loaded.model.generate = lambda *a, **k: pytest.fail("a lone request went through generate()")
        got, graphs, caches = [], [], []
        for r in requests:
            got.append(ai.run(QWEN_ID, r).choices[0].message.content)
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
            caches.append(id(worker._static_cache))
    assert got == expected
    assert worker._compiled_forward is not None
    assert graphs[0] >= 1  # a graph really was compiled (no silent fallback to eager)
    assert graphs[-1] == graphs[-2] == graphs[-3]  # warm: no more compiling
    assert len(set(caches)) == 1
