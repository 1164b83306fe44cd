"""The parameters every OpenAI client sends, honoured by the local backend and `azion-ai serve`.

Each test fails if its parameter is ignored: the answer is compared with the same request
without it. Third-party clients (openai, langchain-openai, LiteLLM) drive `azion-ai serve`.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from conftest import INTERNVL_ID, QWEN_ID, require

import azion_ai
from azion_ai import AI

pytestmark = pytest.mark.local
torch = require("torch")

ASK = [{"role": "user", "content": "Name the european capitals"}]
GREEDY = {"messages": ASK, "max_tokens": 12, "temperature": 0}
SAMPLED = {"messages": ASK, "max_tokens": 10, "temperature": 1.0, "top_p": 1.0, "top_k": -1}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string", "enum": ["Paris", "Rome"]}}, "required": ["location"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["zone"]}}}
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Lisbon"]}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["city", "rank"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tight(tiny_dirs):
    """A backend whose structured output allows no free whitespace: the tiny random model
    then finishes its JSON within a few tokens (vLLM: disable_any_whitespace)."""
    with AI(backend="local", models={k: str(v) for k, v in tiny_dirs.items()}, device="cpu", any_whitespace=False) as ai:
        yield ai


@pytest.fixture(scope="module")
def served(tiny_dirs):
    from azion_ai._server import BackgroundServer, ChatServer

    server = ChatServer({k: str(v) for k, v in tiny_dirs.items()}, device="cpu", preload=False, any_whitespace=False)
    with BackgroundServer(server.app) as running:
        yield server, running


def text_of(completion) -> str:
    return completion.choices[0].message.content or ""


# -- max_completion_tokens --------------------------------------------------------------------


def test_max_completion_tokens_limits_and_wins_over_max_tokens(local_ai):
    done = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 12, "max_completion_tokens": 3})
    assert done.usage.completion_tokens == 3 and done.choices[0].finish_reason == "length"
    alone = local_ai.run(INTERNVL_ID, {"messages": ASK, "temperature": 0, "max_completion_tokens": 4})
    assert alone.usage.completion_tokens == 4


# -- stop ---------------------------------------------------------------------------------------


def test_stop_ends_before_the_string_with_its_stop_reason(local_ai):
    full = text_of(local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 16}))
    stop = full[6:9]
    assert stop and full.index(stop) == 6
    done = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 16, "stop": ["never-there", stop]})
    assert text_of(done) == full[:6]
    assert done.choices[0].finish_reason == "stop" and done.choices[0].stop_reason == stop
    one = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 16, "stop": stop})
    assert text_of(one) == full[:6]


def test_a_streamed_stop_never_leaks_a_partial_stop_string(local_ai):
    full = text_of(local_ai.run(INTERNVL_ID, {**GREEDY, "max_tokens": 16}))
    stop = full[5:9]
    pieces = [c.choices[0].delta.content or "" for c in local_ai.run(INTERNVL_ID, {**GREEDY, "max_tokens": 16, "stop": stop, "stream": True}) if c.choices]
    streamed = "".join(pieces)
    assert streamed == full[:5]
    for i in range(1, len(stop)):
        assert not streamed.endswith(stop[:i]) or full[:5].endswith(stop[:i])


# -- seed -------------------------------------------------------------------------------------


def test_seed_gives_the_same_sample_whatever_runs_beside_it(local_ai):
    first = text_of(local_ai.run(QWEN_ID, {**SAMPLED, "seed": 1234}))
    others = {text_of(local_ai.run(QWEN_ID, {**SAMPLED, "seed": s})) for s in (1, 2, 3)}
    assert len(others | {first}) > 1  # seeds matter: the samples differ
    results: list[str] = []

    def noise() -> None:
        for _ in range(3):
            local_ai.run(INTERNVL_ID, SAMPLED)

    threads = [threading.Thread(target=noise) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(2):
        results.append(text_of(local_ai.run(QWEN_ID, {**SAMPLED, "seed": 1234})))
    for t in threads:
        t.join(120)
    assert results == [first, first]


def test_seeded_choices_differ_from_each_other_but_repeat(local_ai):
    payload = {**SAMPLED, "n": 3, "seed": 7}
    a = [c.message.content for c in local_ai.run(QWEN_ID, payload).choices]
    b = [c.message.content for c in local_ai.run(QWEN_ID, payload).choices]
    assert a == b and len(set(a)) > 1


# -- logprobs -----------------------------------------------------------------------------------


def test_logprobs_in_openais_shape_whole_and_streamed(local_ai):
    done = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 5, "logprobs": True, "top_logprobs": 3})
    content = done.choices[0].logprobs["content"]
    assert len(content) == 5
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 3 and entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode("utf-8", errors="replace"))
    # greedy: the chosen token is the most likely one (checkpoint's repetition penalty aside: raw logprobs)
    assert content[0]["logprob"] == content[0]["top_logprobs"][0]["logprob"]
    chunks = list(local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 5, "logprobs": True, "top_logprobs": 3, "stream": True}))
    streamed = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs["content"]]
    assert streamed == content
    plain = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 5})
    assert plain.choices[0].logprobs is None


# -- penalties ----------------------------------------------------------------------------------


def _greedy_by_hand(model_dir, messages, steps, repetition=1.0, frequency=0.0, presence=0.0):
    """Greedy decoding written out here, from transformers' own model, processor and chat
    template: vLLM's rules by hand (repetition over prompt and output, positive logits divided
    and negative ones multiplied; then frequency and presence over the output alone)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    text = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    prompt = processor.tokenizer(text)["input_ids"]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    ids, out = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        for token in set(ids):
            value = logits[token].item()
            logits[token] = value / repetition if value > 0 else value * repetition
        for token in set(out):
            logits[token] -= frequency * out.count(token) + presence
        chosen = int(torch.argmax(logits))
        out.append(chosen)
        ids.append(chosen)
        if chosen in eos:
            break
    # a last token ending inside a UTF-8 character is held back (vLLM's detokenizer does too)
    return len(prompt), processor.tokenizer.decode(out, skip_special_tokens=True).rstrip("\ufffd")


@pytest.mark.parametrize("penalties", [{"repetition_penalty": 1.8}, {"frequency_penalty": 1.5, "presence_penalty": 0.5}])
def test_penalties_change_greedy_answers_as_the_rules_say(local_ai, tiny_dirs, penalties):
    """Through ai.run: each penalty is applied (whatever decides to apply it) and gives the
    answer a by-hand greedy loop gives; without it, the answer is the plain greedy one."""
    messages = [{"role": "user", "content": "Numbers 0 1 2 3 4 5 6 7 8 9"}]
    steps = 14
    keys = {"repetition_penalty": "repetition", "frequency_penalty": "frequency", "presence_penalty": "presence"}
    prompt_tokens, expected = _greedy_by_hand(tiny_dirs[INTERNVL_ID], messages, steps, **{keys[k]: v for k, v in penalties.items()})
    _, plain = _greedy_by_hand(tiny_dirs[INTERNVL_ID], messages, steps)
    assert expected != plain  # the penalty matters on this prompt
    payload = {"messages": messages, "max_tokens": steps, "temperature": 0}
    done = local_ai.run(INTERNVL_ID, {**payload, **penalties})
    assert done.usage.prompt_tokens == prompt_tokens
    assert text_of(done).rstrip("\ufffd") == expected
    assert text_of(local_ai.run(INTERNVL_ID, payload)).rstrip("\ufffd") == plain


# -- logit_bias and what is refused ---------------------------------------------------------------


def test_logit_bias_moves_the_answer(local_ai):
    local_ai.transport.load(QWEN_ID)
    loaded = local_ai.transport._engines[QWEN_ID].loaded
    paris = loaded.tokenizer.encode(" Paris")[0]
    plain = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 4, "logprobs": True})
    biased = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 4, "logprobs": True, "logit_bias": {str(paris): 100}})
    assert plain.choices[0].logprobs["content"][0]["token"] != loaded.tokenizer.decode([paris])
    assert all(e["token"] == loaded.tokenizer.decode([paris]) for e in biased.choices[0].logprobs["content"])
    with pytest.raises(azion_ai.ValidationError) as caught:
        local_ai.run(QWEN_ID, {**GREEDY, "logit_bias": {"99999999": 5}})
    assert caught.value.paths == ["logit_bias.99999999"]


@pytest.mark.parametrize("name", ["functions", "best_of", "min_tokens", "stop_token_ids", "guided_json"])
def test_parameters_the_local_backend_cannot_honour_are_refused(local_ai, served, name):
    payload = {**GREEDY, name: [] if name in ("functions", "stop_token_ids") else 2 if name != "guided_json" else {}}
    with pytest.raises(azion_ai.ValidationError) as caught:
        local_ai.run(QWEN_ID, payload)
    assert caught.value.paths == [name]
    _, running = served
    response = httpx.post(f"{running.base_url}/chat/completions", json={"model": QWEN_ID, **payload})
    assert response.status_code == 400 and response.json()["error"]["param"] == name


def test_parameters_that_do_not_change_an_answer_pass(local_ai):
    done = local_ai.run(QWEN_ID, {**GREEDY, "max_tokens": 2, "user": "u-1", "metadata": {"k": "v"}, "store": False})
    assert done.usage.completion_tokens == 2


# -- response_format ---------------------------------------------------------------------------


def test_json_object_and_json_schema_parse_even_from_a_random_model(tight):
    from jsonschema import validate

    loose = text_of(tight.run(INTERNVL_ID, {**GREEDY, "max_tokens": 40}))
    with pytest.raises(ValueError):
        json.loads(loose)  # unconstrained, the tiny model writes noise
    as_object = tight.run(INTERNVL_ID, {**GREEDY, "max_tokens": 40, "response_format": {"type": "json_object"}})
    assert isinstance(json.loads(text_of(as_object)), dict)
    for model_id in (QWEN_ID, INTERNVL_ID):
        for strict in (True, False):
            fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": strict}}
            done = tight.run(model_id, {**GREEDY, "max_tokens": 40, "response_format": fmt})
            validate(json.loads(text_of(done)), CITY)
            assert done.choices[0].finish_reason == "stop"


def test_json_schema_in_a_stream(tight):
    from jsonschema import validate

    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    stream = tight.run(QWEN_ID, {**GREEDY, "max_tokens": 40, "response_format": fmt, "stream": True})
    validate(json.loads(stream.get_final_completion().choices[0].message.content), CITY)


# -- tool_choice ----------------------------------------------------------------------------------


def strict(tool):
    return {**tool, "function": {**tool["function"], "strict": True}}


def test_tool_choice_named_forces_one_valid_call(tight):
    from jsonschema import validate

    choice = {"type": "function", "function": {"name": "get_time"}}
    done = tight.run(QWEN_ID, {**GREEDY, "max_tokens": 200, "tools": [WEATHER, strict(TIME)], "tool_choice": choice})
    message = done.choices[0].message
    assert [c.function.name for c in message.tool_calls] == ["get_time"]
    validate(json.loads(message.tool_calls[0].function.arguments), TIME["function"]["parameters"])  # strict: its schema
    assert message.content == "" and done.choices[0].finish_reason == "stop"  # as vLLM for a named call
    # a tool that is not strict: the call's envelope is forced, its arguments are any JSON (as in
    # vLLM), so the tiny model may still be writing them when max_tokens cuts it
    loose = tight.run(QWEN_ID, {**GREEDY, "max_tokens": 30, "tools": [WEATHER, TIME], "tool_choice": choice}).choices[0].message
    names = [c.function.name for c in loose.tool_calls]
    assert names == ["get_time"] or (not names and loose.content.startswith('<tool_call>{"name": "get_time", "arguments": '))


def test_tool_choice_required_forces_at_least_one_call(tight):
    from jsonschema import validate

    payload = {**GREEDY, "max_tokens": 80, "tools": [strict(WEATHER), strict(TIME)], "tool_choice": "required", "parallel_tool_calls": False}
    done = tight.run(QWEN_ID, payload)
    calls = done.choices[0].message.tool_calls
    assert len(calls) == 1 and done.choices[0].finish_reason == "tool_calls"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    validate(json.loads(calls[0].function.arguments), schemas[calls[0].function.name])


@pytest.mark.vllm
def test_the_tool_grammar_is_vllms(tiny_dirs):
    """Our structural tag for each tool_choice and strict level equals vLLM's own (imported in
    the vLLM environment): the same grammar constrains the same tokens."""
    import vllm_reference
    from conformance import require_vllm

    from azion_ai._local._constraints import hermes_structural_tag

    require_vllm()
    cases = [
        ([WEATHER, strict(TIME)], "required", "auto", True),
        ([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}, "auto", True),
        ([WEATHER, strict(TIME)], "auto", "auto", True),
        ([WEATHER, TIME], "auto", "function", True),
        ([WEATHER, TIME], "required", "parameter", False),
        ([WEATHER, TIME], "auto", "auto", True),
        ([WEATHER], "none", "auto", True),
    ]
    snippet = r"""
import json, sys
from vllm.tool_parsers.structural_tag_registry import get_model_structural_tag, limit_to_single_tool_call
from vllm.tool_parsers.tool_strict_level import ToolStrictLevel
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam, ChatCompletionNamedToolChoiceParam
out = []
for tools, choice, level, parallel in json.loads(sys.argv[1]):
    tools = [ChatCompletionToolsParam(**t) for t in tools]
    if isinstance(choice, dict):
        choice = ChatCompletionNamedToolChoiceParam(**choice)
    tag = get_model_structural_tag("hermes", tools, choice, False, strict_level=ToolStrictLevel.from_name(level))
    if tag is not None and not parallel:
        tag = limit_to_single_tool_call(tag)
    out.append(None if tag is None else json.loads(tag.model_dump_json()))
print("RESULT" + json.dumps(out))
"""
    theirs = json.loads(vllm_reference.run_python(snippet, json.dumps(cases)).split("RESULT", 1)[1])
    ours = [hermes_structural_tag(tools, choice, level, parallel) for tools, choice, level, parallel in cases]
    assert ours == theirs


def test_tool_choice_none_parses_no_calls(local_ai, monkeypatch):
    """A model that writes a hermes call: parsed under "auto", left as content under "none"."""
    from azion_ai._local import _response

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
    original = _response._Choice.text

    def scripted(self, piece, final=False):  # the model's text replaced by a call, token by token
        if not getattr(self, "_scripted", False):
            self._scripted = True
            piece = call
        else:
            piece = ""
        return original(self, piece, final)

    monkeypatch.setattr(_response._Choice, "text", scripted)
    payload = {**GREEDY, "max_tokens": 2, "tools": [WEATHER]}
    auto = local_ai.run(QWEN_ID, payload).choices[0]
    assert [c.function.name for c in auto.message.tool_calls] == ["get_weather"]
    none = local_ai.run(QWEN_ID, {**payload, "tool_choice": "none"}).choices[0]
    assert none.message.tool_calls == [] and none.message.content == call


# -- validation before any I/O, on every backend -----------------------------------------------


BAD = [
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
]


@pytest.mark.parametrize(("extra", "path"), BAD)
def test_openai_parameter_mistakes_are_caught_before_anything_is_sent(extra, path):
    sent = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500))
    with AI(base_url="http://127.0.0.1:9/v1", http_client=httpx.Client(transport=transport), max_retries=0) as remote:
        with pytest.raises(azion_ai.ValidationError) as caught:
            remote.run(QWEN_ID, {"messages": ASK, **extra})
    assert path in caught.value.paths and sent == []


@pytest.mark.parametrize(("extra", "path"), BAD[:3])
def test_the_local_backend_and_serve_refuse_them_too(local_ai, served, extra, path):
    with pytest.raises(azion_ai.ValidationError) as caught:
        local_ai.run(QWEN_ID, {"messages": ASK, **extra})
    assert path in caught.value.paths
    _, running = served
    response = httpx.post(f"{running.base_url}/chat/completions", json={"model": QWEN_ID, "messages": ASK, **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == path


# -- the conversation round trip ----------------------------------------------------------------


def test_a_models_own_reply_can_be_sent_back(served):
    _, running = served
    url = f"{running.base_url}/chat/completions"
    first = httpx.post(url, json={"model": INTERNVL_ID, **GREEDY, "max_tokens": 4}, timeout=120).json()
    reply = first["choices"][0]["message"]
    assert reply["tool_calls"] == []  # as in Azion's InternVL3 example
    again = httpx.post(url, json={"model": INTERNVL_ID, "messages": [*ASK, reply, {"role": "user", "content": "More"}], "max_tokens": 4}, timeout=120)
    assert again.status_code == 200, again.text


# -- the server's edges ---------------------------------------------------------------------------


def test_unknown_routes_and_methods_answer_in_openais_error_shape(served):
    _, running = served
    missing = httpx.get(f"{running.base_url}/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(f"{running.base_url}/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    card = httpx.get(f"{running.base_url}/models/{QWEN_ID}")
    assert card.status_code == 200 and card.json()["id"] == QWEN_ID
    assert httpx.get(f"{running.base_url}/models/gpt-4").status_code == 404


def test_a_client_that_leaves_a_non_stream_request_aborts_it(served, counted_steps):
    _, running = served
    steps = counted_steps
    body = {"model": QWEN_ID, "messages": ASK, "max_tokens": 20000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{running.base_url}/chat/completions", json=body, timeout=1.5)
    after = httpx.post(f"{running.base_url}/chat/completions", json={**body, "max_tokens": 2}, timeout=120)
    assert after.status_code == 200
    left = steps[0]  # the request whose client left
    assert steps.count(left) < 20000  # stopped long before its budget


# -- third-party clients against azion-ai serve -------------------------------------------------


def test_openai_client_parameters_and_parse(served):
    openai = require("openai")
    from pydantic import BaseModel, Field

    _, running = served
    client = openai.OpenAI(base_url=running.base_url, api_key="unused")
    done = client.chat.completions.create(model=QWEN_ID, messages=ASK, max_completion_tokens=3, temperature=0, seed=5, logprobs=True, top_logprobs=2)
    assert done.usage.completion_tokens == 3 and len(done.choices[0].logprobs.content) == 3

    class City(BaseModel):
        city: str = Field(json_schema_extra={"enum": ["Paris", "Rome"]})
        rank: int = Field(ge=1, le=9)

    parsed = client.chat.completions.parse(model=QWEN_ID, messages=ASK, response_format=City, max_completion_tokens=40, temperature=0)
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.city in ("Paris", "Rome")
    forced = client.chat.completions.create(
        model=QWEN_ID, messages=ASK, tools=[strict(WEATHER)], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=80, temperature=0
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    required = client.chat.completions.create(
        model=QWEN_ID, messages=ASK, tools=[strict(WEATHER)], tool_choice="required", parallel_tool_calls=False, max_tokens=80, temperature=0
    )
    assert [c.function.name for c in required.choices[0].message.tool_calls] == ["get_weather"]
    assert required.choices[0].finish_reason == "tool_calls"
    none = client.chat.completions.create(model=QWEN_ID, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0)
    assert not none.choices[0].message.tool_calls


@pytest.mark.parametrize("model_id", [QWEN_ID, INTERNVL_ID])
def test_openai_client_on_both_models(served, model_id):
    openai = require("openai")
    _, running = served
    client = openai.OpenAI(base_url=running.base_url, api_key="unused")
    full = client.chat.completions.create(model=model_id, messages=ASK, max_tokens=16, temperature=0).choices[0].message.content
    stop = full[5:8]
    cut = client.chat.completions.create(model=model_id, messages=ASK, max_tokens=16, temperature=0, stop=[stop]).choices[0]
    assert cut.message.content == full[:5] and cut.finish_reason == "stop"
    sampled = {"model": model_id, "messages": ASK, "max_tokens": 8, "temperature": 1.0, "top_p": 1.0, "extra_body": {"top_k": -1}}
    draws = [client.chat.completions.create(**sampled, seed=s).choices[0].message.content for s in (3, 3, 4)]
    assert draws[0] == draws[1] != draws[2]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    as_json = client.chat.completions.create(model=model_id, messages=ASK, max_tokens=40, temperature=0, response_format=fmt)
    assert json.loads(as_json.choices[0].message.content)["city"] in ("Paris", "Rome", "Lisbon")
    with client.chat.completions.create(model=model_id, messages=ASK, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, stream=True, stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert sum(len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs) == 4
    assert chunks[-1].usage.completion_tokens == 4


def test_langchain_max_tokens_structured_output_and_forced_tools(served):
    langchain_openai = require("langchain_openai")
    from pydantic import BaseModel, Field

    _, running = served
    llm = langchain_openai.ChatOpenAI(base_url=running.base_url, api_key="unused", model=QWEN_ID, max_tokens=3, temperature=0)
    message = llm.invoke("Name the european capitals")
    assert message.response_metadata["token_usage"]["completion_tokens"] == 3  # sent as max_completion_tokens

    class City(BaseModel):
        """A city and its rank."""

        city: str = Field(json_schema_extra={"enum": ["Paris", "Rome"]})
        rank: int = Field(ge=1, le=9)

    structured = langchain_openai.ChatOpenAI(base_url=running.base_url, api_key="unused", model=QWEN_ID, max_tokens=40, temperature=0)
    city = structured.with_structured_output(City).invoke("Pick a city")
    assert isinstance(city, City)
    forcing = langchain_openai.ChatOpenAI(base_url=running.base_url, api_key="unused", model=QWEN_ID, max_tokens=80, temperature=0)
    tools = forcing.bind_tools([strict(WEATHER)], tool_choice="get_weather")
    called = tools.invoke("Weather?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"


def test_litellm_passes_stop_seed_and_limits(served, monkeypatch):
    # LiteLLM fetches a price list from GitHub at import unless told to use its bundled copy:
    # nothing may leave the machine
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = require("litellm")
    _, running = served
    common = {"model": f"hosted_vllm/{QWEN_ID}", "api_base": running.base_url, "api_key": "unused", "messages": ASK, "temperature": 0}
    full = litellm.completion(**common, max_tokens=16).choices[0].message.content
    stop = full[6:9]
    cut = litellm.completion(**common, max_tokens=16, stop=[stop])
    assert cut.choices[0].message.content == full[:6] and cut.choices[0].finish_reason == "stop"
    # really sampled: the tiny Qwen's generation_config has top_k 1 (greedy whatever the seed)
    sampled = {**common, "temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "extra_body": {"top_k": -1}}
    draws = [litellm.completion(**sampled, seed=s).choices[0].message.content for s in (11, 11, 12, 13)]
    assert draws[0] == draws[1]  # the seed reached the server: the same sample again
    assert len(set(draws[1:])) == 3  # and it is a sample: other seeds, other answers
    limited = litellm.completion(**common, max_completion_tokens=2)
    assert limited.usage.completion_tokens == 2
