"""Streams of chat-completion chunks, the SSE decoder that feeds them, and their accumulation.

``Stream`` / ``AsyncStream`` wrap whatever a transport yields (chunk dicts) and always release
the transport's resources in ``close()``: at the end of iteration, on error, on ``break`` inside
a ``with`` block, or when the stream is garbage-collected.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from ._exceptions import StreamError
from ._types import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    FunctionCall,
    Message,
    ToolCall,
    Usage,
)

if TYPE_CHECKING:
    from ._transport import AsyncChunkStream, ChunkStream

__all__ = ["Stream", "AsyncStream", "ChunkAccumulator", "SSEDecoder", "ServerSentEvent"]


# -- Server-sent events ------------------------------------------------------------------------


@dataclass
class ServerSentEvent:
    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental SSE parser (WHATWG rules): LF, CR and CRLF line ends, comments, multi-line data.

    Each byte is scanned once, so a stream costs time linear in its length, however it is split
    into network reads and however long one event is.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no line end
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        buf = self._buf
        buf += chunk
        events: list[ServerSentEvent] = []
        start, pos = 0, self._scanned
        size = len(buf)
        # memchr-speed searches for LF and CR, each redone only once the parser has passed it.
        lf, cr = buf.find(b"\n", pos), buf.find(b"\r", pos)
        while lf != -1 or cr != -1:
            if cr == -1 or (lf != -1 and lf < cr):
                end, pos = lf, lf + 1
            elif cr + 1 == size:
                break  # a CR at the very end may be the first half of CRLF: wait for more
            else:
                end, pos = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            event = self._line(buf[start:end])
            if event is not None:
                events.append(event)
            start = pos
            if lf != -1 and lf < pos:
                lf = buf.find(b"\n", pos)
            if cr != -1 and cr < pos:
                cr = buf.find(b"\r", pos)
        del buf[:start]
        self._scanned = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """At end of input: the last line and event, even without their closing blank line."""
        events: list[ServerSentEvent] = []
        if self._buf:
            line = bytes(self._buf).rstrip(b"\r")
            self._buf.clear()
            self._scanned = 0
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._line(b"")
        if event is not None:
            events.append(event)
        return events

    def _line(self, raw: bytes | bytearray) -> ServerSentEvent | None:
        if not raw:
            if not self._data and self._event is None:
                return None
            event = ServerSentEvent("\n".join(self._data), self._event, self._id, self._retry)
            self._data, self._event = [], None
            return event
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


DONE = object()


def parse_sse_event(event: ServerSentEvent) -> Any:
    """Chunk dict for a data event, ``DONE`` for ``[DONE]``; raises on in-band errors."""
    data = event.data
    if data.strip() == "[DONE]":
        return DONE
    try:
        obj = json.loads(data)
    except ValueError:
        raise StreamError(f"malformed data in stream: {data[:80]!r}") from None
    if event.event == "error" or (
        isinstance(obj, dict) and (obj.get("object") == "error" or "error" in obj and "choices" not in obj)
    ):
        raise StreamError(f"error event in stream: {error_message(obj)}", body=obj)
    if not isinstance(obj, dict):
        raise StreamError(f"unexpected data in stream: {data[:80]!r}")
    return obj


def error_message(body: Any) -> str:
    """The human message in an error body, in any of the shapes servers use."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(err.get(key), str):
                    return str(err[key])
            detail = err.get("detail")
            if detail is not None:
                return json.dumps(detail)[:300]
        if isinstance(err, str):
            return err
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return "no error message"


# -- accumulation -----------------------------------------------------------------------------


@dataclass
class _ToolCallState:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _ChoiceState:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    saw_content: bool = False
    saw_reasoning: bool = False
    tool_calls: dict[int, _ToolCallState] = field(default_factory=dict)
    finish_reason: str | None = None
    stop_reason: Any = None
    logprobs: list[Any] = field(default_factory=list)


class ChunkAccumulator:
    """Folds chunks into the ``ChatCompletion`` the same request would have returned whole.

    Content is concatenated, tool-call deltas are merged by their ``index``, and finish_reason,
    stop_reason and usage are kept.
    """

    def __init__(self) -> None:
        self._first: ChatCompletionChunk | None = None
        self._choices: dict[int, _ChoiceState] = {}
        self._usage: Usage | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        if self._first is None:
            self._first = chunk
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            state = self._choices.setdefault(choice.index, _ChoiceState())
            delta = choice.delta
            if delta.content is not None:
                state.saw_content = True
                state.content.append(delta.content)
            if delta.reasoning_content is not None:
                state.saw_reasoning = True
                state.reasoning.append(delta.reasoning_content)
            for call in delta.tool_calls or ():
                tc = state.tool_calls.setdefault(call.index, _ToolCallState())
                if call.id:
                    tc.id = call.id
                if call.type:
                    tc.type = call.type
                if call.function is not None:
                    if call.function.name:
                        tc.name += call.function.name
                    if call.function.arguments:
                        tc.arguments.append(call.function.arguments)
            if choice.logprobs is not None:
                state.logprobs.append(choice.logprobs)
            if choice.finish_reason is not None:
                state.finish_reason = choice.finish_reason
            if choice.stop_reason is not None:
                state.stop_reason = choice.stop_reason

    def completion(self) -> ChatCompletion:
        if self._first is None:
            raise StreamError("the stream held no chunks, so there is no completion to build")
        choices = []
        for index in sorted(self._choices):
            s = self._choices[index]
            calls = [
                ToolCall(
                    id=tc.id or f"call_{index}_{i}",
                    type="function",
                    function=FunctionCall(name=tc.name, arguments="".join(tc.arguments)),
                )
                for i, tc in sorted(s.tool_calls.items())
            ]
            message = Message(
                role="assistant",
                content="".join(s.content) if s.saw_content else None,
                reasoning_content="".join(s.reasoning) if s.saw_reasoning else None,
                tool_calls=calls,
            )
            choices.append(
                Choice(
                    index=index,
                    message=message,
                    logprobs=_merge_logprobs(s.logprobs),
                    finish_reason=s.finish_reason,
                    stop_reason=s.stop_reason,
                )
            )
        first = self._first
        return ChatCompletion(
            id=first.id, created=first.created, model=first.model, choices=choices, usage=self._usage
        )


def _merge_logprobs(parts: list[Any]) -> Any:
    if not parts:
        return None
    content: list[Any] = []
    for part in parts:
        if isinstance(part, dict) and isinstance(part.get("content"), list):
            content.extend(part["content"])
    return {"content": content}


def parse_chunk(raw: Any) -> ChatCompletionChunk:
    try:
        return ChatCompletionChunk.model_validate(raw)
    except PydanticValidationError as exc:
        raise StreamError(f"stream sent something that is not a chat.completion.chunk: {exc.errors()[0]['msg']}") from None


# -- streams ----------------------------------------------------------------------------------


class Stream:
    """A sync iterator of :class:`ChatCompletionChunk`; also a context manager."""

    def __init__(self, events: ChunkStream, request_id: str | None = None) -> None:
        self._events = events
        self.request_id = request_id
        """The server's ``x-request-id`` for this stream, if it sent one."""
        self._closed = False
        self._accumulator = ChunkAccumulator()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopIteration
        try:
            chunk = parse_chunk(next(self._events))
        except BaseException:  # StopIteration included: the stream is over either way
            self.close()
            raise
        self._accumulator.add(chunk)
        return chunk

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the response (remote) or stop generation (local). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._events.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def get_final_completion(self) -> ChatCompletion:
        """Read the rest of the stream and return it as one ``ChatCompletion``."""
        for _ in self:
            pass
        return self._accumulator.completion()

    def iter_text(self) -> Iterator[str]:
        """Just the content of the first choice, piece by piece."""
        for chunk in self:
            for choice in chunk.choices:
                if choice.index == 0 and choice.delta.content:
                    yield choice.delta.content


class AsyncStream:
    """An async iterator of :class:`ChatCompletionChunk`; also an async context manager."""

    def __init__(self, events: AsyncChunkStream, request_id: str | None = None) -> None:
        self._events = events
        self.request_id = request_id
        self._closed = False
        self._accumulator = ChunkAccumulator()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk = parse_chunk(await self._events.__anext__())
        except BaseException:
            await self.aclose()
            raise
        self._accumulator.add(chunk)
        return chunk

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._events.aclose()

    close = aclose

    async def get_final_completion(self) -> ChatCompletion:
        async for _ in self:
            pass
        return self._accumulator.completion()

    async def iter_text(self) -> AsyncIterator[str]:
        async for chunk in self:
            for choice in chunk.choices:
                if choice.index == 0 and choice.delta.content:
                    yield choice.delta.content
