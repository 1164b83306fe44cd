"""CUDA: AWQ through gptqmodel's GPU kernels on full-size-shaped random checkpoints.

Skipped (and named as skipped) without a CUDA device. Run on a GPU machine with
`.venv/bin/python -m pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import pytest
from conftest import INTERNVL_ID, QWEN_ID, png_data_uri

from azion_ai import AI

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def full_dirs(tmp_path_factory):
    from azion_ai._local._tiny import ensure_tiny_checkpoints

    return ensure_tiny_checkpoints(tmp_path_factory.mktemp("full"), full_size=True)


def test_awq_uses_a_cuda_kernel_and_generates(full_dirs):
    import torch

    with AI(backend="local", models={k: str(v) for k, v in full_dirs.items()}, device="cuda") as ai:
        ai.transport.load(QWEN_ID)
        model = ai.transport._engines[QWEN_ID].loaded.model
        q_proj = model.model.language_model.layers[0].self_attn.q_proj
        assert q_proj.qweight.is_cuda
        assert type(q_proj).__name__ != "AwqTorchLinear"  # a CUDA kernel, not the CPU fallback
        assert isinstance(model.model.visual.blocks[0].attn.qkv, torch.nn.Linear)
        payload = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri(size=(448, 448))}}, {"type": "text", "text": "What is this?"}]}], "max_tokens": 8, "temperature": 0}
        for model_id in (QWEN_ID, INTERNVL_ID):
            done = ai.run(model_id, payload)
            assert done.usage.completion_tokens == 8
            streamed = ai.run(model_id, {**payload, "stream": True}).get_final_completion()
            assert streamed.choices[0].message.content == done.choices[0].message.content


def test_cuda_and_cpu_agree_on_the_tiny_checkpoint(tiny_dirs):
    payload = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 6, "temperature": 0}
    outputs = []
    for device in ("cpu", "cuda"):
        with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device=device) as ai:
            outputs.append(ai.run(INTERNVL_ID, payload).usage.completion_tokens)
    assert outputs == [6, 6]


def test_cuda_awq_kernels_load_or_say_why(tiny_dirs):
    """Every kernel the option names either runs Qwen2.5-VL-AWQ or fails its load with a clear error."""
    import azion_ai

    payload = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 6, "temperature": 0}
    worked = {}
    for kernel in ("auto", "marlin", "machete", "exllama_v2", "gemm", "gemm_triton", "torch_awq"):
        with AI(backend="local", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cuda", awq_kernel=kernel) as ai:
            try:
                done = ai.run(QWEN_ID, payload)
            except azion_ai.ModelLoadError as exc:
                assert kernel in str(exc)
                continue
            assert done.usage.completion_tokens == 6
            worked[kernel] = ai.transport._engines[QWEN_ID].loaded.quantized_layer
    assert "auto" in worked and ({"marlin", "gemm", "exllama_v2"} & set(worked)), worked


def test_compiled_awq_decoding_with_cuda_graphs_matches_eager(tiny_dirs):
    payload = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 12, "temperature": 0}
    models = {QWEN_ID: str(tiny_dirs[QWEN_ID])}
    with AI(backend="local", models=models, device="cuda") as ai:
        expected = ai.run(QWEN_ID, payload).choices[0].message.content
    with AI(backend="local", models=models, device="cuda", compile=True) as ai:
        first = ai.run(QWEN_ID, payload).choices[0].message.content
        again = ai.run(QWEN_ID, payload).choices[0].message.content
    assert first == again == expected
