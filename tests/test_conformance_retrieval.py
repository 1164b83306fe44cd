"""Qwen3-Embedding and bge-reranker-v2-m3: the local backend (transformers engine) and
``azion-ai serve`` against real vLLM's OpenAI server on the same tiny checkpoints, payload by
payload. Embeddings (float and base64, ``dimensions`` included) within 1e-5, rerank and score
values within 1e-5 in the same order, ``usage`` equal, and the same HTTP status for bad inputs.

vLLM runs Qwen3-Embedding as Azion must to offer ``dimensions``: the pooling runner, converted to
an embedding model, with Matryoshka on (``--hf-overrides {"is_matryoshka": true}``); the
reranker runs as vLLM's cross-encoder (``--runner pooling``)."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from conformance import start_peers

pytestmark = [pytest.mark.local, pytest.mark.vllm, pytest.mark.slow]

EMBED_ID = "qwen-qwen3-embedding-4b"
RERANK_ID = "baai-bge-reranker-v2-m3"
EMBED_ARGS = ("--runner", "pooling", "--convert", "embed", "--hf-overrides", json.dumps({"is_matryoshka": True}))
RERANK_ARGS = ("--runner", "pooling")

TEXTS = [
    "The food was delicious and the waiter...",
    "What is deep learning?",
    "Olá, você está bem? Ça va très bien, merci. 日本語 中文 😀",
    "Deep learning enables computers to learn from large amounts of data. " * 20,
    "",
]
QUERY = "What is deep learning?"
DOCUMENTS = [
    "Deep learning is a subset of machine learning that uses neural networks with many layers",
    "The weather is nice today",
    "Deep learning enables computers to learn from large amounts of data",
    "I like pizza",
]
TOKEN_IDS = [[286, 436, 78, 67, 266], [64, 82, 220, 67, 68, 75, 72, 344, 78, 84], [556]]

EMBEDDINGS = {
    "string": {"input": TEXTS[0]},
    "page_example": {"input": TEXTS[0], "encoding_format": "float"},
    "list": {"input": TEXTS},
    "dimensions_256": {"input": TEXTS, "dimensions": 256},
    "dimensions_512": {"input": TEXTS[:2], "dimensions": 512},
    "base64": {"input": TEXTS, "encoding_format": "base64"},
    "base64_dimensions": {"input": TEXTS[:3], "encoding_format": "base64", "dimensions": 256},
    "token_ids": {"input": TOKEN_IDS[1]},
    "token_id_lists": {"input": TOKEN_IDS},
    "empty_string": {"input": ""},
}
RERANKS = {
    "page_example": {"query": QUERY, "documents": DOCUMENTS},
    "top_n": {"query": QUERY, "documents": DOCUMENTS, "top_n": 2},
    "top_n_over": {"query": QUERY, "documents": DOCUMENTS, "top_n": 10},
    "max_tokens_per_doc": {"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 4},
    "one_document": {"query": "pizza", "documents": ["I like pizza"]},
    "long_document": {"query": QUERY, "documents": [DOCUMENTS[2] * 30, DOCUMENTS[1]]},
}
SCORES = {
    "page_example": {"text_1": QUERY, "text_2": DOCUMENTS},
    "pairs": {"text_1": DOCUMENTS[:2], "text_2": DOCUMENTS[2:]},
    "strings": {"text_1": QUERY, "text_2": DOCUMENTS[0]},
}
BAD_EMBEDDINGS = {
    "dimensions_over_hidden": {"input": "x", "dimensions": 1024},
    "over_context": {"input": "word " * 5000},
    "over_context_ids": {"input": [[5] * 4097]},
    "missing_input": {"encoding_format": "float"},
    "mixed_input": {"input": ["a", 5]},
}
BAD_RERANKS = {
    "no_documents": ("rerank", {"query": QUERY, "documents": []}),
    "over_context": ("rerank", {"query": QUERY, "documents": ["word " * 5000]}),
    "negative_top_n": ("rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": -1}),
    "max_tokens_per_doc_over_context": ("rerank", {"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 5000}),
    "missing_documents": ("rerank", {"query": QUERY}),
    "lengths_mismatch": ("score", {"text_1": DOCUMENTS[:2], "text_2": DOCUMENTS[:3]}),
    "no_text_2": ("score", {"text_1": QUERY, "text_2": []}),
}


def post(base_url: str, route: str, model_id: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{base_url}/{route}", json={"model": model_id, **payload}, timeout=300)


def floats(embedding: list[float] | str) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float64)
    return np.array(embedding, dtype=np.float64)


def assert_same_embeddings(ours: dict, theirs: dict) -> None:
    assert [d["index"] for d in ours["data"]] == [d["index"] for d in theirs["data"]]
    for mine, reference in zip(ours["data"], theirs["data"], strict=True):
        assert type(mine["embedding"]) is type(reference["embedding"])
        a, b = floats(mine["embedding"]), floats(reference["embedding"])
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    for key in ("prompt_tokens", "total_tokens", "completion_tokens"):
        assert ours["usage"][key] == theirs["usage"][key], key
    assert ours["object"] == theirs["object"] == "list" and ours["model"] == theirs["model"]


def assert_same_ranking(ours: dict, theirs: dict) -> None:
    assert [r["index"] for r in ours["results"]] == [r["index"] for r in theirs["results"]]
    for mine, reference in zip(ours["results"], theirs["results"], strict=True):
        assert mine["relevance_score"] == pytest.approx(reference["relevance_score"], abs=1e-5)
        assert mine["document"]["text"] == reference["document"]["text"]
    assert ours["usage"]["total_tokens"] == theirs["usage"]["total_tokens"]
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]


def assert_same_scores(ours: dict, theirs: dict) -> None:
    assert [d["index"] for d in ours["data"]] == [d["index"] for d in theirs["data"]]
    np.testing.assert_allclose([d["score"] for d in ours["data"]], [d["score"] for d in theirs["data"]], atol=1e-5, rtol=0)
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
    assert ours["usage"]["total_tokens"] == theirs["usage"]["total_tokens"]


@pytest.fixture(scope="class")
def embed_peers(tiny_dirs, tmp_path_factory):
    """vLLM's server, the local backend and serve on the embedding model (one class's life)."""
    yield from start_peers(EMBED_ID, tiny_dirs[EMBED_ID], tmp_path_factory.mktemp("vllm-embed"), vllm_args=EMBED_ARGS)


@pytest.fixture(scope="class")
def rerank_peers(tiny_dirs, tmp_path_factory):
    yield from start_peers(RERANK_ID, tiny_dirs[RERANK_ID], tmp_path_factory.mktemp("vllm-rerank"), vllm_args=RERANK_ARGS)


class TestEmbeddings:
    @pytest.fixture
    def peers(self, embed_peers):
        return embed_peers

    def test_the_token_ids_are_the_tokenizers(self, tiny_dirs):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tiny_dirs[EMBED_ID]))
        assert tok("The food was delicious")["input_ids"][:5] == TOKEN_IDS[0]  # so the id payloads are real text

    @pytest.mark.parametrize("name", list(EMBEDDINGS))
    def test_payload(self, peers, name):
        payload = EMBEDDINGS[name]
        reference = post(peers.vllm.base_url, "embeddings", EMBED_ID, payload)
        assert reference.status_code == 200, reference.text
        local = peers.local.run(EMBED_ID, payload).model_dump(mode="json")
        served = post(peers.serve_url, "embeddings", EMBED_ID, payload)
        assert served.status_code == 200, served.text
        assert_same_embeddings(local, reference.json())
        assert_same_embeddings(served.json(), reference.json())

    @pytest.mark.parametrize("name", list(BAD_EMBEDDINGS))
    def test_bad_input_status(self, peers, name):
        payload = BAD_EMBEDDINGS[name]
        reference = post(peers.vllm.base_url, "embeddings", EMBED_ID, payload)
        served = post(peers.serve_url, "embeddings", EMBED_ID, payload)
        assert served.status_code == reference.status_code, (served.text, reference.text)
        assert served.json()["error"]["message"]


class TestRerankAndScore:
    @pytest.fixture
    def peers(self, rerank_peers):
        return rerank_peers

    @pytest.mark.parametrize("name", list(RERANKS))
    def test_rerank(self, peers, name):
        payload = RERANKS[name]
        reference = post(peers.vllm.base_url, "rerank", RERANK_ID, payload)
        assert reference.status_code == 200, reference.text
        local = peers.local.run(RERANK_ID, payload).model_dump(mode="json")
        served = post(peers.serve_url, "rerank", RERANK_ID, payload)
        assert served.status_code == 200, served.text
        assert_same_ranking(local, reference.json())
        assert_same_ranking(served.json(), reference.json())

    @pytest.mark.parametrize("name", list(SCORES))
    def test_score(self, peers, name):
        payload = SCORES[name]
        reference = post(peers.vllm.base_url, "score", RERANK_ID, payload)
        assert reference.status_code == 200, reference.text
        local = peers.local.run(RERANK_ID, payload).model_dump(mode="json")
        served = post(peers.serve_url, "score", RERANK_ID, payload)
        assert served.status_code == 200, served.text
        assert_same_scores(local, reference.json())
        assert_same_scores(served.json(), reference.json())

    @pytest.mark.parametrize("name", list(BAD_RERANKS))
    def test_bad_input_status(self, peers, name):
        route, payload = BAD_RERANKS[name]
        reference = post(peers.vllm.base_url, route, RERANK_ID, payload)
        served = post(peers.serve_url, route, RERANK_ID, payload)
        assert served.status_code == reference.status_code, (served.text, reference.text)
        assert served.json()["error"]["message"]
