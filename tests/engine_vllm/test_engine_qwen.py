"""engine="vllm" on Qwen2.5-VL: the same ``ai.run``, answered by vLLM's engine in-process, checked
token for token against vLLM's own OpenAI server on the same checkpoint (float32, both sides)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import vllm_reference
from conformance import COMMON, MAX_MODEL_LEN, QWEN_TOOLS, answer, greedy, img, text, user
from conftest import engine_ai, engine_cores_started, failures_until_dead, kill

QWEN_ID = "qwen-qwen25-vl-3b-instruct-awq"
CATALOGUE = {**COMMON, **QWEN_TOOLS}
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def server(tiny_dirs, lora_dir, tmp_path_factory):
    args = ("--tool-call-parser", "hermes", "--enable-auto-tool-choice", "--enable-lora", "--max-lora-rank", "8", "--lora-modules", f"tiny={lora_dir}")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_reference.VLLMServer(tiny_dirs[QWEN_ID] / "reference", QWEN_ID, max_model_len=MAX_MODEL_LEN, extra_args=args, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def ai(tiny_dirs, lora_dir):
    client = engine_ai(QWEN_ID, tiny_dirs[QWEN_ID] / "reference", lora_adapters={"tiny": str(lora_dir)})
    yield client
    client.close()


def ours(ai, payload, **options):
    return ai.run(QWEN_ID, payload, **options).model_dump(mode="json")


def theirs(server, payload, model=None):
    response = server.chat({**payload, "model": model} if model else payload)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_greedy_answers_as_vllms_server(ai, server, name):
    """Text and images, tools and tool history, penalties, generation_config defaults: the same
    prompt tokens, text, completion tokens, tool calls and finish reason."""
    payload = CATALOGUE[name]
    assert answer(ours(ai, payload)) == answer(theirs(server, payload))


def test_stream_adds_up_to_the_whole_answer(ai, server):
    payload = CATALOGUE["image_after_text"]
    chunks = list(ai.run(QWEN_ID, {**payload, "stream": True, "stream_options": {"include_usage": True}}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = theirs(server, payload)
    assert content == whole["choices"][0]["message"]["content"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole["choices"][0]["finish_reason"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole["usage"]["completion_tokens"]


def test_streamed_tool_calls_match_the_whole_answer(ai, server):
    """Streamed, the same calls as whole, and both vLLM's server's (a required choice: the random
    model really calls the tool, so the calls themselves are compared)."""
    from azion_ai import ChunkAccumulator

    tool = {  # arguments held to the schema (an enum: the random model finishes quickly)
        "type": "function",
        "function": {
            "name": "get_weather",
            "strict": True,
            "parameters": {"type": "object", "properties": {"location": {"type": "string", "enum": ["Paris", "London"]}}, "required": ["location"], "additionalProperties": False},
        },
    }
    payload = greedy([{"role": "system", "content": "Use the tools."}, user("Weather in London?")], tools=[tool], tool_choice="required", parallel_tool_calls=False, max_tokens=80)
    whole = ai.run(QWEN_ID, payload)
    acc = ChunkAccumulator()
    for chunk in ai.run(QWEN_ID, {**payload, "stream": True}):
        acc.add(chunk)
    streamed = acc.completion()

    def calls(completion):
        return [(c.function.name, c.function.arguments) for c in completion.choices[0].message.tool_calls]

    reference = theirs(server, payload)["choices"][0]
    expected = [(c["function"]["name"], c["function"]["arguments"]) for c in reference["message"]["tool_calls"]]
    assert expected and calls(whole) == expected
    assert calls(streamed) == expected
    assert streamed.choices[0].message.content == whole.choices[0].message.content
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason == reference["finish_reason"]


def test_seeded_sampling_with_n_choices_is_vllms(ai, server):
    """n > 1 sampled with a seed: vLLM seeds each choice (seed + index), here as in its server."""
    payload = {"messages": [user("Tell me a story")], "max_tokens": 10, "n": 3, "seed": 11, **SAMPLED}
    first = ours(ai, payload)
    assert len(first["choices"]) == 3
    assert len({c["message"]["content"] for c in first["choices"]}) > 1
    assert answer(first) == answer(theirs(server, payload)) == answer(ours(ai, payload))


def test_logprobs_and_structured_output_as_vllm(ai, server):
    with_logprobs = greedy([user("Hello there")], max_tokens=6, logprobs=True, top_logprobs=3)
    a, b = ours(ai, with_logprobs), theirs(server, with_logprobs)
    mine, vllms = a["choices"][0]["logprobs"]["content"], b["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in mine] == [e["token"] for e in vllms]
    assert [[t["token"] for t in e["top_logprobs"]] for e in mine] == [[t["token"] for t in e["top_logprobs"]] for e in vllms]
    assert all(abs(x["logprob"] - y["logprob"]) < 1e-3 for x, y in zip(mine, vllms, strict=True))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    for extra in (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}},
        {"tools": [QWEN_TOOLS["tools_no_system"]["tools"][0]], "tool_choice": "required"},
        {"stop": ["a", "e"]},
    ):
        payload = greedy([user("Where is it?")], max_tokens=24, **extra)
        assert answer(ours(ai, payload)) == answer(theirs(server, payload)), extra


def test_lora_requests_answer_as_vllms_lora(ai, server):
    payload = greedy([user("Hello there, who are you?")], max_tokens=12)
    with_adapter = ours(ai, payload, lora="tiny")
    assert answer(with_adapter) == answer(theirs(server, payload, model="tiny"))
    assert answer(with_adapter) != answer(ours(ai, payload))


def _unfinished(ai) -> int:
    return int(ai.transport._engines[QWEN_ID]._engine.output_processor.get_num_unfinished_requests())


def _long(ai) -> dict:
    eos = ai.transport._engines[QWEN_ID].checkpoint.eos_token_ids
    return greedy([user("Count forever")], max_tokens=3000, logit_bias={str(t): -100 for t in eos})


def test_closing_a_stream_aborts_it_in_the_engine(ai):
    stream = ai.run(QWEN_ID, {**_long(ai), "stream": True})
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    assert _unfinished(ai) == 1
    stream.close()
    deadline = time.monotonic() + 10
    while _unfinished(ai) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _unfinished(ai) == 0
    assert ai.run(QWEN_ID, greedy([user("Hi")], max_tokens=3)).usage.completion_tokens == 3


def test_a_cancelled_async_request_is_aborted(ai):
    from azion_ai import AsyncAI

    async def go():
        aai = AsyncAI(transport=ai.transport)  # shares the module's engine (not closed here)
        task = asyncio.create_task(aai.run(QWEN_ID, _long(ai)))
        while _unfinished(ai) == 0:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if not _unfinished(ai):
                break
            await asyncio.sleep(0.05)
        assert _unfinished(ai) == 0
        assert (await aai.run(QWEN_ID, greedy([user("Hi")], max_tokens=2))).usage.completion_tokens == 2

    asyncio.run(go())


def test_sixteen_concurrent_requests_without_cross_talk_and_a_free_event_loop(ai, server):
    """16 requests at once from one event loop: each gets its own answer (vLLM's server's, one
    by one), and the loop keeps running while vLLM works."""
    from azion_ai import AsyncAI

    payloads = [greedy([user(f"Question {i}: " + "why " * i)], max_tokens=8 + i % 5) for i in range(16)]
    expected = [answer(theirs(server, p)) for p in payloads]
    ticks = 0

    async def ticker(stop: asyncio.Event):
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def go():
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        aai = AsyncAI(transport=ai.transport)  # shares the module's engine (not closed here)
        started = time.monotonic()
        results = await asyncio.gather(*(aai.run(QWEN_ID, p) for p in payloads))
        elapsed = time.monotonic() - started
        stop.set()
        await tick
        return [r.model_dump(mode="json") for r in results], elapsed

    results, elapsed = asyncio.run(go())
    assert [answer(r) for r in results] == expected
    assert ticks >= elapsed / 0.01 * 0.3  # the loop was never blocked for long


def test_private_image_urls_are_refused_with_nothing_fetched(tiny_dirs, ai, monkeypatch):
    """Our image loader runs before vLLM sees anything: vLLM never fetches a URL itself."""
    import azion_ai
    from azion_ai._local._engine_vllm import VLLMEngine
    from azion_ai._local._images import ImageLoader, ImagePolicy

    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, content=b"x"))
    loader = ImageLoader(ImagePolicy(), resolver=lambda host, port: ["10.1.2.3"], http_transport=transport)
    submitted: list = []
    monkeypatch.setattr(VLLMEngine, "submit", lambda self, job: submitted.append(job))
    backend = ai.transport
    monkeypatch.setattr(backend, "images", loader)
    for url in ("http://intranet.example/cat.png", "http://169.254.169.254/latest/meta-data"):
        payload = greedy([user(text("What is this?"), {"type": "image_url", "image_url": {"url": url}})])
        with pytest.raises(azion_ai.AzionAIError, match="refused"):
            ai.run(QWEN_ID, payload)
    assert sent == [] and submitted == []


def test_errors_leave_the_engine_usable(ai):
    import azion_ai

    with pytest.raises(azion_ai.ValidationError, match="maximum context length"):
        ai.run(QWEN_ID, greedy([user("word " * 5000)], max_tokens=4))
    with pytest.raises(azion_ai.ValidationError, match="max_tokens"):
        ai.run(QWEN_ID, greedy([user("Hi")], max_tokens=MAX_MODEL_LEN + 1))
    with pytest.raises(azion_ai.ValidationError, match="n must be 1"):
        ai.run(QWEN_ID, greedy([user("Hi")], n=2))
    assert ai.run(QWEN_ID, greedy([user("Hi")], max_tokens=2)).usage.completion_tokens == 2


def test_output_stops_at_the_context_as_vllms_server(ai, server):
    """A prompt that fits, with max_tokens beyond what is left: output stops at the context."""
    per_100 = server.tokenize_chat(greedy([user("word " * 200)]))["count"] - server.tokenize_chat(greedy([user("word " * 100)]))["count"]
    payload = greedy([user("word " * int((MAX_MODEL_LEN - 150) * 100 / per_100))], max_tokens=500)
    assert MAX_MODEL_LEN - 500 < server.tokenize_chat(payload)["count"] < MAX_MODEL_LEN
    mine = ours(ai, payload)
    assert mine["choices"][0]["finish_reason"] == "length"
    assert mine["usage"]["prompt_tokens"] + mine["usage"]["completion_tokens"] == MAX_MODEL_LEN
    assert answer(mine) == answer(theirs(server, payload))


def test_the_awq_checkpoint_runs_vllms_awq_kernels_and_its_twin_unquantized(tiny_dirs, ai):
    """Quantization comes from each checkpoint's own config."""
    assert ai.transport._engines[QWEN_ID].quantization is None
    awq = engine_ai(QWEN_ID, tiny_dirs[QWEN_ID], engine_options={"dtype": "float16"})
    try:
        result = awq.run(QWEN_ID, greedy([user(text("What is in this image?"), img((64, 64), 3))], max_tokens=4))
        assert result.usage.completion_tokens == 4
        assert awq.transport._engines[QWEN_ID].quantization == "awq"
    finally:
        awq.close()
    assert threading.active_count() < 50


def test_a_dead_engine_is_replaced_by_the_next_request(tiny_dirs):
    """vLLM's engine process killed (as by the OOM killer) while idle, before its first request:
    the requests that meet it fail with the SDK's error instead of waiting forever (vLLM never
    answers a request added while it notices the death), and the next one starts a fresh engine
    and is answered."""
    with engine_ai(QWEN_ID, tiny_dirs[QWEN_ID] / "reference") as ai:
        with engine_cores_started() as cores:
            ai.transport.load(QWEN_ID)
        old = ai.transport._engines[QWEN_ID]
        kill(cores)
        failures = failures_until_dead(old, lambda: ai.run(QWEN_ID, greedy([user("Hi")], max_tokens=2), timeout=30))
        assert all("stopped" in message for message in failures), failures
        again = ai.run(QWEN_ID, greedy([user("Hi")], max_tokens=2))
        assert again.usage.completion_tokens == 2
        assert ai.transport._engines[QWEN_ID] is not old and ai.transport._engines[QWEN_ID].alive
