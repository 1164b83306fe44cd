"""What every engine of the local transport must do, written once and run on each engine.

``tests/test_engine_behaviour.py`` runs these on ``engine="transformers"`` (in ``.venv``) and
``tests/engine_vllm/test_engine_behaviour.py`` on ``engine="vllm"`` (in ``.venv-vllm``). A module
that imports them provides ``engine_client``: a sync ``AI`` on the tiny checkpoints of both
models, float32. Nothing here knows which engine answers.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest

import azion_ai
from azion_ai import AsyncAI

QWEN = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL = "opengvlab-internvl3-1b-instruct"
BOTH = [QWEN, INTERNVL]
HELLO = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 12, "temperature": 0}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
}


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(text: str, **extra) -> dict:
    return {**HELLO, "messages": [{"role": "user", "content": text}], **extra}


def with_image(color, text="What is in this image?", **extra) -> dict:
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": png(color)}}]
    return {**HELLO, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def settled(count, *, quiet=1.0, limit=60.0) -> int:
    """``count()`` once it has stopped growing for ``quiet`` seconds (an engine that stopped a
    job feeds it no more tokens), or where it reached after ``limit`` seconds: proof that an
    abandoned request stopped, whatever answers next."""
    deadline = time.monotonic() + limit
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


@pytest.fixture
def token_counts(monkeypatch):
    """Tokens each response received, by response id (both engines feed the same builder)."""
    from azion_ai._local import _response

    counts: dict[str, int] = {}
    original = _response.ResponseBuilder.add

    def counting(self, index, tid, logprob=None):
        counts[self.id] = counts.get(self.id, 0) + 1
        return original(self, index, tid, logprob)

    monkeypatch.setattr(_response.ResponseBuilder, "add", counting)
    return counts


@pytest.mark.parametrize("model_id", BOTH)
def test_a_whole_answer(engine_client, model_id):
    done = engine_client.run(model_id, HELLO)
    assert isinstance(done, azion_ai.ChatCompletion) and done.model == model_id and done.id.startswith("chatcmpl-")
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("length", "stop")
    assert done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 5
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert engine_client.run(model_id, HELLO).choices[0].message.content == choice.message.content  # greedy repeats


@pytest.mark.parametrize("model_id", BOTH)
def test_a_stream_adds_up_to_the_whole_answer(engine_client, model_id):
    whole = engine_client.run(model_id, HELLO)
    chunks = list(engine_client.run(model_id, {**HELLO, "stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("model_id", BOTH)
def test_an_image_changes_the_answer_and_counts_in_usage(engine_client, model_id):
    red, blue = engine_client.run(model_id, with_image((220, 20, 20))), engine_client.run(model_id, with_image((20, 20, 220)))
    text_only = engine_client.run(model_id, ask("What is in this image?", max_tokens=8))
    assert red.choices[0].message.content != blue.choices[0].message.content
    assert red.usage.prompt_tokens > text_only.usage.prompt_tokens + 1
    assert red.usage.prompt_tokens == blue.usage.prompt_tokens  # same size, same image tokens


def test_seeded_choices_differ_and_repeat(engine_client):
    payload = ask("Tell me a story", n=3, temperature=1.0, top_k=0, top_p=1.0, seed=5, max_tokens=8)
    first = engine_client.run(QWEN, payload)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len({c.message.content for c in first.choices}) > 1
    assert [c.message.content for c in engine_client.run(QWEN, payload).choices] == [c.message.content for c in first.choices]
    with pytest.raises(azion_ai.ValidationError, match="greedy"):
        engine_client.run(QWEN, ask("Hi", n=2))


def test_a_stream_of_n_choices_sends_one_choice_per_chunk(engine_client):
    """As vLLM and OpenAI stream n > 1: clients read ``chunk.choices[0]``, so a chunk holds one
    choice; read that way, each choice's text is the whole answer's."""
    payload = ask("Tell me a story", n=3, temperature=1.0, top_k=0, top_p=1.0, seed=5, max_tokens=8)
    whole = [c.message.content for c in engine_client.run(QWEN, payload).choices]
    texts = ["", "", ""]
    finished = []
    for chunk in engine_client.run(QWEN, {**payload, "stream": True}):
        if not chunk.choices:
            continue
        assert len(chunk.choices) == 1, chunk
        choice = chunk.choices[0]
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finished.append(choice.index)
    assert texts == whole and sorted(finished) == [0, 1, 2]


def _no_eos(engine_client, model_id):
    engine_client.transport.load(model_id)
    return {str(t): -100 for t in engine_client.transport._engines[model_id].checkpoint.eos_token_ids}


def test_closing_a_stream_stops_generation_and_the_model_answers_next(engine_client, token_counts):
    stream = engine_client.run(QWEN, ask("Count", max_tokens=3000, stream=True, logit_bias=_no_eos(engine_client, QWEN)))
    first = [next(stream), next(stream)]
    stream.close()
    reached = settled(lambda: token_counts.get(first[0].id, 0))
    assert reached < 200, f"the closed stream ran on for {reached} tokens"  # stopped, far from 3000
    after = engine_client.run(QWEN, HELLO)
    assert after.usage.completion_tokens == 12 and after.choices[0].finish_reason == "length"
    assert token_counts[first[0].id] == reached


def test_breaking_out_of_a_loop_and_timeouts_cancel(engine_client, token_counts):
    endless = ask("Go on", max_tokens=3000, logit_bias=_no_eos(engine_client, INTERNVL))
    for chunk in engine_client.run(INTERNVL, {**endless, "stream": True}):  # noqa: B007
        break
    reached = settled(lambda: token_counts.get(chunk.id, 0))
    assert reached < 200, f"the abandoned stream ran on for {reached} tokens"
    before = set(token_counts)
    with pytest.raises(azion_ai.APITimeoutError):
        engine_client.run(INTERNVL, endless, timeout=0.001)
    # the timed-out request (if it got as far as a token) stops too: no response keeps growing
    timed_out = settled(lambda: sum(n for k, n in token_counts.items() if k not in before))
    assert timed_out < 200, f"the timed-out request ran on for {timed_out} tokens"
    after = engine_client.run(INTERNVL, HELLO)
    assert after.usage.completion_tokens == 12 and after.choices[0].finish_reason == "length"
    assert token_counts[chunk.id] == reached


def test_concurrent_requests_never_mix(engine_client):
    prompts = [f"Tell me about {w}" for w in ("Paris", "Rome", "the fox", "London", "cats", "tools")]
    expected = {p: engine_client.run(QWEN, ask(p)).choices[0].message.content for p in prompts}
    assert len(set(expected.values())) > 1
    results, errors = {}, []

    def one(prompt, stream):
        try:
            out = engine_client.run(QWEN, ask(prompt, stream=stream))
            results[(prompt, stream)] = (out.get_final_completion() if stream else out).choices[0].message.content
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p, s)) for p in prompts for s in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results == {(p, s): expected[p] for p in prompts for s in (False, True)}


def test_async_run_stream_and_cancel(engine_client):
    import asyncio

    async def go():
        aai = AsyncAI(transport=engine_client.transport)  # the same engines; not closed here
        whole = await aai.run(INTERNVL, HELLO)
        pieces = [c.choices[0].delta.content or "" async for c in await aai.run(INTERNVL, {**HELLO, "stream": True}) if c.choices]
        assert "".join(pieces) == whole.choices[0].message.content
        task = asyncio.create_task(aai.run(INTERNVL, ask("Go on", max_tokens=3000)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await aai.run(INTERNVL, HELLO)).choices[0].message.content == whole.choices[0].message.content

    asyncio.run(go())


CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": False}


def test_forced_tool_calls_and_json_output(engine_client):
    """The grammar decides the shape whatever the random weights want (engine_client allows no
    free whitespace in JSON, so the answers end)."""
    strict = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {**CITY, "properties": {"location": CITY["properties"]["city"]}, "required": ["location"]}}}
    forced = engine_client.run(QWEN, ask("Weather in Paris?", tools=[strict], tool_choice="required", parallel_tool_calls=False, max_tokens=60))
    calls = forced.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather" and forced.choices[0].finish_reason == "tool_calls"
    assert json.loads(calls[0].function.arguments)["location"] in ("Paris", "Rome")
    named = engine_client.run(QWEN, ask("Weather?", tools=[WEATHER, strict], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60))
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["get_weather"]
    payload = ask("A city, as JSON", response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}, max_tokens=60)
    out = engine_client.run(QWEN, payload).choices[0]
    assert out.finish_reason == "stop" and json.loads(out.message.content)["city"] in ("Paris", "Rome")


@pytest.mark.parametrize("model_id", BOTH)
def test_a_grammar_holds_for_every_sampled_choice(engine_client, model_id):
    """n sampled choices under one JSON schema: each ends when its JSON does, while the others go
    on (a finished choice's grammar must not be asked for another token)."""
    from jsonschema import validate

    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}
    for seed in (1, 2, 3):
        payload = ask("A city, as JSON", n=3, seed=seed, temperature=1.0, top_p=1.0, top_k=0, max_tokens=60, response_format=fmt)
        done = engine_client.run(model_id, payload)
        for choice in done.choices:
            validate(json.loads(choice.message.content), CITY)
            assert choice.finish_reason == "stop"


def test_stop_strings_and_logprobs(engine_client):
    free = engine_client.run(QWEN, ask("Hello", max_tokens=16)).choices[0].message.content
    stop = next((ch for ch in free[3:] if ch.strip()), None)
    assert stop is not None
    cut = engine_client.run(QWEN, ask("Hello", max_tokens=16, stop=[stop])).choices[0]
    assert cut.message.content == free[: free.index(stop, 3)] or cut.message.content == free[: free.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    lp = engine_client.run(QWEN, ask("Hello", max_tokens=4, logprobs=True, top_logprobs=2)).choices[0].logprobs["content"]
    assert len(lp) == 4 and all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in lp)


def test_bad_requests_fail_clearly_and_leave_the_model_usable(engine_client):
    before = engine_client.run(QWEN, HELLO)
    with pytest.raises(azion_ai.ValidationError, match="context length"):
        engine_client.run(QWEN, ask("Hi", max_tokens=10**6))
    with pytest.raises(azion_ai.ValidationError, match="maximum context length"):
        engine_client.run(QWEN, ask("word " * 5000, max_tokens=2))
    with pytest.raises(azion_ai.ValidationError, match="best_of"):
        engine_client.run(QWEN, {**HELLO, "best_of": 2}, validate=False)
    with pytest.raises(azion_ai.LocalBackendError, match="unknown LoRA adapter"):
        engine_client.run(QWEN, HELLO, lora="nope")
    with pytest.raises(azion_ai.AzionAIError, match="refused"):
        engine_client.run(QWEN, {**HELLO, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]}]})
    after = engine_client.run(QWEN, HELLO)  # greedy: the same answer as before the failures
    assert (after.choices[0].message.content, after.usage) == (before.choices[0].message.content, before.usage)
    assert after.usage.completion_tokens == 12


@pytest.mark.parametrize("model_id", BOTH)
def test_image_budgets_bound_the_image_tokens(engine_client, model_id, monkeypatch):
    """max_image_pixels (Qwen2.5-VL) / max_image_tiles (InternVL3) reach the engine's image
    processor: a large image costs far fewer tokens under them."""
    from PIL import Image

    from azion_ai._local._request import ImageLimits

    buf = io.BytesIO()
    Image.new("RGB", (1024, 768), (90, 30, 160)).save(buf, "PNG")
    big = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    payload = {**HELLO, "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": big}}, {"type": "text", "text": "What?"}]}]}
    text_only = engine_client.run(model_id, {**HELLO, "max_tokens": 1, "messages": [{"role": "user", "content": "What?"}]}).usage.prompt_tokens
    free = engine_client.run(model_id, payload).usage.prompt_tokens - text_only
    limits = ImageLimits(max_pixels=64 * 28 * 28) if model_id == QWEN else ImageLimits(max_tiles=1)
    monkeypatch.setattr(engine_client.transport, "image_limits", limits)
    bounded = engine_client.run(model_id, payload).usage.prompt_tokens - text_only
    assert bounded < free / 3
    if model_id == QWEN:
        assert bounded <= 64 + 2  # image pads + vision start/end
