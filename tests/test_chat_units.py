"""_local/_chat.py without a model: templates, tools, history, incremental decoding, and hermes
tool-call parsing by vLLM's rules (expected values written out by hand)."""

from __future__ import annotations

import json

import pytest

from azion_ai._local._chat import (
    ChatTemplates,
    IncrementalDecoder,
    ToolCallParser,
    build_conversation,
    parse_tool_calls,
    render_prompt,
    template_tools,
)


def test_missing_template_error_says_to_pass_chat_template():
    with pytest.raises(ValueError, match=r"no chat template; pass chat_template="):
        ChatTemplates(None, None).select(tools=True)


def test_tools_keep_description_and_strict_when_given():
    tools = [
        {"type": "function", "function": {"name": "f", "description": "does f", "parameters": {}, "strict": True}},
        {"type": "function", "function": {"name": "g", "strict": False}},
    ]
    assert template_tools(tools) == [
        {"type": "function", "function": {"name": "f", "description": "does f", "parameters": {}, "strict": True}},
        {"type": "function", "function": {"name": "g", "description": None, "parameters": None, "strict": False}},
    ]


def test_history_calls_with_empty_or_missing_arguments_become_empty_objects():
    messages = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"id": "2", "type": "function", "function": {"name": "g"}},
        {"id": "3", "type": "function", "function": {"name": "h", "arguments": {"already": 1}}},
    ]}]
    conv, _ = build_conversation(messages)
    assert [c["function"] for c in conv[0]["tool_calls"]] == [
        {"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}, {"name": "h", "arguments": {"already": 1}},
    ]


def test_string_contents_and_string_parts_become_text_parts():
    messages = [
        {"role": "system", "content": "be brief", "name": "sys"},
        {"role": "user", "content": ["one", {"type": "image_url", "image_url": {"url": "u"}}]},
    ]
    conv, images = build_conversation(messages)  # "openai" is the default format
    assert conv[0] == {"role": "system", "content": [{"type": "text", "text": "be brief"}], "name": "sys"}
    assert conv[1] == {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "image"}]}
    assert images == [("u", "messages[1].content[1].image_url.url")]
    flat, _ = build_conversation(messages, "string")  # no placeholder given: images add an empty line
    assert flat[0]["content"] == "be brief"
    assert flat[1]["content"] == "\none"


def test_string_format_with_only_images_joins_the_placeholders():
    image = {"type": "image_url", "image_url": {"url": "u"}}
    conv, _ = build_conversation([{"role": "user", "content": [image, image]}], "string", "<I>")
    assert conv[0]["content"] == "<I>\n<I>"


def test_tool_call_id_only_on_tool_messages():
    conv, _ = build_conversation([{"role": "user", "content": "x", "tool_call_id": "9"}])
    assert "tool_call_id" not in conv[0]


class RecordingTokenizer:
    def __init__(self):
        self.calls = []

    def apply_chat_template(self, conversation, **kwargs):
        self.calls.append((conversation, kwargs))
        return "PROMPT"


def test_render_prompt_hands_the_template_what_vllm_hands_it():
    tok = RecordingTokenizer()
    image = {"type": "image_url", "image_url": {"url": "u"}}
    tools = [{"type": "function", "function": {"name": "f"}}]
    templates = ChatTemplates(processor="{% for p in message.content %}{% endfor %}", tokenizer="{{ messages }}")
    text, images = render_prompt(tok, templates, [{"role": "user", "content": ["hi", image]}], tools, "<I>")
    assert text == "PROMPT" and images == [("u", "messages[0].content[1].image_url.url")]
    conversation, kwargs = tok.calls[0]
    # with tools: the tokenizer's template, a "string" one, so images go in front as placeholders
    assert conversation == [{"role": "user", "content": "<I>\nhi"}]
    assert kwargs == {
        "tools": [{"type": "function", "function": {"name": "f", "description": None, "parameters": None}}],
        "chat_template": "{{ messages }}", "add_generation_prompt": True, "tokenize": False,
    }
    render_prompt(tok, templates, [{"role": "user", "content": ["hi", image]}], None, "<I>")
    conversation, kwargs = tok.calls[1]
    assert conversation == [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]
    assert kwargs["chat_template"] == templates.processor and kwargs["tools"] is None


class SpecialTokenizer:
    """ids 65.. are letters; id 0 is a special token "<s>", dropped when skip_special_tokens."""

    clean_up_tokenization_spaces = True

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == 0 and skip_special_tokens else "<s>" if i == 0 else chr(i) for i in ids)


def _stream(decoder, ids):
    return "".join(decoder.add(i) for i in ids) + decoder.flush()


def test_decoder_skips_special_tokens_only_when_asked():
    ids = [0, 65, 66, 0, 67]
    assert _stream(IncrementalDecoder(SpecialTokenizer()), ids) == "ABC"
    assert _stream(IncrementalDecoder(SpecialTokenizer(), skip_special_tokens=False), ids) == "<s>AB<s>C"


def test_decoder_flush_sends_the_held_text_and_decoding_goes_on_after_it():
    decoder = IncrementalDecoder(SpecialTokenizer())
    decoder.ids.extend([65, 0, 66])  # held back, never sent
    assert decoder.flush() == "AB"
    assert decoder.add(67) == "C"
    assert decoder.flush() == ""


class ByteTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_decoder_flush_drops_a_cut_character():
    decoder = IncrementalDecoder(ByteTokenizer())
    assert decoder.add(ord("a")) == "a"
    assert decoder.add(0xC3) == ""  # first byte of "é"
    assert decoder.flush() == ""  # cut inside the character: left out, as vLLM does


class Backend:
    def __init__(self):
        self.used = 0

    def decode(self, ids, skip_special_tokens=True):
        self.used += 1
        return "".join(chr(i) for i in ids)


class WrappedTokenizer(ByteTokenizer):
    def __init__(self, clean_up):
        self._tokenizer = Backend()
        if clean_up is not None:
            self.clean_up_tokenization_spaces = clean_up


@pytest.mark.parametrize(("clean_up", "backend_used"), [(False, True), (True, False), (None, False)])
def test_decoder_uses_the_rust_decode_only_when_no_space_clean_up(clean_up, backend_used):
    tok = WrappedTokenizer(clean_up)
    assert _stream(IncrementalDecoder(tok), [72, 105]) == "Hi"
    assert (tok._tokenizer.used > 0) is backend_used


def _args(text, forced=False):
    content, calls = parse_tool_calls(text, forced)
    return content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def test_parsed_calls_have_openai_fields_and_the_content_before_the_first_call():
    content, calls = parse_tool_calls('Hi <tool_call>{"name": "a", "arguments": {}}</tool_call> mid <tool_call>{"name": "b", "arguments": {}}</tool_call>')
    assert content == "Hi "
    assert [c["type"] for c in calls] == ["function", "function"]
    assert all(c["id"].startswith("chatcmpl-tool-") and len(c["id"]) == len("chatcmpl-tool-") + 32 for c in calls)
    assert set(calls[0]) == {"id", "type", "function"}
    assert parse_tool_calls("no calls") == ("no calls", [])


def test_numbers_are_laid_out_as_vllm_redumps_them_unless_that_changes_them():
    big = "9" * 5000  # past Python's int-parsing digit limit: kept as written
    text = ('<tool_call>{"name": "f", "arguments": {"a": 1.50, "b": 1e999, "c": 12345678901234567890.5, '
            f'"d": 10, "e": 1E2, "f": 2e0, "g": [1, -3], "h": {big}}}}}</tool_call>')
    _, [(name, arguments)] = _args(text)
    assert name == "f"
    assert arguments == ('{"a": 1.5, "b": 1e999, "c": 12345678901234567890.5, "d": 10, "e": 100.0, "f": 2.0, '
                         f'"g": [1, -3], "h": {big}}}')


def test_arguments_keep_non_ascii_text():
    _, [(_, arguments)] = _args('<tool_call>{"name": "f", "arguments": {"città": "São", "n": null}}</tool_call>')
    assert arguments == '{"città": "São", "n": null}'
    assert json.loads(arguments) == {"città": "São", "n": None}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_call_with_a_non_json_constant_is_content(constant):
    text = f'<tool_call>{{"name": "f", "arguments": {{"x": {constant}}}}}</tool_call>'
    assert parse_tool_calls(text) == (text, [])


def test_non_json_constant_error_names_the_constant():
    from azion_ai._local._chat import _json_decoder

    with pytest.raises(ValueError, match="NaN is not JSON"):
        _json_decoder(False).decode("NaN")


@pytest.mark.parametrize("name", ["5", '["a"]', "null"])
def test_a_call_whose_name_is_not_a_string_is_content(name):
    text = f'<tool_call>{{"name": {name}, "arguments": {{}}}}</tool_call>'
    assert parse_tool_calls(text) == (text, [])
    assert parse_tool_calls(text, forced=True) == (text, [])


def test_raw_control_characters_are_read_only_in_forced_calls():
    text = '<tool_call>{"name": "f", "arguments": {"s": "a\tb"}}</tool_call>'
    assert parse_tool_calls(text) == (text, [])
    assert _args(text, forced=True) == (None, [("f", '{"s": "a\\tb"}')])


CUT = '<tool_call>\n  {"name": "f", "arguments": {"s": "a\tb"}}\n</tool_'


def test_forced_call_cut_in_its_end_tag_counts():
    assert _args(CUT, forced=True) == (None, [("f", '{"s": "a\\tb"}')])
    unforced = CUT.replace("\t", " ")
    assert parse_tool_calls(unforced) == (unforced, [])  # not forced: an unclosed call must be whole JSON alone


def test_forced_call_with_text_after_its_json_is_not_a_cut_call():
    text = '<tool_call>\n{"name": "f", "arguments": {}} junk'
    assert parse_tool_calls(text, forced=True) == (text, [])


def test_forced_last_call_cut_in_its_json_is_dropped_and_the_earlier_kept():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "argu'
    assert _args(text, forced=True) == (None, [("a", "{}")])
    assert parse_tool_calls(text) == (text, [])
    whole = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}\n</tool'
    assert _args(whole, forced=True) == (None, [("a", "{}"), ("b", "{}")])
    only = '<tool_call>{"name": "b", "argu'
    assert parse_tool_calls(only, forced=True) == (only, [])


def test_forced_stream_parser_keeps_a_cut_call():
    parser = ToolCallParser(forced=True)
    assert "".join(parser.feed(piece) for piece in (CUT[:5], CUT[5:20], CUT[20:])) == ""
    out = parser.finish()
    assert out.content == "" and [c["function"]["name"] for c in out.tool_calls] == ["f"]
    plain = ToolCallParser()
    plain.feed(CUT)
    assert plain.finish().content == CUT


def test_stream_parser_holds_back_only_a_possible_tag_start():
    parser = ToolCallParser()
    assert parser.feed("a<tool_cal") == "a"  # the longest proper prefix of the tag is held
    assert parser.feed("x") == "<tool_calx"
    assert parser.feed("<") == ""
    assert parser.finish().content == "<"


def test_missing_template_error_message_is_exact():
    with pytest.raises(ValueError) as caught:
        ChatTemplates(None, None).select(tools=True)
    assert str(caught.value) == "the checkpoint has no chat template; pass chat_template="


def test_decoder_pieces_after_a_skipped_special_token():
    # "<s>" is dropped, so "A" and then "B" come out one token each
    decoder = IncrementalDecoder(SpecialTokenizer())
    assert [decoder.add(i) for i in (0, 65, 66)] == ["", "A", "B"]
    assert decoder.flush() == ""


def test_decoder_flush_after_a_skipped_special_token_sends_only_the_held_text():
    decoder = IncrementalDecoder(SpecialTokenizer())
    assert [decoder.add(i) for i in (0, 65)] == ["", "A"]
    decoder.ids.append(66)  # held back, never sent
    assert decoder.flush() == "B"


class LeadingSpaceTokenizer:
    """SentencePiece-like: id 1 is " x", id 2 is " y", id 0 a special token with no text; a
    decoded text loses its leading space (as Llama tokenizers decode a word-initial piece)."""

    clean_up_tokenization_spaces = True

    def decode(self, ids, skip_special_tokens=True):
        text = "".join({0: "" if skip_special_tokens else "<s>", 1: " x", 2: " y"}[i] for i in ids)
        return text[1:] if text.startswith(" ") else text


def test_decoder_keeps_the_space_between_words_across_a_special_token():
    decoder = IncrementalDecoder(LeadingSpaceTokenizer())
    assert "".join(decoder.add(i) for i in (1, 0, 2)) + decoder.flush() == "x y"


def test_tool_call_parser_second_finish_sends_no_more_content():
    parser = ToolCallParser()
    assert parser.feed("hello") == "hello"
    assert parser.finish().content == ""
    assert parser.finish().content == ""


def test_tool_call_parser_second_finish_sends_the_calls_only_once():
    parser = ToolCallParser()
    assert parser.feed('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>') == ""
    first = parser.finish()
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in first.tool_calls] == [("f", '{"a": 1}')]
    again = parser.finish()
    assert (again.content, again.tool_calls) == ("", [])
