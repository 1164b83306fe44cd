"""The remote backend: Azion's OpenAI-compatible endpoint, or any vLLM-style server, over httpx.

Retries (exponential backoff with jitter, honouring Retry-After) happen only before a response
body is handed out; once a stream has delivered its first byte it is never retried. httpx's
exceptions are mapped onto ``azion_ai``'s at this edge and never escape.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import anyio
import httpx

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    ValidationError,
    ValidationIssue,
    make_status_error,
)
from ._streaming import DONE, SSEDecoder, StreamError, error_message, parse_sse_event
from ._transport import (
    AsyncBaseTransport,
    AsyncChunkStream,
    AsyncTransportResponse,
    BaseTransport,
    ChatRequest,
    ChunkStream,
    TransportResponse,
)
from ._validation import lone_surrogate_issue
from ._version import __version__

log = logging.getLogger("azion_ai")

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
FAILOVER_COOLDOWN = 30.0  # seconds a base URL that failed is tried after the others
RETRY_STATUSES = frozenset({408, 409, 429})
USER_AGENT = f"azion-ai-python/{__version__}"
_sleep = time.sleep  # module-level so tests can record retry delays without sleeping
_async_sleep = anyio.sleep


class Secret:
    """A token that never shows itself in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def normalise_base_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; with no path at all it gets ``/v1`` (Azion's
    starter kit and vLLM both serve ``/v1/...``)."""
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if url.path in ("", "/"):
        url = url.copy_with(path="/v1")
    return str(url).rstrip("/")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return parsed.timestamp() - time.time()


class _RemoteBase:
    """What the sync and async HTTP transports share: URLs, headers, errors and retry timing."""

    backend_name = "remote"

    def __init__(
        self,
        *,
        base_url: str | Sequence[str],
        token: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: give at least one URL")
        # A fleet: each request starts at the next URL (round-robin) and fails over to the others
        # on connection errors, timeouts and 5xx; a URL that failed is tried last for a while.
        self.base_urls = [normalise_base_url(u) for u in urls]
        self.base_url = self.base_urls[0]
        self._turn = itertools.count()
        self._down_until: dict[str, float] = {}
        self._token = Secret(token) if token else None
        self.timeout = DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})
        self.url = f"{self.base_url}/chat/completions"  # for logs; each request goes to base_url + request.endpoint

    def __repr__(self) -> str:
        shown = self.base_url if len(self.base_urls) == 1 else self.base_urls
        return f"{type(self).__name__}(base_url={shown!r})"

    def _plan(self) -> list[str]:
        """The base URLs for one request, in the order to try them: round-robin from the next
        one, those that failed lately (FAILOVER_COOLDOWN) last."""
        start = next(self._turn) % len(self.base_urls)
        order = self.base_urls[start:] + self.base_urls[:start]
        now = time.monotonic()
        return [u for u in order if self._down_until.get(u, 0) <= now] + [u for u in order if self._down_until.get(u, 0) > now]

    def _failed(self, base_url: str, error: APIError) -> bool:
        """Note a failure; True when the next URL should be tried at once (a connection error,
        a timeout or a 5xx), False when it is the request's fault or a rate limit (retry with
        backoff instead)."""
        status = getattr(error, "status_code", None)
        if isinstance(error, APIConnectionError) or (isinstance(status, int) and status >= 500):
            self._down_until[base_url] = time.monotonic() + FAILOVER_COOLDOWN
            return len(self.base_urls) > 1
        return False

    def _headers(self, request: ChatRequest) -> dict[str, str]:
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if request.stream else "application/json",
        }
        headers.update(self.default_headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        headers.update(request.extra_headers or {})
        return headers

    def _limits(self, request: ChatRequest) -> tuple[httpx.Timeout, int]:
        """This request's timeout and retry budget: its own, else the client's."""
        timeout = self.timeout if request.timeout is None else httpx.Timeout(request.timeout)
        return timeout, self.max_retries if request.max_retries is None else request.max_retries

    @staticmethod
    def _body(request: ChatRequest) -> bytes:
        body = {**request.payload, "model": request.lora or request.model.id}
        try:
            return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # only with validate=False: validation refuses it first
            issue = lone_surrogate_issue(request.payload) or ValidationIssue("", "is not valid Unicode")
            raise ValidationError(request.model.id, [issue]) from None

    def _retry_delay(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        if headers is not None:
            after = _retry_after(headers)
            if after is not None and 0 <= after <= MAX_RETRY_AFTER:
                return after
        delay = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
        return delay * (1 - 0.25 * random.random())

    @staticmethod
    def _retryable_status(status: int) -> bool:
        return status in RETRY_STATUSES or status >= 500

    @staticmethod
    def _status_error(response: httpx.Response, content: bytes) -> APIError:
        try:
            body: Any = json.loads(content) if content else None
        except ValueError:
            body = content.decode("utf-8", errors="replace")
        message = error_message(body)
        path = response.request.url.path
        base = path[: path.rindex("/")] if "/" in path else path
        if base.endswith("/chat"):
            base = base[: -len("/chat")]
        if response.status_code == 404 and not base.endswith("/v1"):
            message += f" (base_url's path is {base or '/'!r}; OpenAI-compatible servers such as Azion's starter kit and vLLM serve /v1/...)"
        return make_status_error(
            message,
            status_code=response.status_code,
            body=body,
            request_id=response.headers.get("x-request-id"),
            headers=response.headers,
        )

    @staticmethod
    def _completion_body(content: bytes) -> dict[str, Any]:
        try:
            body = json.loads(content)
        except ValueError:
            raise APIResponseValidationError(
                f"server answered with something that is not JSON: {content[:80]!r}"
            ) from None
        if not isinstance(body, dict):
            raise APIResponseValidationError("server answered with JSON that is not an object", body=body)
        return body

    @staticmethod
    def _connection_error(exc: httpx.HTTPError) -> APIConnectionError:
        """httpx's errors as ours, in this one place, with httpx's error kept as the cause."""
        error = APITimeoutError(f"request timed out ({type(exc).__name__})") if isinstance(exc, httpx.TimeoutException) else APIConnectionError(f"connection error: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    def _outcome(self, base_url: str, response: httpx.Response, content: bytes) -> dict[str, Any] | APIError:
        """A response read whole: its completion body (the URL is up again), or the error it
        stands for, to retry; an error not worth retrying (a 4xx but 408/409/429) is raised."""
        if response.is_success:
            self._down_until.pop(base_url, None)
            return self._completion_body(content)
        error = self._status_error(response, content)
        if not self._retryable_status(response.status_code):
            raise error
        return error

    def _before_retry(self, attempt: int, retries: int, error: APIError, headers: Mapping[str, str] | None) -> float:
        """The wait before retry ``attempt + 1`` (backoff with jitter, or the server's
        Retry-After); ``error`` is raised when the retries are spent."""
        if attempt >= retries:
            raise error
        delay = self._retry_delay(attempt, headers)
        log.info("retrying %s in %.2fs (retry %d of %d): %s", self.url, delay, attempt + 1, retries, error)
        return delay


class HTTPTransport(_RemoteBase, BaseTransport):
    def __init__(self, *, http_client: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(timeout=self.timeout)

    def handle_request(self, request: ChatRequest) -> TransportResponse:
        content = self._body(request)
        headers = self._headers(request)
        timeout, retries = self._limits(request)
        attempt = 0
        while True:
            retry_headers: Mapping[str, str] | None = None
            for base_url in self._plan():
                retry_headers = None
                try:
                    response = self._client.send(
                        self._client.build_request("POST", f"{base_url}/{request.endpoint}", content=content, headers=headers, timeout=timeout),
                        stream=True,
                    )
                except httpx.HTTPError as exc:
                    error: APIError = self._connection_error(exc)
                else:
                    if response.is_success and request.stream:  # from here on, never replayed
                        return TransportResponse(
                            events=ChunkStream(self._events(response), response.close), status_code=response.status_code, headers=response.headers
                        )
                    try:
                        body_bytes = response.read()
                    except httpx.HTTPError as exc:
                        error = self._connection_error(exc)
                    else:
                        outcome = self._outcome(base_url, response, body_bytes)
                        if not isinstance(outcome, APIError):
                            return TransportResponse(body=outcome, status_code=response.status_code, headers=response.headers)
                        error, retry_headers = outcome, response.headers
                    finally:
                        response.close()
                if not self._failed(base_url, error):
                    break
            delay = self._before_retry(attempt, retries, error, retry_headers)
            _sleep(delay)
            attempt += 1

    def _events(self, response: httpx.Response) -> Iterator[dict[str, Any]]:
        decoder = SSEDecoder()
        try:
            for data in response.iter_bytes():
                for event in decoder.feed(data):
                    obj = parse_sse_event(event)
                    if obj is DONE:
                        return
                    yield obj
            for event in decoder.flush():
                if parse_sse_event(event) is DONE:
                    return
                raise StreamError("stream ended with an unterminated event")
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc
        raise StreamError("stream ended before [DONE]: the answer is incomplete")

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class AsyncHTTPTransport(_RemoteBase, AsyncBaseTransport):
    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=self.timeout)

    async def handle_async_request(self, request: ChatRequest) -> AsyncTransportResponse:
        content = self._body(request)
        headers = self._headers(request)
        timeout, retries = self._limits(request)
        attempt = 0
        while True:
            retry_headers: Mapping[str, str] | None = None
            for base_url in self._plan():
                retry_headers = None
                try:
                    response = await self._client.send(
                        self._client.build_request("POST", f"{base_url}/{request.endpoint}", content=content, headers=headers, timeout=timeout),
                        stream=True,
                    )
                except httpx.HTTPError as exc:
                    error: APIError = self._connection_error(exc)
                else:
                    if response.is_success and request.stream:  # from here on, never replayed
                        return AsyncTransportResponse(
                            events=AsyncChunkStream(self._events(response), response.aclose), status_code=response.status_code, headers=response.headers
                        )
                    try:
                        body_bytes = await response.aread()
                    except httpx.HTTPError as exc:
                        error = self._connection_error(exc)
                    else:
                        outcome = self._outcome(base_url, response, body_bytes)
                        if not isinstance(outcome, APIError):
                            return AsyncTransportResponse(body=outcome, status_code=response.status_code, headers=response.headers)
                        error, retry_headers = outcome, response.headers
                    finally:
                        await response.aclose()
                if not self._failed(base_url, error):
                    break
            delay = self._before_retry(attempt, retries, error, retry_headers)
            await _async_sleep(delay)
            attempt += 1

    async def _events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        try:
            async for data in response.aiter_bytes():
                for event in decoder.feed(data):
                    obj = parse_sse_event(event)
                    if obj is DONE:
                        return
                    yield obj
            for event in decoder.flush():
                if parse_sse_event(event) is DONE:
                    return
                raise StreamError("stream ended with an unterminated event")
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc
        raise StreamError("stream ended before [DONE]: the answer is incomplete")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
