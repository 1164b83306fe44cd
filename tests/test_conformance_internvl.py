"""InternVL3 (``-hf`` layout): the local backend and `azion-ai serve` against real vLLM.

The tiny checkpoint runs in float32 on both sides; every payload is compared on prompt tokens,
greedy text token for token, and finish reason.
"""

from __future__ import annotations

import pytest
from conformance import COMMON, answer, greedy, img, start_peers, stream_shape, text, user
from conftest import INTERNVL_ID, require

pytestmark = [pytest.mark.local, pytest.mark.vllm, pytest.mark.slow]
require("torch")


@pytest.fixture(scope="module")
def peers(tiny_dirs, tmp_path_factory):
    yield from start_peers(INTERNVL_ID, tiny_dirs[INTERNVL_ID], tmp_path_factory.mktemp("vllm-internvl"))


# The tiny InternVL's generation_config sets no sampling values (as converted -hf checkpoints):
# payloads without a temperature sample at 1.0 on both sides, so only greedy ones compare exactly.
GREEDY = {name: payload for name, payload in COMMON.items() if "temperature" in payload}


@pytest.mark.parametrize("name", sorted(GREEDY))
def test_local_backend_answers_as_vllm(peers, name):
    payload = COMMON[name]
    assert answer(peers.local_chat(payload)) == answer(peers.vllm_chat(payload))


@pytest.mark.parametrize("name", sorted(set(COMMON) - set(GREEDY)))
def test_neutral_defaults_sample_like_vllm(peers, name):
    """No sampling defaults in the checkpoint: temperature 1 on both sides (random text, the same
    prompt, the same number of tokens, and not the greedy answer)."""
    payload = COMMON[name]
    ours, theirs = answer(peers.local_chat(payload)), answer(peers.vllm_chat(payload))
    assert (ours["prompt_tokens"], ours["completion_tokens"]) == (theirs["prompt_tokens"], theirs["completion_tokens"])
    greedy_answer = answer(peers.local_chat({**payload, "temperature": 0}))
    assert ours["choices"] != greedy_answer["choices"] or theirs["choices"] != greedy_answer["choices"]


@pytest.mark.parametrize("name", ["plain", "image_before_text", "two_images", "images_across_turns"])
def test_served_answers_as_vllm(peers, name):
    payload = COMMON[name]
    response = peers.serve_chat(payload)
    assert response.status_code == 200, response.text
    assert answer(response.json()) == answer(peers.vllm_chat(payload))


def test_prompt_tokens_match_vllms_own_rendering(peers):
    for name, payload in COMMON.items():
        expected = peers.vllm.tokenize_chat(payload)["count"]
        got = peers.local_chat({**payload, "max_tokens": 1})["usage"]["prompt_tokens"]
        assert got == expected, name


def test_a_large_image_is_tiled_like_vllm(peers):
    """A 16:9 image: a 4x2 grid of tiles (the closest ratio within max_patches 12) plus a thumbnail."""
    base = peers.local_chat(greedy([user(text("What is in this image?"))], max_tokens=1))["usage"]["prompt_tokens"]
    wide = peers.local_chat(greedy([user(text("What is in this image?"), img((1920, 1080)))], max_tokens=1))
    per_tile = 4  # 56-px tiles of the tiny checkpoint: (56/14)^2 / 4 tokens after pixel shuffle
    assert wide["usage"]["prompt_tokens"] - base == 9 * per_tile + 2 + 1  # <img> </img> and a newline
    assert wide["usage"]["prompt_tokens"] == peers.vllm.tokenize_chat(greedy([user(text("What is in this image?"), img((1920, 1080)))]))["count"]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", ["plain", "image_after_text"])
def test_streams_have_vllms_chunk_sequence(peers, name, include_usage):
    payload = dict(COMMON[name])
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    ours = stream_shape(peers.serve_stream(payload))
    assert ours == stream_shape(peers.vllm.chat_stream(payload))
    assert (ours[-2][0] == "usage") is include_usage


# -- the original layout (internvl_chat): the prompt vLLM renders for its own files -------------


@pytest.fixture(scope="module")
def original_peers(tiny_dirs, tmp_path_factory):
    """vLLM's server on the -hf twin rendering the original tokenizer's template
    (conformance.original_layout_server), and the local backend on the original layout with its
    defaults: the same prompts, the same weights."""
    from checkpoints import build_internvl3_original
    from conformance import MAX_MODEL_LEN, environ, original_layout_server

    from azion_ai import AI

    where = tmp_path_factory.mktemp("vllm-internvl-original")
    with environ(AZION_AI_CACHE=str(where / "cache")):  # the conversion's cache: this test's own
        original = build_internvl3_original(tiny_dirs[INTERNVL_ID], where / "InternVL3-1B-Instruct")
        server = original_layout_server(tiny_dirs[INTERNVL_ID], original, INTERNVL_ID, where)
        with server, AI(backend="local", models={INTERNVL_ID: str(original)}, device="cpu", max_model_len=MAX_MODEL_LEN) as local:
            yield server, local


@pytest.mark.parametrize("name", ["plain", "system", "multi_turn", "image_after_text", "image_before_text", "two_images", "images_across_turns"])
def test_original_layout_answers_as_vllm_renders_its_files(original_peers, name):
    server, local = original_peers
    payload = COMMON[name]
    ours = answer(local.run(INTERNVL_ID, payload).model_dump(mode="json"))
    response = server.chat(payload)
    assert response.status_code == 200, response.text
    assert ours == answer(response.json())
