"""_local/_response.py without a model: a byte tokenizer in, OpenAI chunk / completion dicts out,
compared with the shapes vLLM sends (values written out by hand)."""

from __future__ import annotations

import time

from azion_ai._local._response import ResponseBuilder, decoded_token, logprob_entry, one_choice_each

EOS = 999
SPECIAL = 998  # a special token that is not end-of-sequence


class ByteTokenizer:
    """ids 0-255 are UTF-8 bytes; 999 is the end-of-sequence token (no text), 998 a special token."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(("" if skip_special_tokens else "<x>") if i == SPECIAL else "" if i == EOS else bytes([i]).decode("latin-1") for i in ids).encode("latin-1").decode("utf-8", errors="replace")


def ids(text):
    return list(text.encode())


def builder(n=1, max_tokens=100, **kw):
    return ResponseBuilder(ByteTokenizer(), [EOS], "org/model", n, max_tokens, 5, **kw)


def run(b, text, eos=True):
    chunks = [c for c in (b.step([t] * len(b.choices)) for t in ids(text) + ([EOS] if eos else [])) if c]
    return chunks, b.finish()


def test_a_plain_answer_ending_at_eos():
    b = builder()
    before = int(time.time())
    chunks, last = run(b, "Hi")
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"content": "H"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "i"}, "logprobs": None, "finish_reason": None}],
    ]
    assert last == [{"id": b.id, "object": "chat.completion.chunk", "created": b.created, "model": "org/model",
                     "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop", "stop_reason": None}]}]
    done = b.completion()
    assert done == {
        "id": b.id, "object": "chat.completion", "created": b.created, "model": "org/model",
        "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None, "content": "Hi", "tool_calls": []},
                     "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": None},
        "prompt_logprobs": None,
    }
    assert b.id.startswith("chatcmpl-") and len(b.id) == len("chatcmpl-") + 32
    assert before <= b.created <= int(time.time())
    assert b.all_finished


def test_first_chunk_announces_each_choice():
    b = builder(n=2)
    assert b.first_chunk() == {"id": b.id, "object": "chat.completion.chunk", "created": b.created, "model": "org/model", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
        {"index": 1, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
    ]}
    assert b.chunk([{"x": 1}])["choices"] == [{"x": 1}] and "usage" not in b.chunk([])


def test_max_tokens_sends_the_last_token_with_the_finish_chunk_and_usage_after():
    b = builder(max_tokens=2, include_usage=True)
    chunks, last = run(b, "abc", eos=False)
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": "a"}]
    assert b.choices[0].finish_reason == "length" and b.all_finished
    assert last[0]["choices"] == [{"index": 0, "delta": {"content": "b"}, "logprobs": None, "finish_reason": "length", "stop_reason": None}]
    assert last[1]["choices"] == [] and last[1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert b.completion()["choices"][0]["message"]["content"] == "ab"


def test_unfinished_choice_is_length_or_stop_at_finish():
    cut = builder(max_tokens=3)
    cut.choices[0].tokens = 3
    assert cut.finish()[0]["choices"][0]["finish_reason"] == "length"
    short = builder(max_tokens=3)
    short.step(ids("a"))
    assert short.finish()[0]["choices"][0]["finish_reason"] == "stop"
    assert not short.include_usage and len(short.finish()) == 1


def test_a_stop_string_ends_the_output_before_it_and_is_reported():
    b = builder(stops=("xx", "STOP"))
    chunks, last = run(b, "ab STOP cd")
    sent = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) + last[0]["choices"][0]["delta"].get("content", "")
    assert sent == "ab "
    assert last[0]["choices"][0]["finish_reason"] == "stop" and last[0]["choices"][0]["stop_reason"] == "STOP"
    assert b.completion()["choices"][0]["message"]["content"] == "ab "
    assert b.completion()["choices"][0]["stop_reason"] == "STOP"
    assert b.usage()["completion_tokens"] == len("ab STOP")  # nothing generated after the stop counts


def test_a_stop_string_prefix_is_held_back_then_released():
    b = builder(stops=("STOP",))
    pieces = [b.step([t]) for t in ids("aSTx")]
    # "STOP" is 4 long: the last 3 characters wait until they cannot start it
    assert [p["choices"][0]["delta"]["content"] if p else None for p in pieces] == [None, None, None, "a"]
    assert b.finish()[0]["choices"][0]["delta"] == {"content": "STx"}


def test_first_listed_stop_string_wins_when_two_end_at_one_token():
    b = builder(stops=("bcd", "cd"))
    run(b, "abcd")
    assert (b.completion()["choices"][0]["message"]["content"], b.choices[0].stop_reason) == ("a", "bcd")
    b = builder(stops=("cd", "bcd"))
    run(b, "abcd")
    assert (b.completion()["choices"][0]["message"]["content"], b.choices[0].stop_reason) == ("ab", "cd")


CALL = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'


def test_auto_tool_calls_finish_with_tool_calls_and_null_content():
    b = builder(tool_mode="auto")
    chunks, last = run(b, CALL)
    assert chunks == []
    final = last[0]["choices"][0]
    assert final["finish_reason"] == "tool_calls"
    [call] = final["delta"]["tool_calls"]
    assert call["index"] == 0 and call["type"] == "function" and call["function"] == {"name": "f", "arguments": '{"a": 1}'}
    message = b.completion()["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "f"


def test_named_tool_call_keeps_stop_and_empty_content():
    b = builder(tool_mode="named")
    run(b, CALL)
    done = b.completion()["choices"][0]
    assert done["finish_reason"] == "stop" and done["message"]["content"] == ""


def test_required_tool_call_cut_by_max_tokens_keeps_length():
    text = CALL[:-5]  # the JSON whole, the end tag cut
    b = builder(tool_mode="required", max_tokens=len(text))
    run(b, text, eos=False)
    assert b.choices[0].finish_reason == "length" and len(b.choices[0].tool_calls) == 1
    ended = builder(tool_mode="required")
    run(ended, CALL)
    assert ended.choices[0].finish_reason == "tool_calls"


def test_text_mode_keeps_tags_as_content():
    b = builder()
    run(b, CALL)
    assert b.completion()["choices"][0]["message"]["content"] == CALL


def test_two_choices_each_get_their_tokens_and_finish():
    b = builder(n=2)
    assert b.step([ord("a"), ord("b")])["choices"] == [
        {"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": None},
        {"index": 1, "delta": {"content": "b"}, "logprobs": None, "finish_reason": None},
    ]
    assert b.step([EOS, ord("c")])["choices"] == [{"index": 1, "delta": {"content": "c"}, "logprobs": None, "finish_reason": None}]
    assert not b.all_finished
    assert b.step([ord("z"), EOS]) is None  # choice 0 already finished: its token is ignored
    assert b.all_finished
    assert [c["message"]["content"] for c in b.completion()["choices"]] == ["a", "bc"]
    assert b.usage()["completion_tokens"] == 5


def test_logprobs_in_openai_shape():
    b = builder(logprobs=True)
    chunk = b.step([ord("a")], [(-0.5, [(ord("a"), -0.5), (ord("b"), float("-inf"))])])
    entry = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
        {"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -9999.0, "bytes": [98]}]}
    assert chunk["choices"] == [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [entry]}, "finish_reason": None}]
    b.step([EOS], [(-1.0, [])])
    eos_entry = {"token": "", "logprob": -1.0, "bytes": [], "top_logprobs": []}
    assert b.finish()[0]["choices"][0]["logprobs"] == {"content": [eos_entry]}
    assert b.completion()["choices"][0]["logprobs"] == {"content": [entry, eos_entry]}


def test_logprobs_without_text_still_go_out():
    b = builder(logprobs=True)
    chunk = b.step([0xC3], [(-0.1, [])])  # half of "é": no text yet, a logprob entry
    assert chunk["choices"][0]["delta"] == {} and chunk["choices"][0]["logprobs"]["content"][0]["token"] == ""
    assert b.step([0xA9], [(-0.2, [])])["choices"][0]["delta"] == {"content": "é"}


def test_logprobs_given_but_not_asked_are_left_out():
    b = builder()
    assert b.step([ord("a")], [(-0.5, [])])["choices"][0]["logprobs"] is None
    assert b.choices[0].logprobs == []


def test_decoded_token_gives_a_split_character_to_its_last_byte():
    tok = ByteTokenizer()
    assert decoded_token(tok, ord("a"), []) == "a"
    assert decoded_token(tok, 0xC3, [ord("x")]) == ""
    assert decoded_token(tok, 0xA9, [ord("x"), 0xC3]) == "é"
    smile = "😀".encode()
    assert decoded_token(tok, smile[3], [ord("a"), *smile[:3]]) == "😀"
    assert decoded_token(tok, smile[3], list(smile[1:3])) == ""  # its first byte is out of the context


def test_logprob_entry_bytes_are_utf8():
    entry = logprob_entry(ByteTokenizer(), 0xA9, -2.0, [], [0xC3])
    assert entry == {"token": "é", "logprob": -2.0, "bytes": [0xC3, 0xA9], "top_logprobs": []}


def test_one_choice_each_splits_multi_choice_chunks_in_order():
    one = {"id": "x", "choices": [{"index": 0}]}
    assert one_choice_each(one) == [one]
    assert one_choice_each({"id": "x", "choices": []}) == [{"id": "x", "choices": []}]
    assert one_choice_each({"id": "x", "choices": [{"index": 0}, {"index": 1}]}) == [
        {"id": "x", "choices": [{"index": 0}]}, {"id": "x", "choices": [{"index": 1}]}]


def test_for_request_takes_the_request_settings():
    from types import SimpleNamespace

    checkpoint = SimpleNamespace(tokenizer=ByteTokenizer(), eos_token_ids=[EOS, 7])
    params = SimpleNamespace(n=2, include_usage=True, stop=("END",), logprobs=0)
    request = SimpleNamespace(params=params, model=SimpleNamespace(id="org/m"), tool_mode="auto")
    b = ResponseBuilder.for_request(checkpoint, request, 9, 4)
    assert (b.model_id, b.eos, b.max_tokens, b.prompt_tokens, b.include_usage, b.with_logprobs) == ("org/m", {EOS, 7}, 9, 4, True, True)
    assert b.tokenizer is checkpoint.tokenizer
    assert [(c.index, c.mode, c.stops) for c in b.choices] == [(0, "auto", ("END",)), (1, "auto", ("END",))]
    no_logprobs = SimpleNamespace(params=SimpleNamespace(n=1, include_usage=False, stop=(), logprobs=None), model=SimpleNamespace(id="m"), tool_mode="text")
    assert ResponseBuilder.for_request(checkpoint, no_logprobs, 1, 1).with_logprobs is False


def test_special_tokens_are_text_only_with_tools():
    # vLLM keeps special tokens in the text when a tool parser reads it, drops them otherwise
    for mode, expected in ((None, "ab"), ("text", "ab"), ("none", "ab"), ("auto", "a<x>b"), ("required", "a<x>b")):
        b = builder(**({} if mode is None else {"tool_mode": mode}))
        for t in (ord("a"), SPECIAL, ord("b"), EOS):
            b.step([t])
        b.finish()
        assert b.completion()["choices"][0]["message"]["content"] == expected, mode


def test_named_call_cut_in_its_end_tag_counts_and_its_content_is_kept():
    b = builder(tool_mode="named")
    run(b, "hi " + CALL[:-5], eos=False)
    done = b.completion()["choices"][0]
    assert done["message"]["content"] == "hi " and len(done["message"]["tool_calls"]) == 1


def test_an_empty_answer_has_empty_content():
    b = builder()
    b.step([EOS])
    b.finish()
    assert b.completion()["choices"][0]["message"]["content"] == ""


def test_a_last_token_without_a_logprob_adds_no_entry():
    b = builder(logprobs=True)
    b.step([ord("a")], [(-0.5, [])])
    b.step([EOS])
    assert b.finish()[0]["choices"][0]["logprobs"] == {"content": []}
    cut = builder(logprobs=True, max_tokens=1)
    cut.step([ord("a")])
    assert cut.finish()[0]["choices"][0]["logprobs"] == {"content": []}


class PieceTokenizer:
    """A byte-level tokenizer whose tokens are whole byte strings (the id is the index in
    ``pieces``), so one token can hold plain text and the first byte of a character."""

    def __init__(self, *pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_decoded_token_texts_add_up_to_the_text_when_a_token_holds_text_and_a_lead_byte():
    # "X€": token 0 is "X" plus the first byte of "€", tokens 1 and 2 its other two bytes
    tok = PieceTokenizer(b"X\xe2", b"\x82", b"\xac")
    assert [decoded_token(tok, 0, []), decoded_token(tok, 1, [0]), decoded_token(tok, 2, [0, 1])] == ["", "", "X€"]
    # "X😀" in four tokens: the last one carries "X" and the whole emoji
    tok4 = PieceTokenizer(b"X\xf0", b"\x9f", b"\x98", b"\x80")
    assert decoded_token(tok4, 3, [0, 1, 2]) == "X😀"


def test_decoded_token_reads_only_the_tokens_the_character_needs():
    # "é€" as five byte tokens: the "€" token carries "€" only, "é" was given to its own last byte
    tok = ByteTokenizer()
    assert decoded_token(tok, 0xAC, [0xC3, 0xA9, 0xE2, 0x82]) == "€"


def test_decoded_token_with_a_special_token_inside_a_character():
    # the special token (no text) sits between the bytes of "€": the last byte still carries "€"
    tok = ByteTokenizer()
    assert decoded_token(tok, 0xAC, [0xE2, SPECIAL, 0x82]) == "€"


def test_decoded_token_texts_add_up_when_a_special_token_splits_a_character_after_text():
    # "N€": token 0 is "N" plus the first byte of "€", then a special token (no text), then the
    # other two bytes; the texts must add up to "N€" as without the special token ("", "", "N€")
    tok = PieceTokenizer(b"N\xe2", b"", b"\x82", b"\xac")
    texts = [decoded_token(tok, i, list(range(i))) for i in range(4)]
    assert texts == ["", "", "", "N€"]


def test_decoded_token_reads_at_most_four_tokens_of_context():
    # "😀"'s first byte is five tokens back (two special tokens in between): out of the window
    tok = ByteTokenizer()
    assert decoded_token(tok, 0x80, [0xF0, SPECIAL, 0x9F, 0x98, SPECIAL]) == ""
    assert decoded_token(tok, 0x80, [SPECIAL, 0xF0, 0x9F, 0x98]) == "😀"


def test_logprobs_of_a_split_character_read_the_output_before_it():
    b = builder(logprobs=True)
    b.step([0xC3], [(-0.1, [])])
    chunk = b.step([0xA9], [(-0.2, [])])
    assert chunk["choices"][0]["logprobs"]["content"][0] == {"token": "é", "logprob": -0.2, "bytes": [0xC3, 0xA9], "top_logprobs": []}


def test_logprobs_context_is_the_last_four_output_tokens():
    b = builder(logprobs=True)
    for t in (0xF0, SPECIAL, 0x9F, 0x98, SPECIAL):
        b.step([t], [(-0.1, [])])
    chunk = b.step([0x80], [(-0.3, [])])
    assert chunk["choices"][0]["delta"] == {"content": "😀"}
    assert chunk["choices"][0]["logprobs"]["content"][0]["token"] == ""  # "😀"'s first byte is 5 tokens back


def test_a_token_cut_by_max_tokens_keeps_its_logprob_for_the_finish_chunk():
    b = builder(logprobs=True, max_tokens=1)
    assert b.step([ord("a")], [(-0.5, [])]) is None
    entry = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
    assert b.finish()[0]["choices"][0] == {"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [entry]},
                                           "finish_reason": "length", "stop_reason": None}


def test_finish_without_eos_has_no_last_logprobs():
    b = builder(logprobs=True)
    b.step([ord("a")], [(-0.5, [])])
    assert b.finish()[0]["choices"][0]["logprobs"] == {"content": []}


def test_an_answer_starting_with_a_stop_string_is_empty():
    b = builder(stops=("ab",))
    chunks, _ = run(b, "abc")
    assert chunks == []
    done = b.completion()["choices"][0]
    assert (done["message"]["content"], done["finish_reason"], done["stop_reason"]) == ("", "stop", "ab")


def test_a_piece_with_a_stop_string_twice_ends_at_the_first():
    from azion_ai._local._response import _Choice

    choice = _Choice(0, ByteTokenizer(), "text", ("ab",))
    assert choice.text("xabyabz") == {"content": "x"}
    assert (choice.finish_reason, choice.stop_reason) == ("stop", "ab")


def test_cut_at_max_tokens_the_last_token_and_the_held_back_text_go_out_together():
    # "abcE": "E" might start "END", so "bcE" is held until the finish chunk; "b" went with the last token
    b = builder(stops=("END",), max_tokens=4)
    chunks, last = run(b, "abcE", eos=False)
    assert [c["choices"][0]["delta"] for c in chunks] == [{"content": "a"}]
    assert last[0]["choices"][0]["delta"] == {"content": "bcE"}
    assert b.completion()["choices"][0]["message"]["content"] == "abcE"


def test_held_back_text_reaches_the_tool_parser_at_the_end():
    b = builder(tool_mode="auto", stops=("END",))
    run(b, "abc")
    assert b.completion()["choices"][0]["message"]["content"] == "abc"


def test_required_tool_call_has_empty_content():
    b = builder(tool_mode="required")
    run(b, CALL)
    done = b.completion()["choices"][0]
    assert done["message"]["content"] == "" and len(done["message"]["tool_calls"]) == 1


def test_two_tool_calls_are_numbered_in_order():
    b = builder(tool_mode="auto", max_tokens=500)
    _, last = run(b, CALL + "\n" + CALL.replace('"f"', '"g"'))
    calls = last[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "f"), (1, "g")]


def test_a_tool_call_ended_by_a_stop_string_goes_out_once():
    b = builder(tool_mode="auto", stops=("END",), max_tokens=500)
    _, last = run(b, CALL + "END")
    final = last[0]["choices"][0]
    assert [c["function"]["name"] for c in final["delta"]["tool_calls"]] == ["f"]
    assert (final["finish_reason"], final["stop_reason"]) == ("tool_calls", "END")
    assert len(b.completion()["choices"][0]["message"]["tool_calls"]) == 1


class SurrogateTokenizer:
    """A tokenizer written in Python that keeps undecodable bytes as lone surrogates
    (``errors="surrogateescape"``), as some slow tokenizers do."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="surrogateescape")


def test_logprob_bytes_of_a_lone_surrogate_are_a_question_mark():
    # str.encode's "replace" handler writes "?" (0x3F) for what UTF-8 cannot encode
    entry = logprob_entry(SurrogateTokenizer(), 0xFF, -1.0, [(ord("a"), -2.0)])
    assert entry == {"token": "\udcff", "logprob": -1.0, "bytes": [0x3F],
                     "top_logprobs": [{"token": "a", "logprob": -2.0, "bytes": [97]}]}
