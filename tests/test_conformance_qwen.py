"""Qwen2.5-VL: the local backend and `azion-ai serve` against real vLLM on the same checkpoint.

The checkpoint is the tiny AWQ model's unquantized twin (float32 on both sides), in the
published file set; vLLM runs with stock flags plus the hermes tool parser, as Azion's page
implies. Every payload is compared on prompt tokens, greedy text token for token (the text and
the completion-token count), tool calls and finish reason.
"""

from __future__ import annotations

import pytest
from conformance import COMMON, MAX_MODEL_LEN, QWEN_TOOLS, answer, greedy, img, start_peers, stream_shape, text, user
from conftest import QWEN_ID, require

pytestmark = [pytest.mark.local, pytest.mark.vllm, pytest.mark.slow]
require("torch")

CATALOGUE = {**COMMON, **QWEN_TOOLS}


@pytest.fixture(scope="module")
def peers(tiny_dirs, tmp_path_factory):
    yield from start_peers(
        QWEN_ID,
        tiny_dirs[QWEN_ID] / "reference",
        tmp_path_factory.mktemp("vllm-qwen"),
        vllm_args=("--tool-call-parser", "hermes", "--enable-auto-tool-choice"),
    )


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_local_backend_answers_as_vllm(peers, name):
    payload = CATALOGUE[name]
    assert answer(peers.local_chat(payload)) == answer(peers.vllm_chat(payload))


@pytest.mark.parametrize("name", ["plain", "image_after_text", "two_images", "tools_history", "defaults"])
def test_served_answers_as_vllm(peers, name):
    payload = CATALOGUE[name]
    response = peers.serve_chat(payload)
    assert response.status_code == 200, response.text
    assert answer(response.json()) == answer(peers.vllm_chat(payload))


def test_prompt_tokens_match_vllms_own_rendering(peers):
    """vLLM's /tokenize renders the chat without generating: the same count for every payload."""
    for name, payload in CATALOGUE.items():
        expected = peers.vllm.tokenize_chat(payload)["count"]
        got = peers.local_chat({**payload, "max_tokens": 1})["usage"]["prompt_tokens"]
        assert got == expected, name


def test_a_full_hd_image_gets_the_checkpoints_pixel_budget(peers):
    """The published preprocessor bounds apply: 1920x1080 is 2,691 image tokens (vLLM's count)."""
    base = peers.local_chat(greedy([user(text("What is in this image?"))], max_tokens=1))["usage"]["prompt_tokens"]
    with_image = peers.local_chat(greedy([user(text("What is in this image?"), img((1920, 1080)))], max_tokens=1))
    assert with_image["usage"]["prompt_tokens"] - base == 2691 + 2  # image pads + vision start/end


@pytest.mark.parametrize("max_tokens", range(1, 13))
def test_output_cut_at_max_tokens_matches_including_partial_characters(peers, max_tokens):
    """The tiny model emits stray bytes: every cut point, mid-character ones included, matches."""
    payload = greedy([user("Olá, você está bem? 日本語 中文 😀")], max_tokens=max_tokens)
    ours, theirs = answer(peers.local_chat(payload)), answer(peers.vllm_chat(payload))
    assert ours == theirs
    assert not (ours["choices"][0]["content"] or "").endswith("\ufffd")


def test_sampling_defaults_come_from_generation_config_like_vllm(peers):
    """No sampling fields: Qwen's generation_config (top_k 1, repetition_penalty 1.05) applies on
    both sides; without the penalty the greedy answer differs, so the default is really used."""
    payload = {"messages": [user("Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000")], "max_tokens": 24}
    defaults = answer(peers.local_chat(payload))
    assert defaults == answer(peers.vllm_chat(payload))
    plain_greedy = answer(peers.local_chat({**payload, "temperature": 0, "repetition_penalty": 1.0}))
    assert plain_greedy != defaults
    # temperature 0 is greedy with repetition_penalty 1.05 still applied, on both sides
    zero = {**payload, "temperature": 0}
    assert answer(peers.local_chat(zero)) == answer(peers.vllm_chat(zero)) == defaults


def test_n_choices_with_the_checkpoints_defaults(peers):
    payload = {"messages": [user("Hello, world!")], "max_tokens": 8, "n": 3}
    ours, theirs = answer(peers.local_chat(payload)), answer(peers.vllm_chat(payload))
    assert ours == theirs
    assert len(ours["choices"]) == 3


def test_greedy_n_above_one_is_refused_as_by_vllm(peers):
    payload = greedy([user("Hi")], n=2)
    assert peers.vllm.chat(payload).status_code == 400
    response = peers.serve_chat(payload)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    import azion_ai

    with pytest.raises(azion_ai.ValidationError) as caught:
        peers.local.run(QWEN_ID, payload)
    assert caught.value.issues[0].path == "n"


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("name", ["plain", "image_after_text", "max_tokens_1", "tools_no_system"])
def test_streams_have_vllms_chunk_sequence(peers, name, include_usage):
    payload = dict(CATALOGUE[name])
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    theirs = stream_shape(peers.vllm.chat_stream(payload))
    ours = stream_shape(peers.serve_stream(payload))
    assert ours == theirs
    assert ours[0][0] == "role" and ours[-1] == "[DONE]"
    assert (ours[-2][0] == "usage") is include_usage


def test_stream_cut_inside_a_character_leaves_it_out(peers):
    for max_tokens in range(1, 10):
        payload = greedy([user("日本語 中文 😀 Olá")], max_tokens=max_tokens)
        ours = stream_shape(peers.serve_stream(payload))
        assert ours == stream_shape(peers.vllm.chat_stream(payload))
        assert not any(part[0] == "content" and "\ufffd" in part[1][-1:] for part in ours if isinstance(part, tuple))


# -- errors: the same status from `azion-ai serve` as from vLLM, and the SDK's exception locally


def _long_prompt(tokens: int) -> str:
    return " ".join(["Paris"] * tokens)


ERRORS = {
    "max_tokens_over_context": (greedy([user("Hi")], max_tokens=MAX_MODEL_LEN + 1), "ValidationError", "max_tokens"),
    "prompt_over_context": (greedy([user(_long_prompt(MAX_MODEL_LEN + 50))], max_tokens=4), "ValidationError", "messages"),
    "undecodable_image": (
        greedy([user(text("What?"), {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}})]),
        "ImageError",
        "messages[0].content[1].image_url.url",
    ),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_match_vllms_status(peers, name):
    import azion_ai

    payload, exception, param = ERRORS[name]
    theirs = peers.vllm.chat(payload)
    ours = peers.serve_chat(payload)
    assert theirs.status_code == 400, theirs.text
    assert ours.status_code == theirs.status_code, ours.text
    assert ours.json()["error"]["param"] == param
    with pytest.raises(getattr(azion_ai, exception)):
        peers.local.run(QWEN_ID, payload)
    # nothing is lost: the same backend answers the next request
    assert peers.local_chat(CATALOGUE["plain"])["choices"][0]["finish_reason"] == "length"


def test_unknown_model_is_404_on_both(peers):
    import httpx

    body = {"model": "no-such-model", "messages": [user("Hi")]}
    assert httpx.post(f"{peers.vllm.base_url}/chat/completions", json=body, timeout=30).status_code == 404
    assert httpx.post(f"{peers.serve_url}/chat/completions", json=body, timeout=30).status_code == 404


def test_oversized_max_tokens_stops_at_the_context_like_vllm(peers):
    """A prompt that fits, with max_tokens beyond what is left: not an error; output stops at the
    context with finish_reason "length", on both sides."""
    prompt = _long_prompt(MAX_MODEL_LEN - 60)
    payload = greedy([user(prompt)], max_tokens=500)
    ours, theirs = answer(peers.local_chat(payload)), answer(peers.vllm_chat(payload))
    assert ours == theirs
    assert ours["prompt_tokens"] + ours["completion_tokens"] == MAX_MODEL_LEN
    assert ours["choices"][0]["finish_reason"] == "length"


# -- a deployment's own template: vLLM's --chat-template, the local backend's chat_template ----


@pytest.fixture(scope="module")
def template_peers(tiny_dirs, tmp_path_factory):
    """Both sides told to render every request with the tokenizer's (tools) template, as a
    deployment that passes --chat-template does: images then go in front of the text."""
    from azion_ai._local._tiny import qwen_tokenizer_template

    where = tmp_path_factory.mktemp("vllm-qwen-template")
    template = where / "template.jinja"
    template.write_text(qwen_tokenizer_template())
    yield from start_peers(
        QWEN_ID,
        tiny_dirs[QWEN_ID] / "reference",
        where,
        vllm_args=("--tool-call-parser", "hermes", "--enable-auto-tool-choice", "--chat-template", str(template)),
        chat_template=str(template),
    )


@pytest.mark.parametrize("name", ["plain", "image_after_text", "two_images", "tools_no_system", "tools_history", "history_without_tools"])
def test_chat_template_option_renders_as_vllms_flag(template_peers, peers, name):
    payload = CATALOGUE[name]
    ours = answer(template_peers.local_chat(payload))
    assert ours == answer(template_peers.vllm_chat(payload))
    response = template_peers.serve_chat(payload)
    assert response.status_code == 200 and answer(response.json()) == ours
    if name in ("image_after_text", "two_images"):  # images in front, not in place: another prompt
        assert answer(peers.local_chat(payload)) != ours


# -- the OpenAI parameters, against vLLM on the same checkpoint ---------------------------------

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Lisbon"]}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["city", "rank"],
}
FORCED_TOOL = {"type": "function", "function": {"name": "get_weather"}}
STRICT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {"type": "object", "properties": {"location": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["location"]},
    },
}
PARAMETERS = {
    "max_completion_tokens": greedy([user("Name the european capitals")], max_tokens=12, max_completion_tokens=5),
    "stop_string": greedy([user("Name the european capitals")], max_tokens=16, stop=" brown"),
    "stop_list": greedy([user("Name the european capitals")], max_tokens=16, stop=["never there", "merci"]),
    "json_object": greedy([user("Give me JSON")], max_tokens=24, response_format={"type": "json_object"}),
    "json_schema": greedy(
        [user("Pick a city")], max_tokens=24, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    ),
    "tool_choice_none": greedy([user("What is the weather in London?")], tools=[CATALOGUE["tools_no_system"]["tools"][0]], tool_choice="none"),
    "tool_choice_named": greedy(
        [user("What is the weather in London?")], max_tokens=40, tools=CATALOGUE["tools_no_system"]["tools"], tool_choice=FORCED_TOOL
    ),
    "tool_choice_named_strict": greedy(
        [user("What is the weather in London?")], max_tokens=40, tools=[STRICT_WEATHER], tool_choice=FORCED_TOOL
    ),
    "tool_choice_required": greedy(
        [user("What is the weather in London?")], max_tokens=40, tools=[STRICT_WEATHER], tool_choice="required", parallel_tool_calls=False
    ),
    "logit_bias": greedy([user("Name the european capitals")], max_tokens=8, logit_bias={"300": 8.5, "301": -100}),
    "tool_choice_auto_strict": greedy([user("What is the weather in London?")], max_tokens=24, tools=[STRICT_WEATHER]),
}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_openai_parameters_answer_as_vllm(peers, name):
    payload = PARAMETERS[name]
    ours, theirs = peers.local_chat(payload), peers.vllm_chat(payload)
    assert answer(ours) == answer(theirs)
    assert ours["choices"][0]["stop_reason"] == theirs["choices"][0]["stop_reason"]
    if name.startswith("stop"):
        assert ours["choices"][0]["finish_reason"] == "stop" and ours["choices"][0]["stop_reason"]


def test_logprobs_match_vllms(peers):
    payload = greedy([user("Name the european capitals")], max_tokens=6, logprobs=True, top_logprobs=3)
    ours = peers.local_chat(payload)["choices"][0]["logprobs"]["content"]
    theirs = peers.vllm_chat(payload)["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in ours] == [e["token"] for e in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine["logprob"] == pytest.approx(ref["logprob"], abs=1e-3)
        assert [t["token"] for t in mine["top_logprobs"]] == [t["token"] for t in ref["top_logprobs"]]


def per_choice(events: list) -> dict[int, list]:
    """A stream's chunks as vLLM sends them for n > 1: every chunk holds one choice (clients read
    ``choices[0]``); per choice index, its role chunk, all its content, its finish."""
    shapes: dict[int, list] = {}
    texts: dict[int, str] = {}
    for event in events:
        if event == "[DONE]" or not event["choices"]:
            continue
        assert len(event["choices"]) == 1, f"a chunk with {len(event['choices'])} choices: {event}"
        choice = event["choices"][0]
        index, delta = choice["index"], choice.get("delta") or {}
        shape = shapes.setdefault(index, [])
        if "role" in delta:
            assert not shape, f"role after the first chunk of choice {index}"
            shape.append(("role", delta["role"]))
            continue
        texts[index] = texts.get(index, "") + (delta.get("content") or "")
        if choice.get("finish_reason"):
            shape += [("content", texts[index]), ("finish", choice["finish_reason"])]
    return shapes


@pytest.mark.parametrize("include_usage", [False, True])
def test_n_choice_streams_send_one_choice_per_chunk_as_vllm(peers, include_usage):
    """Qwen's defaults (top_k 1) make n = 3 deterministic on both sides, so the streams compare
    choice by choice; every chunk, ours (served and in-process) and vLLM's, holds one choice."""
    payload = {"messages": [user("Hello, world!")], "max_tokens": 8, "n": 3}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    theirs = per_choice(peers.vllm.chat_stream(payload))
    assert sorted(theirs) == [0, 1, 2]
    assert per_choice(peers.serve_stream(payload)) == theirs
    with peers.local.run(QWEN_ID, {**payload, "stream": True}) as stream:
        local = [chunk.model_dump(mode="json", exclude_unset=True) for chunk in stream]
    assert per_choice(local) == theirs


def test_a_request_without_model_is_answered_by_the_one_served_as_by_vllm(peers):
    import httpx

    payload = greedy([user("Hi")], max_tokens=4)
    theirs = httpx.post(f"{peers.vllm.base_url}/chat/completions", json=payload, timeout=120)
    ours = httpx.post(f"{peers.serve_url}/chat/completions", json=payload, timeout=120)
    assert theirs.status_code == ours.status_code == 200
    assert answer(ours.json()) == answer(theirs.json())
