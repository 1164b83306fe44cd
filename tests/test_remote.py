from __future__ import annotations

import json
import logging
import traceback

import httpx
import pytest
import respx
from conftest import TOKEN, require
from seeds import INTERNVL, QWEN, example_responses

import azion_ai
from azion_ai import AI, AsyncAI, AsyncStream, ChatCompletion, Stream

BASE = "https://edge.example.test/v1"
URL = BASE + "/chat/completions"
PAYLOAD = {"messages": [{"role": "user", "content": "Hi"}]}
COMPLETION = example_responses()[0]


def sse(*objs, done=True) -> bytes:
    body = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk_obj(content=None, finish=None, tool_calls=None, role=None):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": QWEN,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


CHUNKS = [chunk_obj("", role="assistant"), chunk_obj("Hello"), chunk_obj(", world"), chunk_obj(finish="stop")]


class TrackedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body split into given pieces that records whether it was closed."""

    def __init__(self, pieces, fail_after=None):
        self.pieces = pieces
        self.fail_after = fail_after
        self.closed = False
        self.sent = 0

    def __iter__(self):
        for i, piece in enumerate(self.pieces):
            if self.fail_after is not None and i == self.fail_after:
                raise httpx.ReadError("connection reset")
            self.sent += 1
            yield piece

    async def __aiter__(self):
        for piece in self.__iter__():
            yield piece

    def close(self):
        self.closed = True

    async def aclose(self):
        self.closed = True


@respx.mock
def test_non_stream_sends_the_payload_and_parses_the_completion():
    route = respx.post(URL).respond(200, json=COMPLETION)
    with AI(base_url=BASE, token=TOKEN) as ai:
        completion = ai.run(QWEN, PAYLOAD)
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content.startswith("Sure!")
    request = route.calls.last.request
    assert json.loads(request.content) == {**PAYLOAD, "model": QWEN}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["user-agent"].startswith("azion-ai-python/")
    assert request.headers["accept"] == "application/json"


@respx.mock
def test_environment_supplies_base_url_and_token(monkeypatch):
    monkeypatch.setenv("AZION_AI_BASE_URL", BASE + "/")
    monkeypatch.setenv("AZION_AI_TOKEN", TOKEN)
    route = respx.post(URL).respond(200, json=COMPLETION)
    azion_ai._default_client = None
    try:
        azion_ai.run(QWEN, PAYLOAD)
    finally:
        azion_ai._default_client = None
    assert route.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"


@respx.mock
def test_the_account_token_is_never_read_or_sent(monkeypatch):
    """AZION_TOKEN is Azion's account-wide API token: it must never leave implicitly."""
    monkeypatch.setenv("AZION_AI_BASE_URL", BASE)
    monkeypatch.setenv("AZION_TOKEN", "account-wide-secret-9d2e")
    route = respx.post(URL).respond(200, json=COMPLETION)
    with AI() as client:
        client.run(QWEN, PAYLOAD)
        assert "account-wide-secret-9d2e" not in repr(client)
    request = route.calls.last.request
    assert "authorization" not in request.headers
    assert b"account-wide-secret-9d2e" not in request.content


def test_missing_base_url_says_what_to_set():
    with pytest.raises(ValueError, match="AZION_AI_BASE_URL"):
        AI()


@respx.mock
def test_default_headers_and_no_token():
    route = respx.post(URL).respond(200, json=COMPLETION)
    AI(base_url=BASE, default_headers={"X-Team": "edge"}).run(QWEN, PAYLOAD)
    headers = route.calls.last.request.headers
    assert headers["x-team"] == "edge" and "authorization" not in headers


@respx.mock
def test_invalid_payload_sends_nothing():
    route = respx.post(URL).respond(200, json=COMPLETION)
    ai = AI(base_url=BASE)
    with pytest.raises(azion_ai.ValidationError):
        ai.run(QWEN, {"messages": [{"role": "user"}]})
    assert route.call_count == 0
    ai.run(QWEN, {"messages": [{"role": "user"}]}, validate=False)
    assert route.call_count == 1
    ai_no_validation = AI(base_url=BASE, validate=False)
    ai_no_validation.run(QWEN, {"messages": [], "anything": 1})
    assert route.call_count == 2


@respx.mock
def test_stream_yields_chunks_and_final_completion():
    body = TrackedStream([sse(*CHUNKS)])
    route = respx.post(URL).respond(200, headers={"content-type": "text/event-stream"}, stream=body)
    stream = AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True})
    assert isinstance(stream, Stream)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "Hello, world"
    assert body.closed
    assert route.calls.last.request.headers["accept"] == "text/event-stream"
    assert json.loads(route.calls.last.request.content)["stream"] is True


@respx.mock
def test_get_final_completion_after_partial_iteration():
    pieces = [sse(c, done=False) for c in CHUNKS] + [b"data: [DONE]\n\n"]
    respx.post(URL).respond(200, stream=TrackedStream(pieces))
    with AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True}) as stream:
        next(stream)
        next(stream)
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello, world"
    assert final.choices[0].finish_reason == "stop" and final.id == "chatcmpl-s"


@respx.mock
def test_breaking_out_of_a_with_block_releases_the_response():
    body = TrackedStream([sse(c, done=False) for c in CHUNKS] + [b"data: [DONE]\n\n"])
    respx.post(URL).respond(200, stream=body)
    with AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True}) as stream:
        for _ in stream:
            break
    assert body.closed and body.sent < len(body.pieces)


@respx.mock
def test_abandoned_stream_is_released_when_collected():
    body = TrackedStream([sse(c, done=False) for c in CHUNKS] + [b"data: [DONE]\n\n"])
    respx.post(URL).respond(200, stream=body)
    for _ in AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True}):
        break
    assert body.closed


@respx.mock
def test_stream_without_done_is_an_error_not_a_short_answer():
    respx.post(URL).respond(200, stream=TrackedStream([sse(*CHUNKS[:2], done=False)]))
    stream = AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True})
    with pytest.raises(azion_ai.StreamError, match="DONE"):
        list(stream)


@respx.mock
def test_in_band_error_event_raises():
    error = {"object": "error", "message": "model overloaded", "type": "ServiceUnavailable", "code": 503}
    respx.post(URL).respond(200, stream=TrackedStream([sse(CHUNKS[0], error, done=False)]))
    stream = AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True})
    assert next(stream).choices[0].delta.role == "assistant"
    with pytest.raises(azion_ai.StreamError, match="model overloaded"):
        next(stream)


@respx.mock
def test_stream_is_never_retried_after_its_first_byte(no_sleep):
    body = TrackedStream([sse(CHUNKS[0], done=False), sse(CHUNKS[1], done=False)], fail_after=1)
    route = respx.post(URL).respond(200, stream=body)
    stream = AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True})
    with pytest.raises(azion_ai.APIConnectionError):
        list(stream)
    assert route.call_count == 1 and body.closed and no_sleep == []


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, azion_ai.BadRequestError),
        (401, azion_ai.AuthenticationError),
        (403, azion_ai.PermissionDeniedError),
        (404, azion_ai.NotFoundError),
        (413, azion_ai.RequestTooLargeError),
        (422, azion_ai.UnprocessableEntityError),
        (418, azion_ai.APIStatusError),
    ],
)
@respx.mock
def test_status_codes_map_to_exceptions_without_retry(status, cls, no_sleep):
    route = respx.post(URL).respond(
        status, json={"error": {"message": f"nope {status}"}}, headers={"x-request-id": "req-9"}
    )
    with pytest.raises(cls) as info:
        AI(base_url=BASE).run(QWEN, PAYLOAD)
    assert info.value.status_code == status and info.value.request_id == "req-9"
    assert f"nope {status}" in str(info.value)
    assert route.call_count == 1 and no_sleep == []


@respx.mock
def test_vllm_error_shape_is_understood():
    body = {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400}
    respx.post(URL).respond(400, json=body)
    with pytest.raises(azion_ai.BadRequestError, match="max_tokens is too large") as info:
        AI(base_url=BASE).run(QWEN, PAYLOAD)
    assert info.value.body == body


@pytest.mark.parametrize(
    ("status", "cls"),
    [(429, azion_ai.RateLimitError), (500, azion_ai.InternalServerError), (503, azion_ai.ServiceUnavailableError), (502, azion_ai.InternalServerError), (408, azion_ai.APIStatusError), (409, azion_ai.ConflictError)],
)
@respx.mock
def test_retryable_statuses_are_retried_then_raised(status, cls, no_sleep):
    route = respx.post(URL).respond(status, json={"error": {"message": "busy"}})
    with pytest.raises(cls):
        AI(base_url=BASE, max_retries=3).run(QWEN, PAYLOAD)
    assert route.call_count == 4
    assert len(no_sleep) == 3
    # exponential backoff with jitter: each delay within [75%, 100%] of 0.5 * 2**n
    for n, delay in enumerate(no_sleep):
        assert 0.375 * 2**n <= delay <= 0.5 * 2**n


@respx.mock
def test_retry_after_is_honoured_and_success_after_retry(no_sleep):
    route = respx.post(URL).mock(
        side_effect=[
            httpx.Response(429, headers={"retry-after": "3"}, json={"error": {"message": "slow down"}}),
            httpx.Response(503, headers={"retry-after-ms": "250"}),
            httpx.Response(200, json=COMPLETION),
        ]
    )
    completion = AI(base_url=BASE).run(QWEN, PAYLOAD)
    assert completion.id == COMPLETION["id"]
    assert route.call_count == 3 and no_sleep == [3.0, 0.25]


@respx.mock
def test_zero_retries(no_sleep):
    route = respx.post(URL).respond(500)
    with pytest.raises(azion_ai.InternalServerError):
        AI(base_url=BASE, max_retries=0).run(QWEN, PAYLOAD)
    assert route.call_count == 1


@respx.mock
def test_connection_errors_are_retried_and_mapped(no_sleep):
    route = respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(azion_ai.APIConnectionError) as info:
        AI(base_url=BASE).run(QWEN, PAYLOAD)
    assert not isinstance(info.value, httpx.HTTPError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)  # httpx's error, kept as the cause
    assert route.call_count == 3


@respx.mock
def test_timeouts_map_to_api_timeout_error(no_sleep):
    route = respx.post(URL).mock(side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json=COMPLETION)])
    assert AI(base_url=BASE).run(QWEN, PAYLOAD).id == COMPLETION["id"]
    route.mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(azion_ai.APITimeoutError):
        AI(base_url=BASE, max_retries=1).run(QWEN, PAYLOAD)


@respx.mock
def test_stream_request_retried_before_first_byte(no_sleep):
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(503), httpx.Response(200, stream=TrackedStream([sse(*CHUNKS)]))]
    )
    stream = AI(base_url=BASE).run(QWEN, {**PAYLOAD, "stream": True})
    assert stream.get_final_completion().choices[0].message.content == "Hello, world"
    assert route.call_count == 2


@respx.mock
def test_non_json_and_non_completion_bodies():
    respx.post(URL).respond(200, content=b"<html>")
    with pytest.raises(azion_ai.APIResponseValidationError):
        AI(base_url=BASE).run(QWEN, PAYLOAD)
    respx.post(URL).respond(200, json={"id": "x"})
    with pytest.raises(azion_ai.APIResponseValidationError, match="not a chat.completion"):
        AI(base_url=BASE).run(QWEN, PAYLOAD)


def test_injected_http_client_is_used_and_not_closed():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    with AI(base_url=BASE, http_client=client) as ai:
        ai.run(INTERNVL, PAYLOAD)
    assert len(seen) == 1 and not client.is_closed
    client.close()


@respx.mock
def test_token_never_appears_in_repr_logs_or_exceptions(caplog, no_sleep):
    caplog.set_level(logging.DEBUG)
    respx.post(URL).respond(500, json={"error": {"message": "down"}})
    ai = AI(base_url=BASE, token=TOKEN)
    assert TOKEN not in repr(ai) and TOKEN not in repr(ai.transport) and TOKEN not in str(vars(ai.transport))
    with pytest.raises(azion_ai.InternalServerError) as info:
        ai.run(QWEN, PAYLOAD)
    text = "".join(traceback.format_exception(info.value)) + repr(info.value) + str(vars(info.value))
    assert TOKEN not in text
    assert "retrying" in caplog.text and TOKEN not in caplog.text


# -- async -----------------------------------------------------------------------------------


@respx.mock
async def test_async_non_stream_and_stream():
    respx.post(URL).mock(
        side_effect=[httpx.Response(200, json=COMPLETION), httpx.Response(200, stream=TrackedStream([sse(*CHUNKS)]))]
    )
    async with AsyncAI(base_url=BASE, token=TOKEN) as ai:
        completion = await ai.run(QWEN, PAYLOAD)
        assert completion.usage.completion_tokens == 518
        stream = await ai.run(QWEN, {**PAYLOAD, "stream": True})
        assert isinstance(stream, AsyncStream)
        pieces = [c.choices[0].delta.content async for c in stream]
    assert "".join(p or "" for p in pieces) == "Hello, world"


@respx.mock
async def test_async_retries_and_errors(no_sleep):
    route = respx.post(URL).mock(side_effect=[httpx.Response(429, headers={"retry-after": "1"}), httpx.Response(401, json={"error": {"message": "bad token"}})])
    async with AsyncAI(base_url=BASE) as ai:
        with pytest.raises(azion_ai.AuthenticationError, match="bad token"):
            await ai.run(QWEN, PAYLOAD)
    assert route.call_count == 2 and no_sleep == [1.0]


@respx.mock
async def test_async_stream_close_releases_response_and_final_completion():
    body = TrackedStream([sse(c, done=False) for c in CHUNKS] + [b"data: [DONE]\n\n"])
    respx.post(URL).respond(200, stream=body)
    async with AsyncAI(base_url=BASE) as ai:
        async with await ai.run(QWEN, {**PAYLOAD, "stream": True}) as stream:
            async for _ in stream:
                break
        assert body.closed
        respx.post(URL).respond(200, stream=TrackedStream([sse(*CHUNKS)]))
        stream = await ai.run(QWEN, {**PAYLOAD, "stream": True})
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Hello, world"


@respx.mock
async def test_async_truncated_stream_raises():
    respx.post(URL).respond(200, stream=TrackedStream([sse(*CHUNKS[:2], done=False)]))
    async with AsyncAI(base_url=BASE) as ai:
        stream = await ai.run(QWEN, {**PAYLOAD, "stream": True})
        with pytest.raises(azion_ai.StreamError):
            async for _ in stream:
                pass


async def test_async_injected_client():
    async def handler(request):
        return httpx.Response(200, json=COMPLETION)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with AsyncAI(base_url=BASE, http_client=client) as ai:
        assert (await ai.run(QWEN, PAYLOAD)).model == QWEN
    assert not client.is_closed
    await client.aclose()


def test_async_client_runs_under_trio(monkeypatch):
    """AsyncAI over HTTP is anyio throughout: retries (with their sleep) and streams under trio."""
    trio = require("trio")
    from azion_ai import _remote

    slept: list[float] = []

    async def no_wait(delay: float) -> None:
        slept.append(delay)
        await trio.sleep(0)

    monkeypatch.setattr(_remote, "_async_sleep", no_wait)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "0"})
        body = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async def main() -> list[str | None]:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with azion_ai.AsyncAI(base_url="http://127.0.0.1:9/v1", token="t", http_client=client) as aai:
            stream = await aai.run("qwen-qwen25-vl-3b-instruct-awq", {"messages": [{"role": "user", "content": "hi"}], "stream": True})
            return [c.choices[0].delta.content async for c in stream]

    assert trio.run(main) == ["Hi"]
    assert len(calls) == 2 and len(slept) == 1


@respx.mock
def test_a_base_url_without_a_path_gets_v1():
    route = respx.post("https://edge.example.com/v1/chat/completions").respond(200, json=COMPLETION)
    for given in ("https://edge.example.com", "https://edge.example.com/"):
        with AI(base_url=given, max_retries=0) as client:
            client.run(QWEN, PAYLOAD)
    assert route.call_count == 2


@respx.mock
def test_a_404_from_a_base_url_without_v1_says_so():
    respx.post("https://edge.example.com/api/chat/completions").respond(404, json={"error": {"message": "Not Found"}})
    with AI(base_url="https://edge.example.com/api", max_retries=0) as client, pytest.raises(azion_ai.NotFoundError) as caught:
        client.run(QWEN, PAYLOAD)
    assert "/v1" in str(caught.value) and "'/api'" in str(caught.value)
    respx.post(URL).respond(404, json={"error": {"message": "no such model"}})
    with AI(base_url=BASE, max_retries=0) as client, pytest.raises(azion_ai.NotFoundError) as caught:
        client.run(QWEN, PAYLOAD)
    assert "base_url's path" not in str(caught.value)


# -- per-request controls (as openai-python's) ----------------------------------------------------


@respx.mock
def test_per_request_timeout_retries_and_headers(no_sleep):
    route = respx.post(URL).mock(side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(200, json=COMPLETION)])
    with AI(base_url=BASE, token=TOKEN, max_retries=5, timeout=60) as client:
        with pytest.raises(azion_ai.InternalServerError):
            client.run(QWEN, PAYLOAD, max_retries=1)  # two tries, both 503
        assert route.call_count == 2
        client.run(QWEN, PAYLOAD, timeout=2.5, extra_headers={"X-Trace": "abc", "X-Team": "edge"})
    last = route.calls.last.request
    assert last.headers["x-trace"] == "abc" and last.headers["authorization"] == f"Bearer {TOKEN}"
    assert last.extensions["timeout"] == httpx.Timeout(2.5).as_dict()
    assert route.calls[0].request.extensions["timeout"] == httpx.Timeout(60).as_dict()
    assert "x-trace" not in route.calls[0].request.headers  # for that request only


@respx.mock
async def test_per_request_controls_async(no_sleep):
    route = respx.post(URL).mock(side_effect=[httpx.Response(503), httpx.Response(200, json=COMPLETION)])
    async with AsyncAI(base_url=BASE, max_retries=0) as client:
        done = await client.run(QWEN, PAYLOAD, max_retries=1, timeout=3, extra_headers={"X-Trace": "xyz"})
    assert done.id and route.call_count == 2
    assert route.calls.last.request.headers["x-trace"] == "xyz"
    assert route.calls.last.request.extensions["timeout"] == httpx.Timeout(3).as_dict()


def test_bad_request_controls_are_refused_before_sending():
    with AI(base_url=BASE) as client:
        with pytest.raises(ValueError, match="timeout"):
            client.run(QWEN, PAYLOAD, timeout=0)
        with pytest.raises(ValueError, match="max_retries"):
            client.run(QWEN, PAYLOAD, max_retries=-1)
        with pytest.raises(TypeError, match="retries"):
            client.run(QWEN, PAYLOAD, retries=3)  # type: ignore[call-arg]


# -- raw responses and request ids ------------------------------------------------------------------


SSE_BODY = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


@respx.mock
def test_with_raw_response_gives_status_headers_and_the_parsed_result():
    headers = {"x-request-id": "req-123", "x-ratelimit-remaining-requests": "41"}
    respx.post(URL).respond(200, json=COMPLETION, headers=headers)
    with AI(base_url=BASE) as client:
        raw = client.with_raw_response.run(QWEN, PAYLOAD)
        assert raw.status_code == 200 and raw.request_id == "req-123"
        assert raw.headers["x-ratelimit-remaining-requests"] == "41"
        completion = raw.parse()
        assert isinstance(completion, ChatCompletion) and completion.request_id == "req-123"
        assert client.run(QWEN, PAYLOAD).request_id == "req-123"  # plain results carry it too
        respx.post(URL).respond(200, content=SSE_BODY, headers={**headers, "content-type": "text/event-stream"})
        raw = client.with_raw_response.run(QWEN, {**PAYLOAD, "stream": True})
        with raw.parse() as stream:
            assert isinstance(stream, Stream) and stream.request_id == "req-123"
            assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hi"


@respx.mock
async def test_with_raw_response_async():
    respx.post(URL).respond(200, json=COMPLETION, headers={"x-request-id": "req-9"})
    async with AsyncAI(base_url=BASE) as client:
        raw = await client.with_raw_response.run(QWEN, PAYLOAD, timeout=5)
        assert raw.status_code == 200 and raw.request_id == "req-9"
        assert raw.parse().request_id == "req-9"


def test_a_closed_client_raises_the_sdks_own_error():
    client = AI(base_url=BASE)
    client.close()
    with pytest.raises(azion_ai.ClientClosedError, match="closed"):
        client.run(QWEN, PAYLOAD)
    with AI(base_url=BASE) as scoped:
        pass
    with pytest.raises(azion_ai.AzionAIError):
        scoped.with_raw_response.run(QWEN, PAYLOAD)


async def test_a_closed_async_client_raises_the_sdks_own_error():
    async with AsyncAI(base_url=BASE) as client:
        pass
    with pytest.raises(azion_ai.ClientClosedError):
        await client.run(QWEN, PAYLOAD)
