"""The one interface every backend implements, in the manner of httpx's transports.

A client validates the payload, builds a :class:`ChatRequest` and hands it to whatever transport
it holds; it never knows whether that is the HTTP transport or the in-process local backend.
A transport answers with a :class:`TransportResponse`: a whole completion body, or an iterator
of chunk dicts plus the function that releases what the stream holds.
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


def _noop() -> None:
    return None


async def _anoop() -> None:
    return None


def _no_headers() -> Mapping[str, str]:
    return {}


@dataclass
class TransportResponse:
    body: dict[str, Any] | None = None
    events: Iterator[dict[str, Any]] | None = None
    close: Callable[[], None] = _noop
    status_code: int = 200
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    """The HTTP response's headers (remote); empty for the local backend."""


@dataclass
class AsyncTransportResponse:
    body: dict[str, Any] | None = None
    events: AsyncIterator[dict[str, Any]] | None = None
    aclose: Callable[[], Awaitable[None]] = _anoop
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
