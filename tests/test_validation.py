from __future__ import annotations

import copy

import pytest
from seeds import INTERNVL, QWEN, example_payloads, plain_validator

import azion_ai
from azion_ai import ModelInfo, UnknownModelError, ValidationError

USER = {"role": "user", "content": "Hi"}


def issues(model_id, payload):
    with pytest.raises(ValidationError) as info:
        azion_ai.validate(model_id, payload)
    return {i.path: i.message for i in info.value.issues}


@pytest.mark.parametrize("model_id", [QWEN, INTERNVL])
def test_every_seed_example_validates(model_id):
    payloads = example_payloads(model_id)
    assert payloads
    for payload in payloads:
        azion_ai.validate(model_id, payload)


def test_qwen_tool_example_is_rejected_for_internvl_with_a_clear_message():
    tool_payload = next(p for p in example_payloads(QWEN) if "tools" in p)
    found = issues(INTERNVL, tool_payload)
    assert "does not support tool calling" in found["tools"]


def test_internvl_dangling_ref_never_surfaces_as_internal_error():
    payload = {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}
    with pytest.raises(ValidationError) as info:
        azion_ai.validate(INTERNVL, payload)
    assert info.value.paths == ["tools"]


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}

INVALID = [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": 5}}]}]}, "messages[0].content[1].image_url.url", "expected string"),
    ({"messages": [USER, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}, "messages[1].content[1].image_url.url", "http(s)"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "not a url"}}]}]}, "messages[0].content[0].image_url.url", "http(s)"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:nonsense"}}]}]}, "messages[0].content[0].image_url.url", "data:"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].image_url", "missing"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}, "messages[0].content[0].type", "not one of"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", '"wizard" is not one of'),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "missing"),
    ({}, "messages", "missing"),
    ({"messages": "hi"}, "messages", "expected array"),
    ({"messages": []}, "messages", "at least one"),
    ({"messages": [5]}, "messages[0]", "expected object"),
    ({"messages": [{"role": "user", "content": {"a": 1}}]}, "messages[0].content", "expected string or array"),
    ({"messages": [{"role": "system", "content": [IMAGE]}]}, "messages[0].content[0].type", "not one of"),
    ({"messages": [USER], "temperature": 2.5}, "temperature", "<= 2"),
    ({"messages": [USER], "top_p": -0.1}, "top_p", ">= 0"),
    ({"messages": [USER], "n": 0}, "n", ">= 1"),
    ({"messages": [USER], "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"messages": [USER], "max_tokens": "10"}, "max_tokens", "expected integer"),
    ({"messages": [USER], "presence_penalty": 3}, "presence_penalty", "<= 2"),
    ({"messages": [USER], "frequency_penalty": -3}, "frequency_penalty", ">= -2"),
    ({"messages": [USER], "stream": "yes"}, "stream", "expected boolean"),
]


@pytest.mark.parametrize("model_id", [QWEN, INTERNVL])
@pytest.mark.parametrize(("payload", "path", "fragment"), INVALID)
def test_invalid_payloads_name_their_path(model_id, payload, path, fragment):
    found = issues(model_id, payload)
    assert path in found, found
    assert fragment in found[path]


def test_max_tokens_beyond_context_is_caught_per_model():
    assert "32768" in issues(QWEN, {"messages": [USER], "max_tokens": 40000})["max_tokens"]
    assert "16384" in issues(INTERNVL, {"messages": [USER], "max_tokens": 20000})["max_tokens"]
    azion_ai.validate(INTERNVL, {"messages": [USER], "max_tokens": 16384})


def test_tool_message_must_answer_an_earlier_call():
    call = {"id": "call-1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    good = {
        "messages": [
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "call-1"},
        ]
    }
    azion_ai.validate(QWEN, good)
    bad = copy.deepcopy(good)
    bad["messages"][2]["tool_call_id"] = "call-2"
    assert "matches no tool call" in issues(QWEN, bad)["messages[2].tool_call_id"]
    early = {"messages": [USER, {"role": "tool", "content": "42", "tool_call_id": "call-1"}, good["messages"][1]]}
    assert "messages[1].tool_call_id" in issues(QWEN, early)


def test_qwen_tool_definition_is_checked():
    found = issues(QWEN, {"messages": [USER], "tools": [{"type": "function", "function": {"description": "x"}}]})
    assert found == {"tools[0].function.name": "required property is missing"}


def test_data_uris_and_http_urls_are_accepted():
    for url in ("data:image/png;base64,iVBORw0KGgo=", "http://example.com/x.jpg", "HTTPS://EXAMPLE.COM/x"):
        payload = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
        azion_ai.validate(QWEN, payload)


def test_all_violations_are_reported_together():
    payload = {"messages": [{"role": "wizard", "content": "x"}], "temperature": 9, "n": 0}
    with pytest.raises(ValidationError) as info:
        azion_ai.validate(QWEN, payload)
    assert set(info.value.paths) == {"messages[0].role", "temperature", "n"}
    text = str(info.value)
    assert "3 problems" in text and "temperature: 9 must be <= 2" in text


def test_huge_values_are_shortened_in_messages():
    found = issues(QWEN, {"messages": [{"role": "x" * 100000, "content": "y"}]})
    assert len(found["messages[0].role"]) < 200


def test_non_dict_payload():
    assert issues(QWEN, ["messages"]) == {"": "payload must be a JSON object (dict), got array"}


def test_unknown_model_lists_known_ids():
    with pytest.raises(UnknownModelError) as info:
        azion_ai.validate("gpt-5", {"messages": [USER]})
    assert QWEN in str(info.value) and INTERNVL in str(info.value)


def test_validators_are_compiled_once_per_model():
    from azion_ai import _validation

    azion_ai.validate(QWEN, {"messages": [USER]})
    with pytest.raises(ValidationError):
        azion_ai.validate(QWEN, {"messages": [{"role": "x"}]})
    fast, full = _validation._fast_checks[QWEN][1], _validation._validators[QWEN][1]
    azion_ai.validate(QWEN, {"messages": [USER]})
    with pytest.raises(ValidationError):
        azion_ai.validate(QWEN, {"messages": [{"role": "x"}]})
    assert _validation._fast_checks[QWEN][1] is fast and _validation._validators[QWEN][1] is full


def test_validation_never_changes_the_payload():
    import copy

    payload = {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}
    before = copy.deepcopy(payload)
    azion_ai.validate(QWEN, payload)
    assert payload == before  # no schema defaults (top_p, n, stream, strict...) written in


@pytest.mark.parametrize("model_id", [QWEN, INTERNVL])
def test_fast_path_and_full_validator_agree(model_id):
    from azion_ai import _validation

    model = azion_ai.get_model(model_id)
    fast = _validation._fast_check_for(model)
    full = plain_validator(model_id)  # plain jsonschema on the published schema, no azion_ai code
    samples = [p for p, _, _ in INVALID] + example_payloads(model_id) + [{"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}]
    for payload in samples:
        assert fast(payload) == full.is_valid(payload), payload


def test_registry_holds_the_seed_capabilities():
    qwen, intern = azion_ai.get_model(QWEN), azion_ai.get_model(INTERNVL)
    assert (qwen.context_length, qwen.tool_calling, qwen.lora) == (32768, True, True)
    assert (intern.context_length, intern.tool_calling, intern.lora) == (16384, False, False)
    assert intern.hf_repo == "OpenGVLab/InternVL3-1B-Instruct"
    assert qwen.hf_repo == "Qwen/Qwen2.5-VL-3B-Instruct-AWQ"
    assert qwen.input_modalities == intern.input_modalities == ("text", "image")
    ids = [m.id for m in azion_ai.list_models()]
    assert ids == sorted(ids) and {INTERNVL, QWEN} <= set(ids)  # the seeds, among Azion's catalogue


def test_users_can_register_a_model():
    schema = {
        "type": "object",
        "required": ["messages"],
        "properties": {"messages": {"type": "array"}, "seed": {"type": "integer"}},
    }
    info = ModelInfo(id="acme-tiny", schema=schema, context_length=2048)
    try:
        azion_ai.register_model(info)
        azion_ai.validate("acme-tiny", {"messages": [USER], "seed": 3})
        assert "seed" in issues("acme-tiny", {"messages": [USER], "seed": "x"})
        with pytest.raises(ValueError, match="already registered"):
            azion_ai.register_model(info)
        azion_ai.register_model(ModelInfo(id="acme-tiny", schema=schema, context_length=4096), replace=True)
        assert azion_ai.get_model("acme-tiny").context_length == 4096
    finally:
        from azion_ai import _models

        _models._registry.pop("acme-tiny", None)


def test_schemas_are_the_seed_schemas_verbatim():
    import json

    from seeds import SEED_FILES, SEEDS

    for model_id, seed in SEED_FILES.items():
        text = (SEEDS / seed).read_text()
        marker = "JSON schema\n" if model_id == QWEN else "JSON Schema\n"
        assert dict(azion_ai.get_model(model_id).schema) == json.loads(text[text.index(marker) + len(marker) :])
