"""Azion's whole catalogue through ``ai.run``: every model of its pages, each with its page's own
example payload, against a loopback server shaped like vLLM (chat, embeddings, rerank, score)."""

from __future__ import annotations

import httpx
import pytest
from catalogue_server import create_app
from conftest import require

import azion_ai
from azion_ai import AI, AsyncAI

require("starlette")

HELLO = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
DOCS = ["Deep learning is a subset of machine learning", "The weather is nice today", "Deep learning learns from data", "I like pizza"]
# model id -> (the page's example payload, what it must come back as)
CATALOGUE = {
    "qwen-qwen25-vl-3b-instruct-awq": (HELLO, azion_ai.ChatCompletion),
    "opengvlab-internvl3-1b-instruct": (HELLO, azion_ai.ChatCompletion),
    "qwen-qwen25-vl-7b-instruct-awq": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]},
        azion_ai.ChatCompletion,
    ),
    "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8": (
        {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Name the european capitals"}],
         "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]},
        azion_ai.ChatCompletion,
    ),
    "casperhansen-mistral-small-24b-instruct-2501-awq": (HELLO, azion_ai.ChatCompletion),
    "gpt-oss-20b": ({"messages": [{"role": "user", "content": "Explain quantum computing"}], "temperature": 0.7, "max_tokens": 100}, azion_ai.ChatCompletion),
    "nanonets/Nanonets-OCR-s": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Extract the text"}, {"type": "image_url", "image_url": {"url": "https://example.com/doc.png"}}]}]},
        azion_ai.ChatCompletion,
    ),
    "qwen-qwen3-embedding-4b": ({"input": "The food was delicious and the waiter...", "encoding_format": "float"}, azion_ai.EmbeddingResponse),
    "Qwen/Qwen3-Embedding-4B": ({"input": ["a", "b"], "encoding_format": "float", "dimensions": 256}, azion_ai.EmbeddingResponse),
    "baai-bge-reranker-v2-m3": ({"query": "What is deep learning?", "documents": DOCS}, azion_ai.RerankResponse),
}
SCORE = {"text_1": "What is deep learning?", "text_2": DOCS}
ENDPOINTS = {azion_ai.ChatCompletion: "/v1/chat/completions", azion_ai.EmbeddingResponse: "/v1/embeddings", azion_ai.RerankResponse: "/v1/rerank"}


@pytest.fixture(scope="module")
def server():
    from azion_ai._server import BackgroundServer

    received: list[dict] = []
    with BackgroundServer(create_app(received)) as running:
        yield running, received


def test_the_registry_holds_every_model_on_azions_pages():
    ids = {m.id for m in azion_ai.list_models()}
    assert ids == set(CATALOGUE) - {"Qwen/Qwen3-Embedding-4B"}
    assert azion_ai.get_model("Qwen/Qwen3-Embedding-4B").id == "qwen-qwen3-embedding-4b"  # the page's other id
    kinds = {m.id: m.kind for m in azion_ai.list_models()}
    assert kinds["qwen-qwen3-embedding-4b"] == "embeddings" and kinds["baai-bge-reranker-v2-m3"] == "rerank"
    gpt = azion_ai.get_model("gpt-oss-20b")
    assert (gpt.tool_calling, gpt.lora, gpt.context_length) == (True, False, 131072)


@pytest.mark.parametrize("model_id", sorted(CATALOGUE))
def test_every_model_runs_with_its_pages_example(server, model_id):
    running, received = server
    payload, result_type = CATALOGUE[model_id]
    with AI(base_url=running.base_url) as ai:
        result = ai.run(model_id, payload)
    assert isinstance(result, result_type)
    assert received[-1]["path"] == ENDPOINTS[result_type]
    assert received[-1]["body"]["model"] == azion_ai.get_model(model_id).id
    if result_type is azion_ai.EmbeddingResponse:
        assert len(result.data) == (len(payload["input"]) if isinstance(payload["input"], list) else 1)
        assert len(result.data[0].embedding) == payload.get("dimensions", 8)
    if result_type is azion_ai.RerankResponse:
        # the server's own answer to the same body, read as plain JSON: the SDK keeps its order,
        # indices, scores and documents (the ranking is the server's business, not the SDK's)
        raw = httpx.post(f"{running.base_url}{received[-1]['path'].removeprefix('/v1')}", json=received[-1]["body"]).json()
        assert [(r.index, r.relevance_score, r.document.text) for r in result.results] == [
            (r["index"], r["relevance_score"], r["document"]["text"]) for r in raw["results"]
        ]
        assert sorted(r.index for r in result.results) == [0, 1, 2, 3]
        assert all(r.document.text == DOCS[r.index] for r in result.results)


async def test_every_kind_runs_async(server):
    running, received = server
    async with AsyncAI(base_url=running.base_url) as ai:
        embedded = await ai.run("qwen-qwen3-embedding-4b", CATALOGUE["qwen-qwen3-embedding-4b"][0])
        ranked = await ai.run("baai-bge-reranker-v2-m3", CATALOGUE["baai-bge-reranker-v2-m3"][0])
        scored = await ai.run("baai-bge-reranker-v2-m3", SCORE)
        chat = await ai.run("gpt-oss-20b", HELLO)
    assert isinstance(embedded, azion_ai.EmbeddingResponse) and isinstance(ranked, azion_ai.RerankResponse)
    assert isinstance(scored, azion_ai.ScoreResponse) and [s.index for s in scored.data] == [0, 1, 2, 3]
    assert isinstance(chat, azion_ai.ChatCompletion) and chat.request_id == "req-chat"


def test_the_score_shape_goes_to_score(server):
    """The page's score example fails the page's own schema (it requires query and documents):
    accepted for rerank models, and sent to /score."""
    running, received = server
    with AI(base_url=running.base_url) as ai:
        scored = ai.run("baai-bge-reranker-v2-m3", SCORE)
    assert isinstance(scored, azion_ai.ScoreResponse) and len(scored.data) == 4
    assert received[-1]["path"] == "/v1/score"


@pytest.mark.parametrize(
    ("model_id", "payload", "path"),
    [
        ("qwen-qwen3-embedding-4b", {"input": "x", "dimensions": 300}, "dimensions"),
        ("qwen-qwen3-embedding-4b", {"encoding_format": "float"}, "input"),
        ("baai-bge-reranker-v2-m3", {"query": "q"}, "documents"),
        ("baai-bge-reranker-v2-m3", {"text_1": "q"}, "text_2"),
        ("nanonets/Nanonets-OCR-s", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, "messages[0].content[0].image_url.url"),
        ("casperhansen-mistral-small-24b-instruct-2501-awq", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ],
)
def test_each_kind_is_validated_before_anything_is_sent(server, model_id, payload, path):
    running, received = server
    before = len(received)
    with AI(base_url=running.base_url) as ai, pytest.raises(azion_ai.ValidationError) as caught:
        ai.run(model_id, payload)
    assert path in caught.value.paths and len(received) == before


@pytest.mark.parametrize("model_id", ["gpt-oss-20b", "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8"])
def test_models_the_local_backend_cannot_run_fail_before_anything_loads(model_id, monkeypatch):
    from azion_ai._local import _loading

    monkeypatch.setattr(_loading, "load_model", lambda *a, **k: pytest.fail("nothing may load"))
    payload = CATALOGUE.get(model_id, (HELLO,))[0]
    with AI(backend="local", models={model_id: "/nowhere"}, device="cpu") as ai, pytest.raises(azion_ai.LocalBackendError, match="remote backend"):
        ai.run(model_id, payload)


def test_the_cli_runs_embeddings_and_rerank(server, capsys):
    from azion_ai._cli import main

    running, _ = server
    assert main(["run", "qwen-qwen3-embedding-4b", "Hello there", "--base-url", running.base_url]) == 0
    assert "8 dimensions" in capsys.readouterr().out
    argv = ["run", "baai-bge-reranker-v2-m3", "Deep learning", "--document", DOCS[1], "--document", DOCS[0], "--base-url", running.base_url]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "[1]" in first and DOCS[0] in first  # the document sharing the query's words ranks first


@pytest.mark.local
@pytest.mark.parametrize("model_id", ["qwen-qwen25-vl-7b-instruct-awq", "nanonets/Nanonets-OCR-s"])
def test_the_qwen25_vl_family_runs_locally_under_its_other_ids(tiny_dirs, model_id):
    """The 7B and Nanonets-OCR-s share the 3B's architecture: the local backend loads them (here
    the tiny Qwen2.5-VL checkpoint under their ids) and answers with their ids."""
    require("torch")
    from conftest import QWEN_ID, png_data_uri

    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Read it"}, {"type": "image_url", "image_url": {"url": png_data_uri()}}]}], "max_tokens": 4, "temperature": 0}
    with AI(backend="local", models={model_id: str(tiny_dirs[QWEN_ID])}, device="cpu") as ai:
        done = ai.run(model_id, payload)
    assert done.model == model_id and done.usage.completion_tokens == 4
