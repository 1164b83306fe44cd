from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seeds import example_responses, examples

from azion_ai import ChatCompletion, ChatCompletionChunk, ChunkAccumulator, StreamError
from azion_ai._streaming import DONE, ServerSentEvent, SSEDecoder, parse_sse_event


def test_seed_responses_parse_unchanged():
    for raw in example_responses():
        completion = ChatCompletion.model_validate(raw)
        assert completion.model_dump(mode="json") == raw


def test_seed_tool_call_response_fields():
    raw = next(r for r in example_responses() if r["choices"][0]["finish_reason"] == "tool_calls")
    completion = ChatCompletion.model_validate(raw)
    call = completion.choices[0].message.tool_calls[0]
    assert call.id.startswith("chatcmpl-tool-")
    assert json.loads(call.function.arguments) == {"location": "London"}
    assert completion.usage.total_tokens == 313


def test_extra_fields_are_kept():
    raw = dict(example_responses()[0], system_fingerprint="fp_1", kv_transfer_params={"a": 1})
    completion = ChatCompletion.model_validate(raw)
    assert completion.model_extra["system_fingerprint"] == "fp_1"


def _events(decoder_input: list[bytes]) -> list:
    decoder = SSEDecoder()
    out = []
    for piece in decoder_input:
        out.extend(decoder.feed(piece))
    out.extend(decoder.flush())
    return out


STREAM = (
    b": keep-alive comment\n"
    b"data: {\"a\": 1}\n\n"
    b"event: message\r\n"
    b"data: {\"b\":\r\n"
    b"data: 2}\r\n\r\n"
    b"id: 7\r"
    b"data: {\"c\": \"\xc3\xa9\xf0\x9f\x98\x80\"}\r\r"
    b"data: [DONE]\n\n"
)


def _summary(events):
    return [(e.event, e.data, e.id) for e in events]


def test_sse_line_endings_comments_and_multiline_data():
    got = _summary(_events([STREAM]))
    assert got == [
        (None, '{"a": 1}', None),
        ("message", '{"b":\n2}', None),
        (None, '{"c": "é😀"}', "7"),
        (None, "[DONE]", "7"),
    ]


def test_sse_is_the_same_however_the_bytes_are_split():
    whole = _summary(_events([STREAM]))
    for cut in range(1, len(STREAM)):
        assert _summary(_events([STREAM[:cut], STREAM[cut:]])) == whole, cut
    assert _summary(_events([bytes([b]) for b in STREAM])) == whole


def test_sse_flush_yields_unterminated_last_event():
    assert _summary(_events([b"data: [DONE]"])) == [(None, "[DONE]", None)]


def test_sse_long_line_in_small_pieces_is_scanned_once():
    decoder = SSEDecoder()
    payload = b"data: " + b"x" * 200_000
    for i in range(0, len(payload), 100):
        assert decoder.feed(payload[i : i + 100]) == []
        assert decoder._scanned == len(decoder._buf)  # nothing is rescanned on the next read
    events = decoder.feed(b"\n\n")
    assert len(events) == 1 and len(events[0].data) == 200_000


@pytest.mark.parametrize(
    "data",
    ['{"object": "error", "message": "boom", "code": 400}', '{"error": {"message": "boom"}}'],
)
def test_in_band_errors_raise(data):
    from azion_ai._streaming import ServerSentEvent

    with pytest.raises(StreamError, match="boom"):
        parse_sse_event(ServerSentEvent(data))


def test_error_event_type_raises_and_garbage_raises():
    from azion_ai._streaming import ServerSentEvent

    with pytest.raises(StreamError):
        parse_sse_event(ServerSentEvent('{"message": "bad"}', event="error"))
    with pytest.raises(StreamError, match="malformed"):
        parse_sse_event(ServerSentEvent("{not json"))
    assert parse_sse_event(ServerSentEvent("[DONE]")) is DONE


def chunk(delta, index=0, finish=None, usage=None):
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return ChatCompletionChunk.model_validate(body)


def test_accumulator_merges_content_and_tool_call_deltas_by_index():
    acc = ChunkAccumulator()
    parts = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        chunk({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "chatcmpl-tool-b", "type": "function", "function": {"name": "get_time"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location": '}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"London"}'}}]}),
        chunk({"content": "x"}, index=1),
        chunk({}, finish="tool_calls"),
        chunk({}, index=1, finish="length", usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}),
    ]
    for p in parts:
        acc.add(p)
    done = acc.completion()
    first, second = done.choices
    assert first.message.content == "Let me check."
    assert [(c.id, c.function.name, c.function.arguments) for c in first.message.tool_calls] == [
        ("chatcmpl-tool-a", "get_weather", '{"location": "London"}'),
        ("chatcmpl-tool-b", "get_time", "{}"),
    ]
    assert first.finish_reason == "tool_calls" and second.finish_reason == "length"
    assert second.message.content == "x"
    assert done.usage.total_tokens == 8 and done.id == "chatcmpl-1"


def test_accumulator_orders_tool_calls_and_choices_by_index_not_arrival():
    """A later call (index 1) and a later choice (index 1) can arrive first: the completion is
    ordered by index, as the same request answered whole would be."""
    acc = ChunkAccumulator()
    for p in [
        chunk({"tool_calls": [{"index": 1, "id": "call-b", "type": "function", "function": {"name": "second", "arguments": "{}"}}]}, index=1),
        chunk({"tool_calls": [{"index": 1, "id": "call-b", "type": "function", "function": {"name": "second", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call-a", "type": "function", "function": {"name": "first", "arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, finish="tool_calls"),
        chunk({"content": "late"}, index=1, finish="stop"),
    ]:
        acc.add(p)
    done = acc.completion()
    assert [c.index for c in done.choices] == [0, 1]
    assert [(c.id, c.function.name, c.function.arguments) for c in done.choices[0].message.tool_calls] == [
        ("call-a", "first", '{"a": 1}'),
        ("call-b", "second", "{}"),
    ]
    assert done.choices[1].message.content == "late" and done.choices[1].message.tool_calls[0].id == "call-b"


def test_accumulator_without_chunks_raises():
    with pytest.raises(StreamError):
        ChunkAccumulator().completion()


def _reference_events(stream: bytes):
    """The WHATWG rules written the slow, obvious way: split all lines first, then read them."""
    import re

    events, data, name = [], [], None
    lines = re.split(rb"\r\n|\r|\n", stream)
    lines = lines[:-1] if lines and lines[-1] == b"" else lines
    for raw in [*lines, b""]:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            if data or name is not None:
                events.append((name, "\n".join(data)))
            data, name = [], None
            continue
        field_name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field_name == "data":
            data.append(value)
        elif field_name == "event":
            name = value
    return events


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["data", "event", ": note", "data"]), st.text(alphabet="ab{}\"é ", max_size=8), st.sampled_from(["\n", "\r", "\r\n"]), st.booleans()), max_size=12),
    st.lists(st.integers(1, 40), max_size=8),
)
def test_sse_matches_a_reference_parser_for_any_line_ends_and_splits(fields, cuts):
    text = "".join(f"{name}: {value}{end}" + (end if blank else "") for name, value, end, blank in fields)
    stream = text.encode()
    pieces, rest = [], stream
    for cut in cuts:
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    got = [(e.event, e.data) for e in _events(pieces)]
    assert got == _reference_events(stream)


def test_a_chunk_stream_releases_once_however_it_ends():
    """Read to the end, closed early, never read, or failed mid-way: one release, and a second
    close does nothing (a response is released by its stream alone)."""
    from azion_ai._transport import ChunkStream

    def gen(fail=False):
        yield {"a": 1}
        if fail:
            raise RuntimeError("broken")
        yield {"a": 2}

    for how in ("end", "early", "never", "fail"):
        released = []
        stream = ChunkStream(gen(fail=how == "fail"), lambda released=released: released.append(1))
        if how == "end":
            assert list(stream) == [{"a": 1}, {"a": 2}]
        elif how == "early":
            next(stream)
        elif how == "fail":
            with pytest.raises(RuntimeError):
                list(stream)
        stream.close()
        stream.close()
        assert released == [1], how


async def test_an_async_chunk_stream_releases_once_however_it_ends():
    from azion_ai._transport import AsyncChunkStream

    async def gen():
        yield {"a": 1}
        yield {"a": 2}

    for how in ("end", "early", "never"):
        released = []

        async def release(released=released):
            released.append(1)

        stream = AsyncChunkStream(gen(), release)
        if how == "end":
            assert [c async for c in stream] == [{"a": 1}, {"a": 2}]
        elif how == "early":
            await stream.__anext__()
        await stream.aclose()
        await stream.aclose()
        assert released == [1], how


# -- the fields and shapes the property tests above do not reach (mutation testing found them) --


def test_sse_id_and_retry_fields_follow_the_whatwg_rules():
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 7\nretry: 1500\ndata: a\n\nretry: soon\ndata: b\n\nid: x\x00y\nretry: 20\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id, e.retry) for e in events] == [("a", "7", 1500), ("b", "7", 1500), ("c", "7", 20), ("d", "", 20)]
    # a field without a colon is its name with an empty value; an unknown field is ignored
    assert [(e.data, e.event) for e in SSEDecoder().feed(b"data\nbogus: 1\nevent:x\n\n")] == [("", "x")]
    # an event line alone dispatches an event with empty data
    assert [(e.data, e.event) for e in SSEDecoder().feed(b"event: ping\n\n")] == [("", "ping")]
    assert SSEDecoder().feed(b"\n\n:comment\n\n") == []


def test_sse_flush_strips_a_trailing_cr_and_resets():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\r") == []  # a CR at the end: maybe half of a CRLF
    assert [e.data for e in decoder.flush()] == ["one"]
    assert decoder.flush() == []
    assert [e.data for e in decoder.feed(b"data: two\n\n")] == ["two"]
    decoder.feed(b"data: three\r\ndata: more")
    assert [e.data for e in decoder.flush()] == ["three\nmore"]


def test_sse_crlf_split_between_reads_is_one_line_end():
    decoder = SSEDecoder()
    got = decoder.feed(b"data: a\r") + decoder.feed(b"\n\r") + decoder.feed(b"\ndata: b\r\r")
    assert [e.data for e in got] == ["a"]  # the last CR may still be half of a CRLF
    assert [e.data for e in decoder.feed(b"x")] == ["b"]  # it was not: a blank line, then "x"
    assert [e.data for e in decoder.flush()] == []  # "x" is a field name with no value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "bad model"}}, "bad model"),
        ({"error": {"detail": "not here"}}, "not here"),
        ({"error": {"msg": "short"}}, "short"),
        ({"message": "top level"}, "top level"),
        ({"detail": [{"loc": ["body"], "msg": "x"}]}, '[{"loc": ["body"], "msg": "x"}]'),
        ({"error": "plain words"}, "plain words"),
        ("  a text body  ", "a text body"),
        ("x" * 400, "x" * 300),
        ("   ", "no error message"),
        ({"error": {"code": 3}}, "no error message"),
        (None, "no error message"),
        ({"error": {"message": 5, "detail": "the detail"}}, "the detail"),
    ],
)
def test_error_messages_in_the_shapes_servers_use(body, message):
    from azion_ai._streaming import error_message

    assert error_message(body) == message


def test_in_band_error_shapes_raise_with_their_message():
    for data in ('{"object": "error", "message": "overloaded"}', '{"error": {"message": "overloaded"}}'):
        with pytest.raises(StreamError, match="error event in stream: overloaded") as caught:
            parse_sse_event(ServerSentEvent(data))
        assert caught.value.body == json.loads(data)
    chunk_with_error_field = {"id": "c", "choices": [], "error": None}  # a chunk may carry an error key
    assert parse_sse_event(ServerSentEvent(json.dumps(chunk_with_error_field))) == chunk_with_error_field
    assert parse_sse_event(ServerSentEvent("  [DONE]  ")) is DONE
    with pytest.raises(StreamError, match="unexpected data"):
        parse_sse_event(ServerSentEvent("[1, 2]"))


def test_accumulator_keeps_logprobs_reasoning_stop_reason_and_missing_ids():
    entry = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}
    acc = ChunkAccumulator()
    for p in [
        chunk({"role": "assistant", "reasoning_content": "think "}),
        chunk({"reasoning_content": "more"}),
        ChatCompletionChunk.model_validate({**chunk({}).model_dump(), "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [entry]}}]}),
        ChatCompletionChunk.model_validate({**chunk({}).model_dump(), "choices": [{"index": 0, "delta": {"content": "b"}, "logprobs": {"content": [{**entry, "token": "b"}]}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "get_", "arguments": "{"}}]}),
        chunk({"tool_calls": [{"index": 0, "type": "function", "function": {"name": "time", "arguments": "}"}}]}),
        ChatCompletionChunk.model_validate({**chunk({}).model_dump(), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}),
    ]:
        acc.add(p)
    done = acc.completion()
    choice = done.choices[0]
    assert (choice.message.content, choice.message.reasoning_content) == ("ab", "think more")
    assert [e["token"] for e in choice.logprobs["content"]] == ["a", "b"]
    assert (choice.finish_reason, choice.stop_reason) == ("stop", "END")
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name, call.function.arguments) == ("call_0_0", "function", "get_time", "{}")
    assert done.usage is None and (done.id, done.model, done.created) == ("chatcmpl-1", "m", 1)
    plain = ChunkAccumulator()
    plain.add(chunk({"role": "assistant"}))
    only = plain.completion().choices[0]
    assert (only.message.content, only.message.reasoning_content, only.logprobs, only.message.tool_calls) == (None, None, None, [])


def test_sse_line_ends_at_the_very_start_and_right_after_one_byte():
    decoder = SSEDecoder()
    assert [e.data for e in decoder.feed(b"\ndata: x\n\n")] == ["x"]  # a blank first line
    decoder.feed(b"data: y")
    assert [e.data for e in decoder.flush()] == ["y"]
    assert [e.data for e in decoder.feed(b"\ndata: z\n\n")] == ["z"]  # and again after a flush
    assert [e.data for e in SSEDecoder().feed(b":\rdata: w\r\n\r\n")] == ["w"]  # a CR at index 1


def test_sse_flush_keeps_trailing_spaces_and_letters_and_bad_bytes_are_replaced():
    decoder = SSEDecoder()
    decoder.feed(b"data: XX  ")
    assert [e.data for e in decoder.flush()] == ["XX  "]
    assert [e.data for e in SSEDecoder().feed(b"data: a\xffb\n\n")] == ["a\ufffdb"]


def test_error_texts_are_cut_where_documented():
    data = "x" * 100
    with pytest.raises(StreamError) as caught:
        parse_sse_event(ServerSentEvent("{" + data))
    assert str(caught.value) == f"malformed data in stream: {('{' + data)[:80]!r}"
    with pytest.raises(StreamError) as caught:
        parse_sse_event(ServerSentEvent(json.dumps([data])))
    assert str(caught.value) == f"unexpected data in stream: {json.dumps([data])[:80]!r}"
    from azion_ai._streaming import error_message

    assert error_message({"error": {"detail": ["y" * 400]}}) == json.dumps(["y" * 400])[:300]
    with pytest.raises(StreamError, match="^the stream held no chunks, so there is no completion to build$"):
        ChunkAccumulator().completion()


def test_a_chunk_that_is_not_a_chunk_is_named_and_odd_logprobs_are_skipped():
    from azion_ai._streaming import parse_chunk

    with pytest.raises(StreamError, match=r"^stream sent something that is not a chat\.completion\.chunk: Field required$"):
        parse_chunk({"object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []})
    acc = ChunkAccumulator()
    acc.add(ChatCompletionChunk.model_validate({**chunk({}).model_dump(), "choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": None}}]}))
    assert acc.completion().choices[0].logprobs == {"content": []}


def _events_of(chunks):
    from azion_ai._transport import ChunkStream

    return ChunkStream(iter([c.model_dump() for c in chunks]))


def test_iter_text_is_the_first_choices_content_and_streams_keep_their_request_id():
    from azion_ai import Stream

    parts = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "other"}, index=1), chunk({"content": "lo"}), chunk({}, finish="stop")]
    stream = Stream(_events_of(parts), request_id="req-1")
    assert stream.request_id == "req-1"
    assert list(stream.iter_text()) == ["Hel", "lo"]
    assert list(stream) == []  # over, and closed


async def test_async_iter_text_and_request_id():
    from azion_ai import AsyncStream
    from azion_ai._transport import AsyncChunkStream

    parts = [chunk({"content": "a"}), chunk({"content": "b"}, index=1), chunk({"content": "c"})]

    async def gen():
        for c in parts:
            yield c.model_dump()

    stream = AsyncStream(AsyncChunkStream(gen()), request_id="req-2")
    assert stream.request_id == "req-2"
    assert [t async for t in stream.iter_text()] == ["a", "c"]


def test_sse_defaults_and_the_last_byte_of_a_flushed_line():
    (first,) = SSEDecoder().feed(b"data: a\n\n")
    assert (first.id, first.retry, first.event) == (None, None, None)
    decoder = SSEDecoder()
    decoder.feed(b"data: aX\r")
    assert [e.data for e in decoder.flush()] == ["aX"]  # only the CR goes
