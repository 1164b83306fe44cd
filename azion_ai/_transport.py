"""The one interface every backend implements, in the manner of httpx's transports.

A client validates the payload, builds a :class:`ChatRequest` and hands it to whatever transport
it holds; it never knows whether that is the HTTP transport or the in-process local backend.
A transport answers with a :class:`TransportResponse`: a whole completion body, or one
:class:`ChunkStream` that owns what the stream holds (an HTTP response, a local job) and
releases it exactly once, whether it is read to the end, closed early, or never read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._models import ModelInfo

__all__ = [
    "TransportContract",
    "ChatRequest",
    "TransportResponse",
    "AsyncTransportResponse",
    "ChunkStream",
    "AsyncChunkStream",
    "BaseTransport",
    "AsyncBaseTransport",
]


@dataclass(frozen=True)
class ChatRequest:
    """A validated payload for one model, as the JS API's ``Azion.AI.run(modelId, payload)``."""

    model: ModelInfo
    payload: Mapping[str, Any]
    lora: str | None = None
    """A LoRA adapter to answer with (local: a configured adapter; remote: vLLM's adapter model name)."""
    timeout: float | None = None
    """Seconds for this request (remote: httpx's timeout; local: the wait for each next event)."""
    max_retries: int | None = None
    """Retries for this request (remote); None: the client's."""
    extra_headers: Mapping[str, str] | None = None
    """HTTP headers for this request only (remote)."""

    @property
    def stream(self) -> bool:
        return bool(self.payload.get("stream", False))

    @property
    def endpoint(self) -> str:
        """``chat/completions``, ``embeddings``, ``rerank`` or ``score``: by the model's kind."""
        from ._models import endpoint

        return endpoint(self.model, self.payload)


def _noop() -> object:
    return None


async def _anoop() -> object:
    return None


def _no_headers() -> Mapping[str, str]:
    return {}


class ChunkStream:
    """The chunk dicts of one streamed answer and the one function that releases what they hold."""

    def __init__(self, chunks: Iterator[dict[str, Any]], release: Callable[[], object] = _noop) -> None:
        self._chunks = chunks
        self._release = release
        self._closed = False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._chunks)
        except BaseException:  # the end (StopIteration) or a failure: released either way
            self.close()
            raise

    def close(self) -> None:
        """Stop reading and release, once (later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._chunks, "close", None)  # a generator's own cleanup, if any
            if close is not None:
                close()
        finally:
            self._release()


class AsyncChunkStream:
    """The async counterpart of :class:`ChunkStream`."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]], release: Callable[[], Awaitable[object]] = _anoop) -> None:
        self._chunks = chunks
        self._release = release
        self._closed = False

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._release()


@dataclass
class TransportResponse:
    """A whole body, or (streams) one :class:`ChunkStream`."""

    body: dict[str, Any] | None = None
    events: ChunkStream | None = None
    status_code: int = 200
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    """The HTTP response's headers (remote); empty for the local backend."""


@dataclass
class AsyncTransportResponse:
    body: dict[str, Any] | None = None
    events: AsyncChunkStream | None = None
    status_code: int = 200
    headers: Mapping[str, str] = field(default_factory=_no_headers)


class TransportContract:
    """What a client may ask of any transport besides requests: declared here, so clients and the
    server never probe with ``getattr``. A transport overrides what applies to it."""

    backend_name: str = "custom"
    """``"remote"``, ``"local"``, or ``"custom"`` for a transport of your own."""
    max_model_len: int | None = None
    """A context length the transport enforces for every model (local backend), else None."""

    @property
    def extra_url_schemes(self) -> tuple[str, ...]:
        """Image URL schemes accepted beyond http(s) and data: (the local backend's ``file:``
        when a local directory is allowed); validation reads it."""
        return ()

    def load(self, model_id: str) -> None:
        """Make ``model_id`` ready before its first request (local: load the weights). Nothing to
        do for a transport that sends requests elsewhere."""
        return None


class BaseTransport(TransportContract):
    """A sync transport: one request in, a body or a chunk stream out."""

    def handle_request(self, request: ChatRequest) -> TransportResponse:
        raise NotImplementedError

    def close(self) -> None:
        return None


class AsyncBaseTransport(TransportContract):
    """The async counterpart of :class:`BaseTransport`."""

    async def handle_async_request(self, request: ChatRequest) -> AsyncTransportResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None
