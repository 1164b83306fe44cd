"""``AI`` and ``AsyncAI``: ``run(model_id, payload)`` over whichever transport the client holds.

Both share one base that resolves the model, validates the payload and builds the request; the
transport (remote HTTP or the in-process local backend) only ever sees valid requests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

import httpx
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import TypedDict, Unpack

from ._exceptions import APIResponseValidationError, ClientClosedError
from ._models import get_model
from ._streaming import AsyncStream, Stream
from ._transport import (
    AsyncBaseTransport,
    AsyncTransportResponse,
    BaseTransport,
    ChatRequest,
    TransportContract,
    TransportResponse,
)
from ._types import (
    ChatCompletion,
    ChatPayload,
    EmbeddingPayload,
    EmbeddingResponse,
    NonStreamingChatPayload,
    RerankPayload,
    RerankResponse,
    ScorePayload,
    ScoreResponse,
    StreamingChatPayload,
    _Answer,
)
from ._validation import validate_payload

__all__ = ["AI", "AsyncAI"]

Backend = Literal["remote", "local"]
ENV_BASE_URL = "AZION_AI_BASE_URL"
# The endpoint's own token. Never AZION_TOKEN: that is Azion's account-wide personal API token (what
# Azion's CLI and libraries read); the AI endpoint does not use it, and sending it as a Bearer would
# hand the whole account to whatever host base_url names (docs/security.md).
ENV_TOKEN = "AZION_AI_TOKEN"
ENV_BACKEND = "AZION_AI_BACKEND"

T = TypeVar("T")


class RequestOptions(TypedDict, total=False):
    """Per-request controls of ``run``, as openai-python names them."""

    timeout: float
    max_retries: int
    extra_headers: Mapping[str, str]


def _local_backend_class() -> Any:
    from ._local import LocalTransport  # imports nothing heavy until a model loads

    return LocalTransport


TransportT = TypeVar("TransportT", bound=TransportContract)


class _ClientBase(Generic[TransportT]):
    """Configuration and request building shared by ``AI`` and ``AsyncAI``, over the transport
    kind each one drives (sync or async)."""

    _transport: TransportT
    _closed: bool = False

    def _setup(
        self,
        *,
        transport: Any,
        backend: Backend | None,
        remote_class: Any,
        http_client: Any,
        base_url: str | Sequence[str] | None,
        token: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
        validate: bool,
        models: Mapping[str, str] | None,
        device: str,
        local_options: Mapping[str, Any],
    ) -> None:
        self.validate = validate
        if transport is not None:
            self._transport = transport
            self.backend = transport.backend_name
            return
        self.backend = backend or os.environ.get(ENV_BACKEND) or "remote"
        if self.backend == "remote":
            if local_options:
                raise TypeError(f"unexpected argument(s) for the remote backend: {', '.join(sorted(local_options))}")
            base_url = base_url or os.environ.get(ENV_BASE_URL)
            if isinstance(base_url, str) and "," in base_url:  # a fleet: "https://a/v1,https://b/v1"
                base_url = [u.strip() for u in base_url.split(",") if u.strip()]
            if not base_url:
                raise ValueError(
                    "no base_url: pass AI(base_url='https://<app>.map.azionedge.net/v1') or set "
                    f"{ENV_BASE_URL} (any OpenAI-compatible server works), or use backend='local'"
                )
            self._transport = remote_class(
                http_client=http_client,
                base_url=base_url,
                token=token if token is not None else os.environ.get(ENV_TOKEN),
                timeout=timeout,
                max_retries=max_retries,
                default_headers=default_headers,
            )
        elif self.backend == "local":
            self._transport = _local_backend_class()(models=models, device=device, **local_options)
        else:
            raise ValueError(f"backend must be 'remote' or 'local', got {self.backend!r}")

    def _request(self, model_id: str, payload: Any, validate: bool | None, lora: str | None = None, **options: Any) -> ChatRequest:
        if self._closed:
            raise ClientClosedError(f"this {type(self).__name__} is closed; make a new client to send requests")
        model = get_model(model_id)
        if self.validate if validate is None else validate:
            schemes = self._transport.extra_url_schemes
            validate_payload(model, payload, extra_url_schemes=schemes)
        elif not isinstance(payload, Mapping):
            raise TypeError("payload must be a dict")
        unknown = set(options) - set(RequestOptions.__annotations__)
        if unknown:
            raise TypeError(f"run() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        timeout, retries = options.get("timeout"), options.get("max_retries")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if retries is not None and retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {retries!r}")
        return ChatRequest(model=model, payload=dict(payload), lora=lora, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, transport={self._transport!r})"


_ANSWERS: dict[str, type[_Answer]] = {
    "chat/completions": ChatCompletion,
    "embeddings": EmbeddingResponse,
    "rerank": RerankResponse,
    "score": ScoreResponse,
}


def _answer(body: dict[str, Any], endpoint: str, request_id: str | None) -> Any:
    model = _ANSWERS[endpoint]
    try:
        answer = model.model_validate(body)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise APIResponseValidationError(
            f"server answered with something that is not a {endpoint} response ({where}: {first['msg']})",
            body=body,
        ) from None
    answer._request_id = request_id
    return answer


def _sync_result(response: TransportResponse, endpoint: str = "chat/completions") -> Any:
    request_id = response.headers.get("x-request-id")
    if response.events is not None:
        return Stream(response.events, request_id)
    assert response.body is not None
    return _answer(response.body, endpoint, request_id)


async def _async_result(response: AsyncTransportResponse, endpoint: str = "chat/completions") -> Any:
    request_id = response.headers.get("x-request-id")
    if response.events is not None:
        return AsyncStream(response.events, request_id)
    assert response.body is not None
    return _answer(response.body, endpoint, request_id)


@dataclass(frozen=True)
class RawResponse(Generic[T]):
    """What ``with_raw_response.run`` returns: the HTTP status and headers (request id,
    rate-limit headers), and :meth:`parse` for the usual result (a stream stays open until read
    or closed)."""

    status_code: int
    headers: Mapping[str, str]
    _parsed: T

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    def parse(self) -> T:
        return self._parsed


class _RawRuns:
    """``ai.with_raw_response``: ``run`` with the response's status and headers kept."""

    def __init__(self, client: AI) -> None:
        self._client = client

    def run(
        self, model_id: str, payload: ChatPayload | Mapping[str, Any], *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> RawResponse[Any]:
        client = self._client
        request = client._request(model_id, payload, validate, lora, **options)
        response = client.transport.handle_request(request)
        return RawResponse(response.status_code, response.headers, _sync_result(response, request.endpoint))


class _AsyncRawRuns:
    """``aai.with_raw_response``: ``await run(...)`` with the response's status and headers kept."""

    def __init__(self, client: AsyncAI) -> None:
        self._client = client

    async def run(
        self, model_id: str, payload: ChatPayload | Mapping[str, Any], *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> RawResponse[Any]:
        client = self._client
        request = client._request(model_id, payload, validate, lora, **options)
        response = await client.transport.handle_async_request(request)
        return RawResponse(response.status_code, response.headers, await _async_result(response, request.endpoint))


class AI(_ClientBase[BaseTransport]):
    """Synchronous client: ``AI(...).run(model_id, payload)``.

    ``backend="remote"`` (default) talks to Azion or any OpenAI-compatible server;
    ``backend="local"`` runs the model weights in this process.
    """

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        base_url: str | Sequence[str] | None = None,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        transport: BaseTransport | None = None,
        validate: bool = True,
        models: Mapping[str, str] | None = None,
        device: str = "auto",
        **local_options: Any,
    ) -> None:
        from ._remote import HTTPTransport

        self._setup(
            transport=transport,
            backend=backend,
            remote_class=HTTPTransport,
            http_client=http_client,
            base_url=base_url,
            token=token,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            validate=validate,
            models=models,
            device=device,
            local_options=local_options,
        )

    @property
    def transport(self) -> BaseTransport:
        return self._transport

    @property
    def with_raw_response(self) -> _RawRuns:
        """``ai.with_raw_response.run(...)``: a :class:`RawResponse` (status, headers, ``parse()``)."""
        return _RawRuns(self)

    @overload
    def run(self, model_id: str, payload: StreamingChatPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]) -> Stream: ...

    @overload
    def run(
        self, model_id: str, payload: NonStreamingChatPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ChatCompletion: ...

    @overload
    def run(
        self, model_id: str, payload: EmbeddingPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> EmbeddingResponse: ...

    @overload
    def run(
        self, model_id: str, payload: RerankPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> RerankResponse: ...

    @overload
    def run(
        self, model_id: str, payload: ScorePayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ScoreResponse: ...

    @overload
    def run(
        self, model_id: str, payload: ChatPayload | Mapping[str, Any], *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ChatCompletion | Stream | EmbeddingResponse | RerankResponse | ScoreResponse: ...

    def run(
        self, model_id: str, payload: ChatPayload | Mapping[str, Any], *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ChatCompletion | Stream | EmbeddingResponse | RerankResponse | ScoreResponse:
        """Run ``model_id`` on ``payload`` (the JSON of Azion's JS API).

        Returns a ``ChatCompletion``, or a ``Stream`` of chunks when ``payload["stream"]`` is true.
        Raises ``ValidationError`` before anything is sent if the payload breaks the model's schema.
        ``lora`` names a LoRA adapter (local: one given to ``lora_adapters``; remote: the adapter's
        served model name, as vLLM names them). Per request, as in openai-python: ``timeout``
        (seconds), ``max_retries`` and ``extra_headers`` (remote only).
        """
        request = self._request(model_id, payload, validate, lora, **options)
        return _sync_result(self._transport.handle_request(request), request.endpoint)

    def close(self) -> None:
        self._closed = True
        self._transport.close()

    def __enter__(self) -> AI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncAI(_ClientBase[AsyncBaseTransport]):
    """Asynchronous client: ``await AsyncAI(...).run(model_id, payload)``."""

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        base_url: str | Sequence[str] | None = None,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: AsyncBaseTransport | None = None,
        validate: bool = True,
        models: Mapping[str, str] | None = None,
        device: str = "auto",
        **local_options: Any,
    ) -> None:
        from ._remote import AsyncHTTPTransport

        self._setup(
            transport=transport,
            backend=backend,
            remote_class=AsyncHTTPTransport,
            http_client=http_client,
            base_url=base_url,
            token=token,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            validate=validate,
            models=models,
            device=device,
            local_options=local_options,
        )

    @property
    def transport(self) -> AsyncBaseTransport:
        return self._transport

    @property
    def with_raw_response(self) -> _AsyncRawRuns:
        """``await aai.with_raw_response.run(...)``: a :class:`RawResponse`."""
        return _AsyncRawRuns(self)

    @overload
    async def run(
        self, model_id: str, payload: StreamingChatPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> AsyncStream: ...

    @overload
    async def run(
        self, model_id: str, payload: NonStreamingChatPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ChatCompletion: ...

    @overload
    async def run(
        self, model_id: str, payload: EmbeddingPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> EmbeddingResponse: ...

    @overload
    async def run(
        self, model_id: str, payload: RerankPayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> RerankResponse: ...

    @overload
    async def run(
        self, model_id: str, payload: ScorePayload, *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ScoreResponse: ...

    @overload
    async def run(
        self, model_id: str, payload: ChatPayload | Mapping[str, Any], *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ChatCompletion | AsyncStream | EmbeddingResponse | RerankResponse | ScoreResponse: ...

    async def run(
        self, model_id: str, payload: ChatPayload | Mapping[str, Any], *, validate: bool | None = None, lora: str | None = None, **options: Unpack[RequestOptions]
    ) -> ChatCompletion | AsyncStream | EmbeddingResponse | RerankResponse | ScoreResponse:
        """Async twin of :meth:`AI.run`; ``await`` it, then ``async for`` over a stream."""
        request = self._request(model_id, payload, validate, lora, **options)
        return await _async_result(await self._transport.handle_async_request(request), request.endpoint)

    async def aclose(self) -> None:
        self._closed = True
        await self._transport.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncAI:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
