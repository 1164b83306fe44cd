"""The retrieval models on the local backend's transformers engine: Qwen3-Embedding and
bge-reranker-v2-m3 on their tiny checkpoints, against each model's own reference usage
(sentence-transformers' SentenceTransformer and CrossEncoder, run here on the same directory),
through ``ai.run`` (sync and async), ``azion-ai serve`` and ``azion-ai run``. Conformance with
vLLM's server is tests/test_conformance_retrieval.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

import azion_ai
from azion_ai import AI, EmbeddingResponse, RerankResponse, ScoreResponse, ValidationError

EMBED_ID = "qwen-qwen3-embedding-4b"
RERANK_ID = "baai-bge-reranker-v2-m3"
TEXTS = [
    "The food was delicious and the waiter was friendly.",
    "What is deep learning?",
    "I like pizza",
    "Deep learning enables computers to learn from large amounts of data, " * 6,
    "日本語 😀",
    "",
]
QUERY = "What is deep learning?"
DOCUMENTS = [
    "Deep learning is a subset of machine learning that uses neural networks with many layers",
    "The weather is nice today",
    "Deep learning enables computers to learn from large amounts of data",
    "I like pizza",
]


@pytest.fixture(scope="module")
def st_embedder(tiny_dirs):
    from conftest import require

    return require("sentence_transformers").SentenceTransformer(str(tiny_dirs[EMBED_ID]), device="cpu")


@pytest.fixture(scope="module")
def cross_encoder(tiny_dirs):
    from conftest import require

    return require("sentence_transformers").CrossEncoder(str(tiny_dirs[RERANK_ID]), device="cpu")


def vectors(response: EmbeddingResponse) -> np.ndarray:
    return np.array([item.embedding for item in sorted(response.data, key=lambda d: d.index)], dtype=np.float64)


# -- the checkpoints' layouts ------------------------------------------------------------------


def test_embedding_checkpoint_has_the_published_files(tiny_dirs):
    root = tiny_dirs[EMBED_ID]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json", "config_sentence_transformers.json", "1_Pooling/config.json"):
        assert (root / name).is_file(), name
    config = json.loads((root / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert json.loads((root / "1_Pooling/config.json").read_text())["pooling_mode_lasttoken"] is True
    from safetensors import safe_open

    with safe_open(str(root / "model.safetensors"), "pt") as weights:  # the base model's keys, as published
        keys = set(weights.keys())
    assert "embed_tokens.weight" in keys and "norm.weight" in keys and not any(k.startswith(("model.", "lm_head")) for k in keys)


def test_embedding_tokenizer_appends_endoftext(tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs[EMBED_ID]))
    ids = tok("The food was delicious")["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.decode(ids[:-1]) == "The food was delicious"


def test_reranker_checkpoint_is_xlm_roberta_with_one_label(tiny_dirs):
    root = tiny_dirs[RERANK_ID]
    config = json.loads((root / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["max_position_embeddings"] == 8194 and config["pad_token_id"] == 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(root))
    pair = tok("a query", "a document")["input_ids"]
    assert [tok.convert_ids_to_tokens(pair[0])] == ["<s>"] and tok.convert_ids_to_tokens(pair[-1]) == "</s>"
    assert tok.decode(pair) == "<s> a query</s></s> a document</s>"
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


# -- embeddings ---------------------------------------------------------------------------------


def test_embeddings_match_sentence_transformers(local_ai, st_embedder, tiny_dirs):
    response = local_ai.run(EMBED_ID, {"input": TEXTS})
    assert isinstance(response, EmbeddingResponse)
    ours = vectors(response)
    theirs = st_embedder.encode(TEXTS, convert_to_numpy=True, batch_size=2)
    assert ours.shape == theirs.shape == (len(TEXTS), 512)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs[EMBED_ID]))
    expected_tokens = sum(len(tok(t)["input_ids"]) for t in TEXTS)
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected_tokens
    assert response.model == EMBED_ID and response.object == "list" and response.id.startswith("embd-")
    assert [d.index for d in response.data] == list(range(len(TEXTS)))


def test_an_embedding_does_not_depend_on_its_batch(local_ai):
    alone = vectors(local_ai.run(EMBED_ID, {"input": TEXTS[2]}))[0]
    together = vectors(local_ai.run(EMBED_ID, {"input": TEXTS}))[2]
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_dimensions_truncate_then_renormalise(local_ai, st_embedder):
    full = st_embedder.encode(TEXTS[:3], convert_to_numpy=True, normalize_embeddings=False)
    for dims in (256, 512):
        ours = vectors(local_ai.run(EMBED_ID, {"input": TEXTS[:3], "dimensions": dims}))
        cut = full[:, :dims] / np.linalg.norm(full[:, :dims], axis=1, keepdims=True)
        assert ours.shape == (3, dims)
        np.testing.assert_allclose(ours, cut, atol=1e-5)


def test_base64_is_the_float32_little_endian_bytes(local_ai):
    floats = local_ai.run(EMBED_ID, {"input": TEXTS[:2], "dimensions": 256})
    encoded = local_ai.run(EMBED_ID, {"input": TEXTS[:2], "dimensions": 256, "encoding_format": "base64"})
    for f, e in zip(floats.data, encoded.data, strict=True):
        assert isinstance(e.embedding, str)
        decoded = np.frombuffer(base64.b64decode(e.embedding), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(f.embedding, dtype=np.float32))


def test_token_arrays_embed_like_their_text(local_ai, tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs[EMBED_ID]))
    ids = [tok(t)["input_ids"] for t in TEXTS[:2]]
    by_text = vectors(local_ai.run(EMBED_ID, {"input": TEXTS[:2]}))
    by_ids = local_ai.run(EMBED_ID, {"input": ids})
    np.testing.assert_allclose(vectors(by_ids), by_text, atol=1e-6)
    assert by_ids.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    one = local_ai.run(EMBED_ID, {"input": ids[0]})  # a flat list of ids is one prompt
    assert len(one.data) == 1
    np.testing.assert_allclose(vectors(one)[0], by_text[0], atol=1e-6)


@pytest.mark.parametrize(
    ("payload", "where", "words"),
    [
        ({"input": "x", "dimensions": 1024}, "dimensions", "only supports dimensions in range [1, 512], got 1024"),
        ({"input": "x", "dimensions": 300}, "dimensions", "256"),  # the page's enum, before anything runs
        ({"input": []}, "input", "empty"),
        ({"input": ["a", 5]}, "input", "not a mix"),
        ({"input": [[1, 2], [100000]]}, "input[1]", "outside the vocabulary"),
        ({"input": "word " * 5000}, "input", "maximum context length is 4096 tokens. However, your prompt contains at least 4097 input tokens"),
        ({"input": "hi", "encoding_format": "bytes"}, "encoding_format", "float"),
    ],
)
def test_bad_embedding_payloads_are_clear_errors(tiny_dirs, payload, where, words):
    with AI(backend="local", models={EMBED_ID: str(tiny_dirs[EMBED_ID])}, device="cpu", max_model_len=4096) as ai:
        with pytest.raises(ValidationError) as caught:
            ai.run(EMBED_ID, payload)
        assert caught.value.issues[0].path == where
        assert words in str(caught.value)
        assert len(ai.run(EMBED_ID, {"input": "still fine"}).data) == 1  # the model is still usable


# -- rerank and score ---------------------------------------------------------------------------


def test_rerank_matches_the_cross_encoder(local_ai, cross_encoder):
    response = local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS})
    assert isinstance(response, RerankResponse)
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])  # sigmoid of the one logit
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    assert [r.index for r in response.results] == order
    for result in response.results:
        assert result.relevance_score == pytest.approx(float(expected[result.index]), abs=1e-5)
        assert result.document.text == DOCUMENTS[result.index]


def test_rerank_usage_counts_every_pair(local_ai, tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs[RERANK_ID]))
    response = local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS})
    assert response.usage.total_tokens == sum(len(tok(QUERY, d)["input_ids"]) for d in DOCUMENTS)


def test_top_n_keeps_the_best(local_ai):
    everything = local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS})
    top = local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert [r.index for r in top.results] == [r.index for r in everything.results[:2]]
    assert top.usage.total_tokens == everything.usage.total_tokens


def test_max_tokens_per_doc_cuts_each_document(local_ai, tiny_dirs, cross_encoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs[RERANK_ID]))
    response = local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 3})
    query_tokens = len(tok(QUERY)["input_ids"])
    expected_tokens = sum(query_tokens + 1 + min(3, len(tok(d, add_special_tokens=False)["input_ids"])) + 1 for d in DOCUMENTS)
    assert response.usage.total_tokens == expected_tokens
    assert all(r.document.text in DOCUMENTS for r in response.results)  # the documents come back whole


def test_score_pairs_one_to_many_and_many_to_many(local_ai, cross_encoder):
    one_to_many = local_ai.run(RERANK_ID, {"text_1": QUERY, "text_2": DOCUMENTS})
    assert isinstance(one_to_many, ScoreResponse)
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    assert [d.index for d in one_to_many.data] == list(range(len(DOCUMENTS)))  # input order, not ranked
    np.testing.assert_allclose([d.score for d in one_to_many.data], expected, atol=1e-5)
    pairs = local_ai.run(RERANK_ID, {"text_1": DOCUMENTS[:2], "text_2": DOCUMENTS[2:]})
    np.testing.assert_allclose([d.score for d in pairs.data], cross_encoder.predict(list(zip(DOCUMENTS[:2], DOCUMENTS[2:], strict=True))), atol=1e-5)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "1:1, 1:N or N:N"),
        ({"query": "q", "documents": []}, "At least one text_pair element"),
        ({"query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
        ({"query": "q", "documents": ["d"], "max_tokens_per_doc": 9000}, "must be less than max_model_len"),
        ({"query": "q", "documents": ["word " * 5000]}, "maximum context length is 4096 tokens"),
    ],
)
def test_bad_rerank_payloads_are_clear_errors(tiny_dirs, payload, words):
    with AI(backend="local", models={RERANK_ID: str(tiny_dirs[RERANK_ID])}, device="cpu", max_model_len=4096) as ai:
        with pytest.raises(ValidationError) as caught:
            ai.run(RERANK_ID, payload)
        assert words in str(caught.value)
        assert ai.run(RERANK_ID, {"query": "q", "documents": ["d"]}).results


def test_retrieval_models_refuse_lora_and_stream(local_ai):
    with pytest.raises(azion_ai.LocalBackendError, match="LoRA"):
        local_ai.run(EMBED_ID, {"input": "x"}, lora="anything")
    with pytest.raises(ValidationError, match="not streamed"):
        local_ai.run(EMBED_ID, {"input": "x", "stream": True}, validate=False)


async def test_async_retrieval_loads_models_at_once_safely(tiny_dirs):
    """Two models' first requests at once load them on two threads; a model loaded afterwards (a
    tied-weights chat model) must still load whole (transformers' loading is not thread-safe)."""
    import asyncio

    from conftest import QWEN_ID

    models = {EMBED_ID: str(tiny_dirs[EMBED_ID]), RERANK_ID: str(tiny_dirs[RERANK_ID])}
    async with azion_ai.AsyncAI(backend="local", models=models, device="cpu") as aai:
        embedded, ranked = await asyncio.gather(
            aai.run(EMBED_ID, {"input": TEXTS[:2]}), aai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS})
        )
    assert len(embedded.data) == 2 and len(ranked.results) == len(DOCUMENTS)
    with AI(backend="local", models={QWEN_ID: str(tiny_dirs[QWEN_ID])}, device="cpu") as ai:
        chat = ai.run(QWEN_ID, {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "temperature": 0})
    assert chat.usage.completion_tokens == 2


# -- serve and the command line ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_dirs):
    from azion_ai._server import BackgroundServer, ChatServer

    models = {EMBED_ID: str(tiny_dirs[EMBED_ID]), RERANK_ID: str(tiny_dirs[RERANK_ID])}
    server = ChatServer(models, device="cpu", max_model_len=4096)
    with BackgroundServer(server.app) as running:
        for state in server.states.values():
            state.ready.wait()
        yield running.base_url


def test_serve_answers_embeddings_rerank_and_score(served, local_ai):
    body = httpx.post(f"{served}/embeddings", json={"model": EMBED_ID, "input": TEXTS[:2], "dimensions": 256}, timeout=120).json()
    direct = local_ai.run(EMBED_ID, {"input": TEXTS[:2], "dimensions": 256})
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], vectors(direct), atol=1e-6)
    assert body["usage"]["prompt_tokens"] == direct.usage.prompt_tokens
    ranked = httpx.post(f"{served}/rerank", json={"model": RERANK_ID, "query": QUERY, "documents": DOCUMENTS, "top_n": 3}, timeout=120).json()
    assert [r["index"] for r in ranked["results"]] == [r.index for r in local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS}).results[:3]]
    scored = httpx.post(f"{served}/score", json={"model": RERANK_ID, "text_1": QUERY, "text_2": DOCUMENTS}, timeout=120).json()
    assert [d["object"] for d in scored["data"]] == ["score"] * len(DOCUMENTS)


def test_openai_client_embeddings_through_serve(served, st_embedder):
    import openai

    client = openai.OpenAI(base_url=served, api_key="unused")
    got = client.embeddings.create(model=EMBED_ID, input=TEXTS[:3])  # openai-python asks for base64 and decodes it
    np.testing.assert_allclose([d.embedding for d in got.data], st_embedder.encode(TEXTS[:3]), atol=1e-5)


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [
        ("embeddings", {"model": EMBED_ID, "input": "x", "dimensions": 1024}, 400),
        ("embeddings", {"model": EMBED_ID, "input": "word " * 5000}, 400),
        ("embeddings", {"model": EMBED_ID}, 400),
        ("embeddings", {"model": RERANK_ID, "input": "x"}, 400),
        ("rerank", {"model": RERANK_ID, "query": "q", "documents": []}, 400),
        ("rerank", {"model": RERANK_ID, "text_1": "q", "text_2": ["d"]}, 400),
        ("score", {"model": RERANK_ID, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400),
        ("embeddings", {"model": "nope", "input": "x"}, 404),
    ],
)
def test_serve_refuses_bad_requests(served, route, body, status):
    response = httpx.post(f"{served}/{route}", json=body, timeout=120)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_cli_runs_both_models_locally(tiny_dirs):
    base = [sys.executable, "-m", "azion_ai._cli", "run"]
    embedded = subprocess.run(
        [*base, EMBED_ID, "The food was delicious", "--model-path", str(tiny_dirs[EMBED_ID]), "--device", "cpu", "--jsonl"],
        capture_output=True, text=True, timeout=300,
    )
    assert embedded.returncode == 0, embedded.stderr
    assert len(json.loads(embedded.stdout.strip().splitlines()[-1])["data"][0]["embedding"]) == 512
    ranked = subprocess.run(
        [*base, RERANK_ID, QUERY, "--document", DOCUMENTS[1], "--document", DOCUMENTS[0], "--model-path", str(tiny_dirs[RERANK_ID]), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert ranked.returncode == 0, ranked.stderr
    assert len(ranked.stdout.strip().splitlines()) == 2


@pytest.mark.gpu
def test_retrieval_on_cuda_matches_cpu(tiny_dirs, local_ai):
    """On CUDA (bf16) the tensors live on the GPU and the answers stay those of the CPU run, to
    bf16's precision; the rerank keeps its order where the CPU scores are far enough apart."""
    models = {EMBED_ID: str(tiny_dirs[EMBED_ID]), RERANK_ID: str(tiny_dirs[RERANK_ID])}
    with AI(backend="local", models=models, device="cuda") as ai:
        ai.transport.load(EMBED_ID)
        engine = ai.transport._poolers[EMBED_ID]
        assert next(engine.model.parameters()).is_cuda
        on_gpu = vectors(ai.run(EMBED_ID, {"input": TEXTS, "dimensions": 256}))
        on_cpu = vectors(local_ai.run(EMBED_ID, {"input": TEXTS, "dimensions": 256}))
        assert (on_gpu * on_cpu).sum(axis=1).min() > 0.99  # cosine similarity
        gpu_scores = {r.index: r.relevance_score for r in ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS}).results}
        cpu_scores = {r.index: r.relevance_score for r in local_ai.run(RERANK_ID, {"query": QUERY, "documents": DOCUMENTS}).results}
        for i, score in cpu_scores.items():
            assert gpu_scores[i] == pytest.approx(score, abs=2e-2)
