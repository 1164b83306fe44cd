"""CUDA: what only a GPU shows, on both models, the eager path and the fast one (compile=True).

Skipped (and named as skipped) without a CUDA device. ``scripts/gpu_check.sh`` runs it with
tests/test_gpu_behaviour.py on a stock GPU machine; by hand, from the checkout:
``python3 -m pytest -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_gpu_behaviour.py``.
Every tensor the token step, the penalties, logit_bias, grammar masks, seeded sampling, n > 1,
logprobs, stop strings, LoRA and images use must follow the model's device: on a CPU nothing
tells, so each of those features runs here on CUDA, where a tensor left on the CPU fails.
"""

from __future__ import annotations

import json
import math
import threading

import gpu_fixtures
import pytest
from conftest import png_data_uri
from engine_behaviour import CITY, HELLO, ask, with_image
from gpu_fixtures import INTERNVL, PATHS, QWEN, cuda_only, needs_gptqmodel

import azion_ai
from azion_ai import AI

pytestmark = pytest.mark.gpu
gpu_device, gpu_dirs = gpu_fixtures.gpu_device, gpu_fixtures.gpu_dirs  # fixtures
BOTH = [QWEN, INTERNVL]


def text(completion) -> str:
    return completion.choices[0].message.content


def models_of(dirs) -> dict[str, str]:
    return {k: str(v) for k, v in dirs.items()}


@pytest.fixture(scope="module", params=sorted(PATHS))
def client(request, gpu_dirs, gpu_device):
    ai = AI(backend="local", models=models_of(gpu_dirs), device=gpu_device, any_whitespace=False, **PATHS[request.param])
    yield ai
    ai.close()


def test_default_requests_apply_the_checkpoints_repetition_penalty(client):
    """Qwen's generation_config.json sets repetition_penalty 1.05 (with top_k 1): a request that
    sets no sampling parameter takes them, as vLLM does. On CUDA this once failed every request
    (a prompt mask built on the CPU met the generated ids on the GPU)."""
    bare = {"messages": HELLO["messages"], "max_tokens": 12}
    default = client.run(QWEN, bare)
    assert default.usage.completion_tokens >= 1
    explicit = client.run(QWEN, {**bare, "temperature": 0, "repetition_penalty": 1.05})  # top_k 1 is greedy
    assert text(default) == text(explicit)
    assert text(client.run(QWEN, {**bare, "stream": True}).get_final_completion()) == text(default)
    assert client.run(QWEN, {**bare, "n": 2, "temperature": 0.7, "seed": 3}).choices[1].message.content is not None


@pytest.mark.parametrize("model_id", BOTH)
def test_seeded_sampling_and_n_choices_repeat(client, model_id):
    payload = ask("Tell me a story", n=3, temperature=1.0, top_p=0.9, top_k=40, seed=11, max_tokens=10, presence_penalty=0.5, frequency_penalty=0.3)
    first = client.run(model_id, payload)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len({c.message.content for c in first.choices}) > 1
    assert [c.message.content for c in client.run(model_id, payload).choices] == [c.message.content for c in first.choices]
    streamed = client.run(model_id, {**payload, "stream": True}).get_final_completion()
    assert [c.message.content for c in streamed.choices] == [c.message.content for c in first.choices]
    other = client.run(model_id, {**payload, "seed": 12})
    assert [c.message.content for c in other.choices] != [c.message.content for c in first.choices]


@pytest.mark.parametrize("model_id", BOTH)
def test_logprobs_are_a_distribution_and_greedy_takes_the_top(client, model_id):
    out = client.run(model_id, ask("Hello", max_tokens=6, logprobs=True, top_logprobs=5, repetition_penalty=1.0))
    entries = out.choices[0].logprobs["content"]
    assert len(entries) == out.usage.completion_tokens
    for entry in entries:
        top = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert all(math.isfinite(v) and v <= 0 for v in top)
        assert sum(math.exp(v) for v in top) <= 1 + 1e-3
        assert entry["logprob"] == pytest.approx(top[0], abs=1e-3)  # greedy: the most likely token
    sampled = client.run(model_id, ask("Hello", max_tokens=4, n=2, temperature=1.0, seed=1, logprobs=True, top_logprobs=1))
    for choice in sampled.choices:
        assert all(math.isfinite(e["logprob"]) and e["logprob"] <= 0 for e in choice.logprobs["content"])


@pytest.mark.parametrize("model_id", BOTH)
def test_logit_bias_forces_a_token(client, model_id, gpu_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gpu_dirs[model_id]))
    target = tok(" Rome", add_special_tokens=False).input_ids[0]
    forced = client.run(model_id, ask("Hello", max_tokens=5, logit_bias={str(target): 100}))
    assert text(forced) == tok.decode([target] * forced.usage.completion_tokens)
    assert forced.usage.completion_tokens == 5
    # many entries at once (a bias tensor the size of the request's list, made on the device)
    spread = {str(i): 0.01 for i in range(300)}
    assert client.run(model_id, ask("Hello", max_tokens=5, logit_bias=spread)).usage.completion_tokens >= 1


def test_grammars_force_json_and_tool_calls(client):
    strict = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {**CITY, "properties": {"location": CITY["properties"]["city"]}, "required": ["location"]}}}
    forced = client.run(QWEN, ask("Weather in Paris?", tools=[strict], tool_choice="required", parallel_tool_calls=False, max_tokens=60))
    calls = forced.choices[0].message.tool_calls
    assert calls and json.loads(calls[0].function.arguments)["location"] in ("Paris", "Rome")
    for model_id in BOTH:
        payload = ask("A city, as JSON", response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}, max_tokens=60)
        out = client.run(model_id, payload).choices[0]
        assert out.finish_reason == "stop" and json.loads(out.message.content)["city"] in ("Paris", "Rome")
        streamed = client.run(model_id, {**payload, "stream": True}).get_final_completion()
        assert streamed.choices[0].message.content == out.message.content


@pytest.mark.parametrize("model_id", BOTH)
def test_grammar_masks_per_sampled_choice(client, model_id):
    """n sampled choices under one schema: each row has its own grammar state and ends alone."""
    payload = ask("A city, as JSON", response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}, max_tokens=60, temperature=1.0, seed=4, n=3)
    sampled = client.run(model_id, payload)
    assert all(c.finish_reason == "stop" and json.loads(c.message.content)["city"] in ("Paris", "Rome") for c in sampled.choices)


@pytest.mark.parametrize("model_id", BOTH)
def test_stop_strings_cut_stream_and_whole_alike(client, model_id):
    free = text(client.run(model_id, ask("Hello", max_tokens=16)))
    stop = next((ch for ch in free[3:] if ch.strip()), None)
    assert stop is not None, free
    whole = client.run(model_id, ask("Hello", max_tokens=16, stop=[stop])).choices[0]
    assert whole.finish_reason == "stop" and whole.message.content in (free[: free.index(stop)], free[: free.index(stop, 3)])
    streamed = client.run(model_id, ask("Hello", max_tokens=16, stop=[stop], stream=True)).get_final_completion()
    assert streamed.choices[0].message.content == whole.message.content


@pytest.mark.parametrize("model_id", BOTH)
def test_images_on_the_device(client, model_id):
    big = {"type": "image_url", "image_url": {"url": png_data_uri((30, 160, 90), size=(448, 448))}}
    red = {"type": "image_url", "image_url": {"url": png_data_uri((220, 20, 20))}}
    one = client.run(model_id, {**HELLO, "max_tokens": 8, "messages": [{"role": "user", "content": [big, {"type": "text", "text": "What is this?"}]}]})
    two = client.run(model_id, {**HELLO, "max_tokens": 8, "messages": [{"role": "user", "content": [big, red, {"type": "text", "text": "What is this?"}]}]})
    assert two.usage.prompt_tokens > one.usage.prompt_tokens
    again = client.run(model_id, {**HELLO, "max_tokens": 8, "messages": [{"role": "user", "content": [big, {"type": "text", "text": "What is this?"}]}]})
    assert text(again) == text(one)
    after = client.run(model_id, {**HELLO, "messages": [{"role": "user", "content": [red]}, {"role": "assistant", "content": "A red square."}, {"role": "user", "content": "And now?"}]})
    assert after.usage.completion_tokens >= 1
    assert text(client.run(model_id, HELLO)) == text(client.run(model_id, HELLO))  # text after images: unchanged state


def test_out_of_memory_fails_only_that_request(client, gpu_device):
    """A request that does not fit fails with the SDK's error saying so; what it held is given
    back, and the next requests (text and image) are served under the same memory cap."""
    cuda_only()
    import torch

    dev = torch.device(gpu_device)
    before = text(client.run(QWEN, HELLO))
    small_image = with_image((20, 20, 220))
    image_answer = text(client.run(QWEN, small_image))
    huge = {**HELLO, "max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri((90, 30, 160), size=(3584, 3584))}}, {"type": "text", "text": "What?"}]}]}
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    # 64 MiB more than the process holds now: a small request fits; 16,384 image tokens do not
    # (the pixels alone are 65,536 patches x 1,176 values).
    cap = torch.cuda.memory_reserved(dev) + (64 << 20)
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(dev).total_memory, dev)
    try:
        with pytest.raises(azion_ai.AzionAIError) as failed:
            client.run(QWEN, huge)
        assert "memory" in str(failed.value).lower(), failed.value
        assert not isinstance(failed.value, azion_ai.ValidationError)
        assert text(client.run(QWEN, HELLO)) == before
        assert text(client.run(QWEN, small_image)) == image_answer
        with pytest.raises(azion_ai.AzionAIError, match="(?i)memory"):
            client.run(QWEN, {**huge, "stream": True}).get_final_completion()
        assert text(client.run(QWEN, {**HELLO, "stream": True}).get_final_completion()) == before
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)


def test_lora_adapters_switch_per_request(gpu_dirs, gpu_device, tmp_path_factory):
    from checkpoints import build_lora_adapter

    root = tmp_path_factory.mktemp("gpu-lora")
    adapters = {
        "q": build_lora_adapter(QWEN, gpu_dirs[QWEN], root / "q", seed=3),
        "i": build_lora_adapter(INTERNVL, gpu_dirs[INTERNVL], root / "i", seed=5),
    }
    for path in PATHS.values():
        with AI(backend="local", models=models_of(gpu_dirs), device=gpu_device, lora_adapters={k: str(v) for k, v in adapters.items()}, **path) as ai:
            for model_id, name in ((QWEN, "q"), (INTERNVL, "i")):
                base = text(ai.run(model_id, HELLO))
                tuned = text(ai.run(model_id, HELLO, lora=name))
                assert tuned != base, path
                assert text(ai.run(model_id, HELLO)) == base  # the adapter is off again
                assert text(ai.run(model_id, {**HELLO, "stream": True}, lora=name).get_final_completion()) == tuned


def test_two_compiled_models_in_one_process_answer_as_eager(gpu_dirs, gpu_device):
    """Both models compiled in one AI, both answering at once, then a second compiled AI in the
    same process: the same greedy answers as the eager path (CUDA graphs keep per-thread state)."""
    payloads = [HELLO, ask("Tell me about Paris and Rome " * 20, max_tokens=24), with_image((200, 120, 40))]
    models = models_of(gpu_dirs)
    with AI(backend="local", models=models, device=gpu_device, compile=False) as eager:
        expected = {(m, i): text(eager.run(m, p)) for m in BOTH for i, p in enumerate(payloads)}
    for _ in range(2):  # a new AI in the same process
        with AI(backend="local", models=models, device=gpu_device, compile=True) as fast:
            got = {(m, i): text(fast.run(m, p)) for m in BOTH for i, p in enumerate(payloads)}
            assert got == expected
            results: dict = {}
            errors: list = []

            def one(model_id, i, results=results, errors=errors):
                try:
                    results[(model_id, i)] = text(fast.run(model_id, payloads[i]))
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=one, args=(m, i)) for m in BOTH for i in range(len(payloads)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert not errors and results == expected


# --- AWQ through gptqmodel's CUDA kernels (where gptqmodel installs) ------------------------


def test_awq_uses_a_cuda_kernel_and_generates(tiny_dirs, gpu_device):
    cuda_only()
    needs_gptqmodel()
    import gc

    import torch

    with AI(backend="local", models=models_of(tiny_dirs), device=gpu_device) as ai:
        ai.transport.load(QWEN)
        # the loaded modules, whatever holds them: gptqmodel's layers, and the vision tower
        loaded = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]
        kinds = {type(m).__name__ for m in loaded if type(m).__module__.startswith("gptqmodel")}
        assert kinds and "AwqTorchLinear" not in kinds, kinds  # a CUDA kernel, not the CPU fallback
        towers = [m for m in loaded if type(m).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"]
        assert towers and all(type(t.blocks[0].attn.qkv) is torch.nn.Linear for t in towers)  # not quantized
        payload = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri(size=(448, 448))}}, {"type": "text", "text": "What is this?"}]}], "max_tokens": 8, "temperature": 0}
        done = ai.run(QWEN, payload)
        assert done.usage.completion_tokens == 8
        assert text(ai.run(QWEN, {**payload, "stream": True}).get_final_completion()) == text(done)


def test_cuda_and_cpu_agree_on_the_tiny_checkpoint(tiny_dirs, gpu_device):
    cuda_only()
    """The first token's distribution on CUDA (bf16) matches the CPU's (float32) within bf16's
    precision: the same top tokens, logprobs within 0.1."""
    payload = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    tops = []
    for device in ("cpu", gpu_device):
        with AI(backend="local", models={INTERNVL: str(tiny_dirs[INTERNVL])}, device=device) as ai:
            entry = ai.run(INTERNVL, payload).choices[0].logprobs.content[0]
            tops.append({t.token: t.logprob for t in entry.top_logprobs})
    cpu, cuda = tops
    assert next(iter(cuda)) in cpu  # CUDA's greedy token is among the CPU's best five
    shared = set(cpu) & set(cuda)
    assert len(shared) >= 3 and all(abs(cpu[t] - cuda[t]) < 0.1 for t in shared), (cpu, cuda)


def test_cuda_awq_kernels_load_or_say_why(tiny_dirs, gpu_device):
    """Every kernel the option names either runs Qwen2.5-VL-AWQ or fails its load with a clear error."""
    cuda_only()
    needs_gptqmodel()
    payload = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 6, "temperature": 0}
    worked = {}
    for kernel in ("auto", "marlin", "machete", "exllama_v2", "gemm", "gemm_triton", "torch_awq"):
        with AI(backend="local", models={QWEN: str(tiny_dirs[QWEN])}, device=gpu_device, awq_kernel=kernel) as ai:
            try:
                done = ai.run(QWEN, payload)
            except azion_ai.ModelLoadError as exc:
                assert kernel in str(exc)
                continue
            assert done.usage.completion_tokens == 6
            worked[kernel] = True
    assert "auto" in worked and ({"marlin", "gemm", "exllama_v2"} & set(worked)), worked


def test_compiled_awq_decoding_with_cuda_graphs_matches_eager(tiny_dirs, gpu_device):
    cuda_only()
    needs_gptqmodel()
    models = {QWEN: str(tiny_dirs[QWEN])}
    with AI(backend="local", models=models, device=gpu_device, compile=False) as ai:
        expected = text(ai.run(QWEN, ask("Name the european capitals")))
    with AI(backend="local", models=models, device=gpu_device, compile=True) as ai:
        assert text(ai.run(QWEN, ask("Name the european capitals"))) == expected
        assert text(ai.run(QWEN, ask("Name the european capitals"))) == expected
