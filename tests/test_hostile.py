"""Hostile payloads: random JSON and systematic mutations of the seed payloads, through ai.run and
through the server. Each either succeeds or raises ValidationError naming a path; never another
exception, never a hang; the server answers 400 with a JSON error, never 500."""

from __future__ import annotations

import functools
import json
import threading

import httpx
import pytest
from conftest import require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payload_strategies import KEYS, json_values, mutated
from seeds import INTERNVL, QWEN, examples, plain_validator

import azion_ai
from azion_ai import AI, BaseTransport, ChatRequest, ValidationError
from azion_ai._transport import TransportResponse

COMPLETION = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": QWEN, "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}


class Recording(BaseTransport):
    def __init__(self):
        self.requests: list[ChatRequest] = []

    def handle_request(self, request):
        json.dumps(dict(request.payload))  # what reaches a transport is always JSON
        self.requests.append(request)
        return TransportResponse(body=COMPLETION)


@functools.cache
def _reference_validator(model_id):
    return plain_validator(model_id)


def _schema_valid(model_id, payload) -> bool:
    """An independent verdict: plain jsonschema on the model's published schema."""
    return _reference_validator(model_id).is_valid(payload)


def _check(model_id, payload, ai, transport):
    """True: accepted, and then the payload was schema-valid and sent once, unchanged. False:
    refused with issues naming paths, and nothing sent."""
    before = len(transport.requests)
    try:
        ai.run(model_id, payload)
    except ValidationError as exc:
        assert exc.issues and all(isinstance(i.path, str) for i in exc.issues)
        assert len(transport.requests) == before  # nothing sent
        return False
    assert _schema_valid(model_id, payload), "accepted a payload its schema rejects"
    assert len(transport.requests) == before + 1
    assert json.loads(json.dumps(dict(transport.requests[-1].payload))) == json.loads(json.dumps(payload))
    return True


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_seed_payloads(case):
    transport = Recording()
    model_id, payload = case
    accepted = _check(model_id, payload, AI(transport=transport), transport)
    if not _schema_valid(model_id, payload):
        assert not accepted  # what the schema refuses, validation refuses


@settings(max_examples=examples(200), deadline=None)
@given(st.sampled_from([QWEN, INTERNVL]), json_values)
def test_random_json_values(model_id, value):
    transport = Recording()
    accepted = _check(model_id, value, AI(transport=transport), transport)
    if not _schema_valid(model_id, value):
        assert not accepted


@settings(max_examples=examples(100), deadline=None)
@given(st.sampled_from([QWEN, INTERNVL]), st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
def test_random_payload_shaped_objects(model_id, payload):
    transport = Recording()
    accepted = _check(model_id, payload, AI(transport=transport), transport)
    if not _schema_valid(model_id, payload):
        assert not accepted


def test_deep_nesting_does_not_crash():
    deep: object = "x"
    for _ in range(5000):
        deep = [deep]
    transport = Recording()
    for model_id in (QWEN, INTERNVL):
        assert not _check(model_id, {"messages": deep}, AI(transport=transport), transport)
        assert not _check(model_id, {"messages": [{"role": "user", "content": deep}]}, AI(transport=transport), transport)


# -- through the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(tiny_dirs):
    require("starlette")
    from azion_ai._server import BackgroundServer, ChatServer

    server = ChatServer({k: str(v) for k, v in tiny_dirs.items()}, device="cpu")
    with BackgroundServer(server.app) as running:
        for state in server.states.values():
            state.ready.wait(120)
        yield running.base_url + "/chat/completions"


@pytest.mark.local
def test_server_answers_hostile_payloads_with_400_never_500(server_url):
    statuses: list[int] = []
    bodies = []

    @settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutated())
    def run(case):
        model_id, payload = case
        if isinstance(payload, dict):
            # keep valid requests cheap: a short answer and no sampling of many choices
            if isinstance(payload.get("max_tokens"), int) and payload["max_tokens"] > 4:
                payload["max_tokens"] = 4
            payload.setdefault("max_tokens", 4)
            payload = {**payload, "model": model_id}
        r = httpx.post(server_url, content=json.dumps(payload), timeout=120)
        statuses.append(r.status_code)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        bodies.append(body)
        assert r.status_code in (200, 400), (r.status_code, r.text[:300])
        if r.status_code == 400:
            assert body["error"]["message"]

    run()
    assert 400 in statuses


@pytest.mark.local
def test_refused_image_fails_the_request_and_the_backend_keeps_serving(local_ai):
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/secret.png"}}]}], "max_tokens": 3, "temperature": 0}
    with pytest.raises(azion_ai.ImageError, match=r"messages\[0\].content\[1\].image_url.url: refused: .*loopback"):
        local_ai.run(QWEN, bad)
    assert local_ai.run(QWEN, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).usage.completion_tokens == 3


@pytest.mark.local
def test_n_is_bounded_by_the_local_backend(local_ai):
    with pytest.raises(ValidationError, match="max_n") as info:
        local_ai.run(QWEN, {"messages": [{"role": "user", "content": "hi"}], "n": 100000, "max_tokens": 2})
    assert info.value.paths == ["n"]


@pytest.mark.local
def test_32_concurrent_streams_then_half_cancelled(local_ai):
    prompts = [f"Say something about {i}" for i in range(32)]
    base = {"max_tokens": 8, "temperature": 0}
    expected = {p: local_ai.run(INTERNVL, {**base, "messages": [{"role": "user", "content": p}]}).choices[0].message.content for p in prompts}
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def one(prompt: str, cancel: bool) -> None:
        try:
            payload = {**base, "messages": [{"role": "user", "content": prompt}], "stream": True}
            if cancel:
                payload["max_tokens"] = 2000
            stream = local_ai.run(INTERNVL, payload)
            if cancel:
                next(stream)
                stream.close()
                return
            results[prompt] = stream.get_final_completion().choices[0].message.content
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p, False)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and results == expected
    results.clear()
    threads = [threading.Thread(target=one, args=(p, i % 2 == 0)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert results == {p: expected[p] for i, p in enumerate(prompts) if i % 2}


@pytest.mark.local
@pytest.mark.parametrize("model_id", [INTERNVL, QWEN])
def test_batched_concurrent_requests_match_sequential(tiny_dirs, local_ai, model_id, monkeypatch):
    """Concurrent requests decode together (rows of different lengths, joining and leaving
    between steps): same answers as one at a time, no cross-talk."""
    prompts = [f"Tell me about topic number {i} please" + " and more" * (i % 4) for i in range(12)]
    base = {"max_tokens": 10, "temperature": 0}
    expected = {p: local_ai.run(model_id, {**base, "messages": [{"role": "user", "content": p}]}).choices[0].message.content for p in prompts}
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    with AI(backend="local", models={model_id: str(tiny_dirs[model_id])}, device="cpu", max_batch_size=8) as ai:
        ai.run(model_id, {**base, "messages": [{"role": "user", "content": "warm up"}]})
        sizes = ai.transport._engines[model_id].batch_sizes
        gate = threading.Event()

        def one(i: int, prompt: str) -> None:
            try:
                gate.wait()
                payload = {**base, "messages": [{"role": "user", "content": prompt}], "stream": i % 2 == 0}
                if payload["stream"]:
                    payload["stream_options"] = {"include_usage": True}
                if i == 5:
                    payload["max_tokens"] = 3  # a shorter budget inside a batch
                out = ai.run(model_id, payload)
                final = out.get_final_completion() if i % 2 == 0 else out
                results[prompt] = (final.choices[0].message.content, final.usage.completion_tokens, final.choices[0].finish_reason)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        gate.set()
        for t in threads:
            t.join(300)
    assert not errors
    assert max(sizes) > 1  # some requests really were batched
    for i, p in enumerate(prompts):
        content, tokens, reason = results[p]
        if i == 5:
            assert tokens == 3 and reason == "length" and expected[p].startswith(content)
            continue
        assert (content, tokens) == (expected[p], 10)


@pytest.mark.local
def test_batched_greedy_requests_with_several_choices(tiny_dirs, local_ai, monkeypatch):
    """n > 1 inside a batch, sampling with top_k 1 (as Qwen's generation_config does): every
    choice of every request is that request's greedy answer."""
    prompts = [f"Question {i}" + " again" * i for i in range(4)]
    base = {"max_tokens": 6, "temperature": 1.0, "top_k": 1, "n": 2}
    expected = {p: local_ai.run(INTERNVL, {"max_tokens": 6, "temperature": 0, "messages": [{"role": "user", "content": p}]}).choices[0].message.content for p in prompts}
    results: dict[str, list[str | None]] = {}
    with AI(backend="local", models={INTERNVL: str(tiny_dirs[INTERNVL])}, device="cpu", max_batch_size=4) as ai:
        ai.run(INTERNVL, {**base, "messages": [{"role": "user", "content": "warm up"}]})
        sizes = ai.transport._engines[INTERNVL].batch_sizes
        gate = threading.Event()

        def one(prompt: str) -> None:
            gate.wait()
            done = ai.run(INTERNVL, {**base, "messages": [{"role": "user", "content": prompt}]})
            results[prompt] = [c.message.content for c in done.choices]

        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        gate.set()
        for t in threads:
            t.join(300)
    assert max(sizes) > 1
    assert results == {p: [expected[p], expected[p]] for p in prompts}
