"""The remote transport against the real thing: vLLM's OpenAI server, started as docs/scaling.md
says (the AWQ checkpoint, hermes tool parsing), plus the flags a CPU needs.

Everything a user of the remote backend does: whole and streamed answers, images, tools, the
errors vLLM returns mapped to the SDK's exceptions, and a stream closed mid-way, after which
the client and the server keep working. Sync and async.
"""

from __future__ import annotations

import pytest
import vllm_reference
from conformance import WEATHER, greedy, img, require_vllm, text, user
from conftest import QWEN_ID

import azion_ai
from azion_ai import AI, AsyncAI

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# docs/scaling.md: `vllm serve ... --tool-call-parser hermes --enable-auto-tool-choice --max-model-len N`
DOCUMENTED_FLAGS = ("--tool-call-parser", "hermes", "--enable-auto-tool-choice")


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    require_vllm()
    where = tmp_path_factory.mktemp("vllm-remote")
    # AWQ runs in float16 on vLLM's CPU kernels ("auto" picks it from the checkpoint)
    with vllm_reference.VLLMServer(
        tiny_dirs[QWEN_ID], QWEN_ID, dtype="auto", max_model_len=2048, extra_args=DOCUMENTED_FLAGS, log_path=where / "vllm.log"
    ) as running:
        yield running


@pytest.fixture
def ai(server):
    with AI(base_url=server.base_url, max_retries=0) as client:
        yield client


def test_whole_answer(ai):
    completion = ai.run(QWEN_ID, greedy([user("Name the european capitals")], max_tokens=8))
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage.completion_tokens == 8
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content


def test_stream_with_usage(ai):
    payload = {**greedy([user(text("What is in this image?"), img((64, 48)))], max_tokens=6), "stream": True, "stream_options": {"include_usage": True}}
    with ai.run(QWEN_ID, payload) as stream:
        chunks = list(stream)
        final = stream.get_final_completion()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert final.usage.prompt_tokens == chunks[-1].usage.prompt_tokens
    whole = ai.run(QWEN_ID, {k: v for k, v in payload.items() if k not in ("stream", "stream_options")})
    assert final.choices[0].message.content == whole.choices[0].message.content


def _raw(server, payload):
    """vLLM's own answer to the same request, read as plain JSON: the reference the SDK's parse must equal."""
    import httpx

    return httpx.post(f"{server.base_url}/chat/completions", json={"model": QWEN_ID, **payload}, timeout=300)


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_tools_payload(ai, server, tool_choice):
    payload = greedy([user("What is the weather in London?")], tools=[WEATHER], tool_choice=tool_choice, max_tokens=40)
    completion = ai.run(QWEN_ID, payload)
    expected = _raw(server, payload).json()
    choice, want = completion.choices[0], expected["choices"][0]
    assert choice.finish_reason == want["finish_reason"]
    assert choice.message.content == want["message"]["content"]
    assert [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        (c["type"], c["function"]["name"], c["function"]["arguments"]) for c in want["message"].get("tool_calls") or []
    ]
    assert all(c.id.startswith("chatcmpl-tool-") for c in choice.message.tool_calls)  # vLLM's ids (new each request)
    assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"] > 100  # the tools section was rendered
    if tool_choice == "required":  # vLLM's structured output: a call to the one tool, whatever the model
        assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]


@pytest.mark.parametrize(
    ("payload", "error", "status"),
    [
        (greedy([user("Hi")], max_tokens=5000), azion_ai.BadRequestError, 400),
        (greedy([user(text("What?"), {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}})]), azion_ai.BadRequestError, 400),
        (greedy([user(" ".join(["Paris"] * 2100))], max_tokens=4), azion_ai.BadRequestError, 400),
    ],
)
def test_vllm_errors_map_to_the_sdks_exceptions(ai, server, payload, error, status):
    with pytest.raises(error) as caught:
        ai.run(QWEN_ID, payload)
    raw = _raw(server, payload)
    assert caught.value.status_code == raw.status_code == status
    body = raw.json()
    message = body.get("error", body)["message"]
    assert message and message in str(caught.value)  # the server's own message is carried


def test_unknown_model_on_the_server_is_not_found(server):
    from azion_ai import ModelInfo, get_model, register_model

    info = get_model(QWEN_ID)
    register_model(ModelInfo(**{**info.__dict__, "id": "not-served-here"}), replace=True)
    with AI(base_url=server.base_url, max_retries=0) as client, pytest.raises(azion_ai.NotFoundError):
        client.run("not-served-here", greedy([user("Hi")]))


LONG = greedy([user("Count to a thousand")], max_tokens=1900)


def _generated(server) -> float:
    return server.metric("vllm:generation_tokens_total")


def _settled(server) -> float:
    """Generated-token count once no request is running any more."""
    import time

    deadline = time.monotonic() + 60
    while server.metric("vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return _generated(server)


@pytest.fixture(scope="module")
def whole_length(server):
    """How many tokens LONG generates when nobody stops it."""
    with AI(base_url=server.base_url, max_retries=0) as client:
        return client.run(QWEN_ID, LONG).usage.completion_tokens


def test_closing_a_stream_midway_aborts_it_and_the_server_keeps_serving(ai, server, whole_length):
    before = _settled(server)
    with ai.run(QWEN_ID, {**LONG, "stream": True}) as stream:
        next(iter(stream))
    # the connection closed with the stream: vLLM aborted the request well before its end
    assert _settled(server) - before < whole_length / 2
    assert ai.run(QWEN_ID, greedy([user("Hi")], max_tokens=2)).usage.completion_tokens == 2


async def test_async_whole_stream_and_cancel(server, whole_length):
    async with AsyncAI(base_url=server.base_url, max_retries=0) as aai:
        whole = await aai.run(QWEN_ID, greedy([user("Hello, world!")], max_tokens=5))
        stream = await aai.run(QWEN_ID, {**greedy([user("Hello, world!")], max_tokens=5), "stream": True})
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces) == whole.choices[0].message.content
        before = _settled(server)
        stream = await aai.run(QWEN_ID, {**LONG, "stream": True})
        async for _ in stream:
            break
        await stream.aclose()
        assert _settled(server) - before < whole_length / 2
        again = await aai.run(QWEN_ID, greedy([user("Hi")], max_tokens=2))
        assert again.usage.completion_tokens == 2
