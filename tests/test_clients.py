"""Third-party OpenAI clients against `azion-ai serve`, and the defects they tripped over.

Each client's flow runs end to end on the tiny random models: instructor (TOOLS and JSON_SCHEMA),
pydantic-ai (an agent with a tool, structured output through a tool and through NativeOutput),
llama-index's OpenAILike (chat, stream_chat, astream_chat) and openai-python's n > 1 stream.
Structured outputs end on random weights because every field of their schemas is bounded by the
grammar (enums, integers with a range, strings with maxLength) and the server allows no free
whitespace (`--disable-any-whitespace`), as a user serving a weak model would run it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import pytest
from conftest import INTERNVL_ID, QWEN_ID
from pydantic import BaseModel, Field

import azion_ai
from azion_ai import AI

pytestmark = [pytest.mark.local, pytest.mark.slow]

ASK = [{"role": "user", "content": "Name the european capitals"}]


class City(BaseModel):
    """A city and its rank."""

    city: Literal["Paris", "Rome", "Lisbon"]
    rank: int = Field(ge=1, le=9)


CITY_TOOL = {
    "type": "function",
    "function": {
        "name": "pick_city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Lisbon"]},
                "rank": {"type": "integer", "minimum": 1, "maximum": 9},
                "note": {"type": "string", "maxLength": 6},
            },
            "required": ["city", "rank", "note"],
            "additionalProperties": False,
        },
    },
}


def _serve(tiny_dirs, **options):
    from azion_ai._server import BackgroundServer, ChatServer

    server = ChatServer({k: str(v) for k, v in tiny_dirs.items()}, device="cpu", preload=False, any_whitespace=False, **options)
    return BackgroundServer(server.app)


@pytest.fixture(scope="module")
def served(tiny_dirs):
    """`azion-ai serve --disable-any-whitespace` on both tiny models."""
    with _serve(tiny_dirs) as running:
        yield running.base_url


@pytest.fixture(scope="module")
def served_pinned(tiny_dirs):
    """The same with `--tool-strict-level parameter` (vLLM's flag): every tool's arguments follow
    its schema, strict or not, which instructor's TOOLS mode (tools without "strict") needs on
    weights that do not know the schema."""
    with _serve(tiny_dirs, tool_strict_level="parameter") as running:
        yield running.base_url


@pytest.fixture(scope="module")
def tight(tiny_dirs):
    with AI(backend="local", models={k: str(v) for k, v in tiny_dirs.items()}, device="cpu", any_whitespace=False) as ai:
        yield ai


def _raw_post(url: str, body: str, **headers: str) -> httpx.Response:
    """A body sent as written (httpx's json= cannot encode a lone surrogate; a JSON escape can)."""
    return httpx.post(f"{url}/chat/completions", content=body.encode(), headers={"content-type": "application/json", **headers}, timeout=120)


# -- 1. n > 1 streams: one choice per chunk ---------------------------------------------------


def test_n_choice_streams_have_one_choice_per_chunk_and_the_whole_answers_text(served, tight):
    import openai

    payload = {"messages": ASK, "max_tokens": 6, "n": 3, "seed": 5, "temperature": 1.0, "top_p": 1.0, "top_k": -1}
    whole = [c.message.content for c in tight.run(QWEN_ID, payload).choices]
    assert len(set(whole)) > 1  # really sampled: the choices differ
    with tight.run(QWEN_ID, {**payload, "stream": True}) as stream:
        local = list(stream)
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    remote = list(client.chat.completions.create(
        model=QWEN_ID, messages=ASK, max_tokens=6, n=3, seed=5, temperature=1.0, top_p=1.0, extra_body={"top_k": -1}, stream=True
    ))
    for chunks in (local, remote):
        assert all(len(chunk.choices) == 1 for chunk in chunks if chunk.choices)
        texts = ["", "", ""]
        for chunk in chunks:
            texts[chunk.choices[0].index] += chunk.choices[0].delta.content or ""  # as clients read it
        assert texts == whole


# -- 2. forced tool calls end ------------------------------------------------------------------


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "pick_city"}}, "required"])
def test_forced_calls_of_a_strict_tool_end_without_free_whitespace(tight, choice):
    from jsonschema import validate

    payload = {"messages": ASK, "max_tokens": 300, "temperature": 0, "tools": [CITY_TOOL], "tool_choice": choice, "parallel_tool_calls": False}
    done = tight.run(QWEN_ID, payload)
    message = done.choices[0].message
    assert [c.function.name for c in message.tool_calls] == ["pick_city"], message.content
    validate(json.loads(message.tool_calls[0].function.arguments), CITY_TOOL["function"]["parameters"])
    assert done.choices[0].finish_reason == ("tool_calls" if choice == "required" else "stop")
    assert done.usage.completion_tokens < payload["max_tokens"]  # a bounded call, not padding until max_tokens


def test_the_tool_grammar_allows_no_whitespace_inside_arguments_when_asked(tiny_dirs):
    """xgrammar's own matcher on the grammar we build: without free whitespace the compact
    arguments pass and the spaced ones do not; with it (the default, vLLM's), both pass."""
    import xgrammar
    from transformers import AutoTokenizer

    from azion_ai._local._constraints import GrammarSpec

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[QWEN_ID])
    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer)))
    compact = '<tool_call>\n{"name": "pick_city", "arguments": {"city":"Rome","rank":2,"note":"a b"}}\n</tool_call>'
    spaced = '<tool_call>\n{"name": "pick_city", "arguments": {"city": "Rome", "rank":2,"note":"a b"}}\n</tool_call>'
    for any_whitespace, accepted in ((True, [True, True]), (False, [True, False])):
        spec = GrammarSpec.from_payload({"tools": [CITY_TOOL], "tool_choice": "required"}, any_whitespace=any_whitespace)
        grammar = compiler.compile_structural_tag(spec.text)
        assert [xgrammar.GrammarMatcher(grammar).accept_string(text) for text in (compact, spaced)] == accepted


def test_a_forced_answer_cut_in_a_later_call_keeps_the_calls_before_it():
    from azion_ai._local._chat import parse_tool_calls

    first = '<tool_call>\n{"name": "pick_city", "arguments": {"city":"Rome","rank":2,"note":""}}\n</tool_call>'
    for cut in (first + '<tool_call>{"name": "pi', first + "<tool_call>", first[: -len("call>")]):
        content, calls = parse_tool_calls(cut, forced=True)
        assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Rome", "rank": 2, "note": ""}]
        assert not content
        # unforced, as vLLM's hermes parser: any broken call makes the whole answer content
        assert parse_tool_calls(cut) == (cut, [])


# -- 3. arguments are always JSON ------------------------------------------------------------


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse, parse_float=str, parse_int=str)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('{"x": 9001320E951647500505}', {"x": "9001320E951647500505"}),  # float('inf') in Python
        ('{"x": 1e-999}', {"x": "1e-999"}),  # 0.0 in Python
        ('{"x": 3.14159265358979323846264}', {"x": "3.14159265358979323846264"}),  # past float precision
        ('{"x": 123456789012345678901234567890}', {"x": "123456789012345678901234567890"}),
        ('{"x": 2.5, "y": [1, -0.5]}', {"x": "2.5", "y": ["1", "-0.5"]}),
    ],
)
def test_tool_call_arguments_are_valid_json_with_the_models_digits(written, expected):
    from azion_ai._local._chat import parse_tool_calls

    _, calls = parse_tool_calls(f'<tool_call>\n{{"name": "f", "arguments": {written}}}\n</tool_call>')
    assert _strict_json(calls[0]["function"]["arguments"]) == expected


def test_arguments_holding_nan_are_no_call():
    from azion_ai._local._chat import parse_tool_calls

    text = '<tool_call>\n{"name": "f", "arguments": {"x": NaN}}\n</tool_call>'
    assert parse_tool_calls(text) == (text, [])


# -- 4. a lone surrogate is bad input everywhere ---------------------------------------------


def test_serve_refuses_a_lone_surrogate_with_a_400_and_stays_usable(served):
    body = json.dumps({"model": QWEN_ID, "messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 2})
    assert "\\ud800" in body  # sent as the JSON escape, as a client holding such a string sends it
    refused = _raw_post(served, body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "messages[0].content" and "surrogate" in error["message"]
    assert _raw_post(served, json.dumps({"model": QWEN_ID, "messages": ASK, "max_tokens": 2})).status_code == 200


@pytest.mark.parametrize("validate", [True, False])
def test_the_sdk_refuses_a_lone_surrogate_before_sending_or_running(tight, validate):
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x\udfffy"}]}], "max_tokens": 2}
    remote = AI(base_url="http://127.0.0.1:9/v1", token="t", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(record)))
    for ai in (remote, tight):
        with pytest.raises(azion_ai.ValidationError) as caught:
            ai.run(QWEN_ID, payload, validate=validate)
        assert caught.value.issues[0].path == "messages[0].content[0].text"
    assert sent == []
    assert tight.run(QWEN_ID, {"messages": ASK, "max_tokens": 2}).usage.completion_tokens == 2


# -- 5. a request without a model -------------------------------------------------------------


def test_a_request_without_model_names_the_field(served, tiny_dirs):
    refused = httpx.post(f"{served}/chat/completions", json={"messages": ASK, "max_tokens": 2}, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "model" and "required" in refused.json()["error"]["message"]
    wrong_type = httpx.post(f"{served}/chat/completions", json={"model": 7, "messages": ASK}, timeout=60)
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "model"
    from azion_ai._server import BackgroundServer, ChatServer

    one = ChatServer({INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu", preload=False)
    with BackgroundServer(one.app) as running:  # as vLLM: no model means the one served
        answered = httpx.post(f"{running.base_url}/chat/completions", json={"messages": ASK, "max_tokens": 2}, timeout=60)
    assert answered.status_code == 200 and answered.json()["model"] == INTERNVL_ID


# -- 6. request ids ---------------------------------------------------------------------------


def test_every_answer_carries_a_request_id_and_honours_the_clients(served):
    import openai

    def request_id(response: httpx.Response) -> str:
        value = response.headers.get("x-request-id")
        assert value, f"no x-request-id on {response.request.method} {response.request.url} ({response.status_code})"
        return value

    whole = httpx.post(f"{served}/chat/completions", json={"model": QWEN_ID, "messages": ASK, "max_tokens": 2}, timeout=60)
    with httpx.stream("POST", f"{served}/chat/completions", json={"model": QWEN_ID, "messages": ASK, "max_tokens": 2, "stream": True}, timeout=60) as stream:
        streamed = request_id(stream)
    answers = [
        whole,
        httpx.post(f"{served}/chat/completions", json={"model": QWEN_ID, "messages": []}, timeout=60),  # 400
        httpx.post(f"{served}/chat/completions", json={"model": "nope", "messages": ASK}, timeout=60),  # 404
        httpx.post(f"{served}/completions", json={"model": QWEN_ID, "prompt": "hi"}, timeout=60),  # no route
        httpx.get(f"{served}/models", timeout=60),
    ]
    ids = [request_id(r) for r in answers] + [streamed]
    assert len(set(ids)) == len(ids)  # a new one each
    mine = httpx.post(f"{served}/chat/completions", json={"model": "nope", "messages": ASK}, headers={"X-Request-Id": "trace-42"}, timeout=60)
    assert mine.headers["x-request-id"] == "trace-42"

    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    done = client.chat.completions.create(model=QWEN_ID, messages=ASK, max_tokens=2, extra_headers={"X-Request-Id": "trace-43"})
    assert done._request_id == "trace-43"
    with AI(base_url=served) as ai:
        ours = ai.run(QWEN_ID, {"messages": ASK, "max_tokens": 2})
        assert ours.request_id and ours.request_id not in ids
        assert ai.run(QWEN_ID, {"messages": ASK, "max_tokens": 2}, extra_headers={"X-Request-Id": "trace-44"}).request_id == "trace-44"


# -- routes clients try, and what Azion's schema refuses ---------------------------------------


@pytest.mark.parametrize(("path", "points_to"), [("/completions", "is_chat_model=True"), ("/responses", "chat.completions.create")])
def test_routes_not_served_say_what_to_use(served, path, points_to):
    response = httpx.post(f"{served}{path}", json={"model": QWEN_ID, "input": "hi"}, timeout=60)
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "/v1/chat/completions" in message and points_to in message


@pytest.mark.parametrize(
    ("messages", "path", "says"),
    [
        ([{"role": "developer", "content": "Be brief"}, *ASK], "messages[0].role", '"developer" role'),
        (
            [*ASK, {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "pick_city", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "done"}]}],
            "messages[2].content",
            "tool result as one string",
        ),
    ],
)
def test_what_openai_allows_and_azion_refuses_is_said_with_the_fix(served, messages, path, says):
    response = httpx.post(f"{served}/chat/completions", json={"model": QWEN_ID, "messages": messages, "tools": [CITY_TOOL]}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == path
    assert says in error["message"] and "docs/validation.md" in error["message"]


# -- the clients' flows ----------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_instructor_json_schema_mode(served, model_id):
    import instructor
    import openai

    client = instructor.from_openai(openai.OpenAI(base_url=served, api_key="unused", max_retries=0), mode=instructor.Mode.JSON_SCHEMA)
    city = client.chat.completions.create(model=model_id, response_model=City, messages=[{"role": "user", "content": "Pick a city"}], max_tokens=60, temperature=0, max_retries=1)
    assert isinstance(city, City)


def test_instructor_tools_mode(served_pinned):
    import instructor
    import openai

    client = instructor.from_openai(openai.OpenAI(base_url=served_pinned, api_key="unused", max_retries=0), mode=instructor.Mode.TOOLS)
    city, completion = client.chat.completions.create_with_completion(
        model=QWEN_ID, response_model=City, messages=[{"role": "user", "content": "Pick a city"}], max_tokens=60, temperature=0, max_retries=1
    )
    assert isinstance(city, City)
    assert completion.choices[0].message.tool_calls[0].function.name == "City"


def _pydantic_ai_model(base_url: str, model_id: str):
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIChatModel(model_id, provider=OpenAIProvider(base_url=base_url, api_key="unused"))


def test_pydantic_ai_structured_output_through_a_tool(served):
    """pydantic-ai's default: a strict output tool under tool_choice "required"."""
    from pydantic_ai import Agent

    agent = Agent(_pydantic_ai_model(served, QWEN_ID), output_type=City, model_settings={"max_tokens": 60, "temperature": 0}, retries=0)
    assert isinstance(agent.run_sync("Pick a city").output, City)


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_pydantic_ai_native_output(served, model_id):
    from pydantic_ai import Agent, NativeOutput

    agent = Agent(_pydantic_ai_model(served, model_id), output_type=NativeOutput(City), model_settings={"max_tokens": 60, "temperature": 0}, retries=0)
    assert isinstance(agent.run_sync("Pick a city").output, City)


def test_pydantic_ai_agent_calls_its_tool_and_answers(served):
    """The tool round trip: a call, the tool's result sent back as a tool message, then the
    structured answer. Which prompt makes the random model call the tool before answering is luck,
    so a few are tried; every run must end (answer or request limit), and one must go through the
    tool."""
    from pydantic_ai import Agent
    from pydantic_ai.usage import UsageLimits

    looked_up: list[str] = []
    agent = Agent(_pydantic_ai_model(served, QWEN_ID), output_type=City, model_settings={"max_tokens": 60, "temperature": 0}, retries=0)

    @agent.tool_plain
    def lookup(city: Literal["Paris", "Rome"]) -> str:
        """Look a city up."""
        looked_up.append(city)
        return f"{city} is a capital"

    answered = []
    for prompt in ("Use lookup", "Pick a city", "Look up Paris, then pick a city"):
        before = len(looked_up)
        try:
            result = agent.run_sync(prompt, usage_limits=UsageLimits(request_limit=10))
        except Exception as exc:  # noqa: BLE001 - only the usage limit may stop a run
            assert type(exc).__name__ == "UsageLimitExceeded", exc
            continue
        assert isinstance(result.output, City)
        answered.append(len(looked_up) > before)
    assert any(answered), f"no run called the tool before answering ({looked_up})"


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_llama_index_openai_like_chat_and_streams(served, model_id):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=model_id, api_base=served, api_key="unused", is_chat_model=True, max_tokens=8, temperature=0, context_window=4096)
    messages = [ChatMessage(role="user", content="Name the european capitals")]
    whole = llm.chat(messages).message.content
    assert whole
    assert "".join(part.delta or "" for part in llm.stream_chat(messages)) == whole

    async def astream() -> str:
        return "".join([part.delta or "" async for part in await llm.astream_chat(messages)])

    assert asyncio.run(astream()) == whole
    # its default, the legacy completions route, is not Azion's API: a 404 saying what to set
    with pytest.raises(Exception, match="is_chat_model=True"):
        OpenAILike(model=model_id, api_base=served, api_key="unused", max_tokens=2, max_retries=0).complete("Hi")
