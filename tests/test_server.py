"""`azion-ai serve` on a loopback port: the official openai client and our remote transport talk to it."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from conftest import INTERNVL_ID, QWEN_ID, require

import azion_ai
from azion_ai import AI

pytestmark = pytest.mark.local
require("torch")
require("starlette")
KEY = "server-key-1234"
HELLO = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 10, "temperature": 0}


@pytest.fixture(scope="module")
def served(tiny_dirs):
    from azion_ai._server import BackgroundServer, ChatServer

    models = {k: str(v) for k, v in tiny_dirs.items()}
    server = ChatServer(models, device="cpu", api_key=KEY, max_body_bytes=200_000)
    with BackgroundServer(server.app) as running:
        for state in server.states.values():
            state.ready.wait(120)
        yield server, running


def test_health_and_models(served):
    server, running = served
    root = running.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").json()["status"] == "ok"
    listed = httpx.get(running.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {m["id"] for m in listed["data"]} == {QWEN_ID, INTERNVL_ID, "qwen-qwen3-embedding-4b", "baai-bge-reranker-v2-m3"}  # every tiny checkpoint


def test_openai_client_and_our_transport_get_what_the_local_backend_gives(served, local_ai):
    openai = require("openai")
    _, running = served
    direct = local_ai.run(QWEN_ID, HELLO).choices[0].message.content

    client = openai.OpenAI(base_url=running.base_url, api_key=KEY, max_retries=0)
    whole = client.chat.completions.create(model=QWEN_ID, **HELLO)
    assert whole.choices[0].message.content == direct
    pieces = client.chat.completions.create(model=QWEN_ID, stream=True, **HELLO)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == direct

    with AI(base_url=running.base_url, token=KEY) as ai:
        assert ai.run(QWEN_ID, HELLO).choices[0].message.content == direct
        with ai.run(QWEN_ID, {**HELLO, "stream": True}) as stream:
            assert stream.get_final_completion().choices[0].message.content == direct


def test_api_key_is_enforced(served):
    _, running = served
    url = running.base_url + "/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(url, json={"model": QWEN_ID, **HELLO}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with AI(base_url=running.base_url, token="wrong", max_retries=0) as ai, pytest.raises(azion_ai.AuthenticationError):
        ai.run(QWEN_ID, HELLO)


def test_bad_payloads_get_400_with_the_path(served):
    _, running = served
    url = running.base_url + "/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    bad = {"model": INTERNVL_ID, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}
    r = httpx.post(url, json=bad, headers=auth)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[0].content[0].image_url.url"
    assert httpx.post(url, content=b"{nope", headers=auth).status_code == 400
    r = httpx.post(url, json={"model": "gpt-4", **HELLO}, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, json={"model": QWEN_ID, **HELLO, "max_tokens": 32769}, headers=auth)
    assert r.status_code == 400 and "context length" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": QWEN_ID, "messages": [{"role": "user", "content": "x" * 300_000}]}, headers=auth)
    assert r.status_code == 413
    bad_image = {"model": QWEN_ID, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    r = httpx.post(url, json=bad_image, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0].image_url.url"


def test_disconnect_mid_stream_frees_the_model(served, counted_steps):
    _, running = served
    steps = counted_steps
    body = {"model": INTERNVL_ID, **HELLO, "max_tokens": 5000, "stream": True}
    with httpx.stream("POST", running.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
    job_id = json.loads(first[6:])["id"]
    with AI(base_url=running.base_url, token=KEY) as ai:
        assert ai.run(INTERNVL_ID, HELLO).usage.completion_tokens == 10
    assert steps.count(job_id) < 1000


def test_concurrent_clients_are_all_answered(served, local_ai):
    _, running = served
    expected = local_ai.run(INTERNVL_ID, HELLO).choices[0].message.content
    results, errors = [], []

    def one(stream):
        try:
            with AI(base_url=running.base_url, token=KEY) as ai:
                out = ai.run(INTERNVL_ID, {**HELLO, "stream": stream})
                results.append(out.get_final_completion() if stream else out)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i % 2 == 0,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 10
    assert all(r.choices[0].message.content == expected for r in results)


def test_503_while_a_model_loads(tiny_dirs, monkeypatch):
    from azion_ai._local._backend import LocalTransport
    from azion_ai._server import BackgroundServer, ChatServer

    release = threading.Event()
    original = LocalTransport.load

    def slow_load(self, model_id):
        release.wait(30)
        return original(self, model_id)

    monkeypatch.setattr(LocalTransport, "load", slow_load)
    server = ChatServer({INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu")
    with BackgroundServer(server.app) as running:
        r = httpx.post(running.base_url + "/chat/completions", json={"model": INTERNVL_ID, **HELLO})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        assert httpx.get(running.base_url.removesuffix("/v1") + "/health").status_code == 503
        release.set()
        server.states[INTERNVL_ID].ready.wait(60)
        r = httpx.post(running.base_url + "/chat/completions", json={"model": INTERNVL_ID, **HELLO})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10


def test_503_naming_the_cause_when_a_model_failed_to_load(tmp_path):
    """A model whose load failed answers every route with 503 ``model_load_failed`` and the
    cause; the server and its other models stay up."""
    from azion_ai._server import BackgroundServer, ChatServer

    empty = tmp_path / "no-weights"
    empty.mkdir()
    server = ChatServer({INTERNVL_ID: str(empty), "qwen-qwen3-embedding-4b": str(empty)}, device="cpu")
    with BackgroundServer(server.app) as running:
        for model_id in (INTERNVL_ID, "qwen-qwen3-embedding-4b"):
            assert server.states[model_id].ready.wait(60)
        chat = httpx.post(running.base_url + "/chat/completions", json={"model": INTERNVL_ID, **HELLO})
        embed = httpx.post(running.base_url + "/embeddings", json={"model": "qwen-qwen3-embedding-4b", "input": "hi"})
        for r, model_id in ((chat, INTERNVL_ID), (embed, "qwen-qwen3-embedding-4b")):
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "model_load_failed"
            assert error["message"].startswith(f"model {model_id!r} failed to load: ")
            assert str(empty) in error["message"]  # the cause names the directory it read
        assert httpx.get(running.base_url.removesuffix("/v1") + "/health").status_code == 503


def test_server_binds_loopback_by_default():
    import inspect

    from azion_ai._server import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


def test_absurdly_deep_json_is_a_400(served):
    _, running = served
    body = b'{"model": "' + QWEN_ID.encode() + b'", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(running.base_url + "/chat/completions", content=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code in (400, 413)
    shallow_enough = {"model": QWEN_ID, "messages": [{"role": "user", "content": "x"}], "x": json.loads("[" * 200 + "]" * 200)}
    r = httpx.post(running.base_url + "/chat/completions", json=shallow_enough, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "nested deeper" in r.json()["error"]["message"]
