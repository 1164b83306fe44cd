"""engine="vllm" on the retrieval models: the same ``ai.run``, answered by vLLM's pooling runner
in-process, checked against vLLM's own OpenAI server on the same tiny checkpoints (float32 both
sides), with the payloads of tests/test_conformance_retrieval.py."""

from __future__ import annotations

import pytest
import vllm_reference
from conftest import MAX_MODEL_LEN, engine_ai
from test_conformance_retrieval import (
    BAD_EMBEDDINGS,
    BAD_RERANKS,
    EMBED_ARGS,
    EMBED_ID,
    EMBEDDINGS,
    RERANK_ARGS,
    RERANK_ID,
    RERANKS,
    SCORES,
    assert_same_embeddings,
    assert_same_ranking,
    assert_same_scores,
    post,
)

from azion_ai import ValidationError


@pytest.fixture(scope="class")
def embed_pair(tiny_dirs, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "embed.log"
    with vllm_reference.VLLMServer(tiny_dirs[EMBED_ID], EMBED_ID, max_model_len=MAX_MODEL_LEN, extra_args=EMBED_ARGS, log_path=log) as server:
        ai = engine_ai(EMBED_ID, tiny_dirs[EMBED_ID])
        yield server, ai
        ai.close()


@pytest.fixture(scope="class")
def rerank_pair(tiny_dirs, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "rerank.log"
    with vllm_reference.VLLMServer(tiny_dirs[RERANK_ID], RERANK_ID, max_model_len=MAX_MODEL_LEN, extra_args=RERANK_ARGS, log_path=log) as server:
        ai = engine_ai(RERANK_ID, tiny_dirs[RERANK_ID])
        yield server, ai
        ai.close()


class TestEmbeddings:
    @pytest.mark.parametrize("name", list(EMBEDDINGS))
    def test_payload(self, embed_pair, name):
        server, ai = embed_pair
        reference = post(server.base_url, "embeddings", EMBED_ID, EMBEDDINGS[name])
        assert reference.status_code == 200, reference.text
        assert_same_embeddings(ai.run(EMBED_ID, EMBEDDINGS[name]).model_dump(mode="json"), reference.json())

    @pytest.mark.parametrize("name", [n for n in BAD_EMBEDDINGS if n != "missing_input"])
    def test_bad_input_is_a_validation_error_where_vllm_answers_400(self, embed_pair, name):
        server, ai = embed_pair
        assert post(server.base_url, "embeddings", EMBED_ID, BAD_EMBEDDINGS[name]).status_code == 400
        with pytest.raises(ValidationError):
            ai.run(EMBED_ID, BAD_EMBEDDINGS[name])
        assert ai.run(EMBED_ID, {"input": "still fine"}).data


class TestRerankAndScore:
    @pytest.mark.parametrize("name", list(RERANKS))
    def test_rerank(self, rerank_pair, name):
        server, ai = rerank_pair
        reference = post(server.base_url, "rerank", RERANK_ID, RERANKS[name])
        assert reference.status_code == 200, reference.text
        assert_same_ranking(ai.run(RERANK_ID, RERANKS[name]).model_dump(mode="json"), reference.json())

    @pytest.mark.parametrize("name", list(SCORES))
    def test_score(self, rerank_pair, name):
        server, ai = rerank_pair
        reference = post(server.base_url, "score", RERANK_ID, SCORES[name])
        assert reference.status_code == 200, reference.text
        assert_same_scores(ai.run(RERANK_ID, SCORES[name]).model_dump(mode="json"), reference.json())

    @pytest.mark.parametrize("name", [n for n in BAD_RERANKS if n != "missing_documents"])
    def test_bad_input_is_a_validation_error_where_vllm_answers_400(self, rerank_pair, name):
        server, ai = rerank_pair
        route, payload = BAD_RERANKS[name]
        assert post(server.base_url, route, RERANK_ID, payload).status_code == 400
        with pytest.raises(ValidationError):
            ai.run(RERANK_ID, payload)


def test_a_dead_pooling_engine_fails_its_request_and_is_replaced(tiny_dirs):
    """The retrieval engine's vLLM process killed while idle: requests fail with the SDK's error
    (none waits forever) until the engine is seen dead; the next one starts a new engine, whose
    vectors are those of a clean start."""
    from conftest import engine_cores_started, failures_until_dead, kill

    payload = EMBEDDINGS[next(iter(EMBEDDINGS))]
    with engine_ai(EMBED_ID, tiny_dirs[EMBED_ID]) as ai:
        with engine_cores_started() as cores:
            before = ai.run(EMBED_ID, payload).model_dump(mode="json")
        old = ai.transport._poolers[EMBED_ID]
        kill(cores)
        failures = failures_until_dead(old, lambda: ai.run(EMBED_ID, payload, timeout=30))
        assert all("stopped" in message for message in failures), failures
        after = ai.run(EMBED_ID, payload).model_dump(mode="json")
        assert ai.transport._poolers[EMBED_ID] is not old
        assert_same_embeddings(after, before)
