"""An OpenAI-compatible HTTP server in front of the local backend (starlette; run by uvicorn).

``POST /v1/chat/completions`` (whole or SSE ending ``data: [DONE]``), ``POST /v1/embeddings``,
``/v1/rerank`` and ``/v1/score`` (the retrieval models), ``GET /v1/models`` and ``GET /health``.
Payloads are validated with the same per-model schemas as ``ai.run``; errors use OpenAI's JSON
error shape with the matching status. Every answer carries ``x-request-id``. A client that
disconnects mid-stream stops its generation.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ._client import AsyncAI
from ._exceptions import (
    AzionAIError,
    ImageError,
    LocalBackendError,
    ModelLoadError,
    UnknownModelError,
    ValidationError,
)
from ._models import get_model

log = logging.getLogger("azion_ai.server")

DEFAULT_MAX_BODY = 32 * 1024 * 1024


def _error(status: int, message: str, *, type_: str, param: str | None = None, code: Any = None) -> Any:
    from starlette.responses import JSONResponse

    # a message may quote the request (a model name); a lone surrogate there could not be encoded
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


REQUEST_ID_HEADER = b"x-request-id"

# What the routes OpenAI clients try next would do here, and what to use instead (docs/serving.md).
_ROUTES_NOT_SERVED = {
    "/v1/completions": "the legacy completions API is not served: Azion's chat models answer through "
    "POST /v1/chat/completions (llama-index: OpenAILike(..., is_chat_model=True); LangChain: ChatOpenAI)",
    "/v1/responses": "the Responses API is not served: Azion's models answer through POST /v1/chat/completions "
    "(openai-python: client.chat.completions.create)",
}


class _RequestIds:
    """ASGI middleware: every answer (whole, streamed, or an error) carries ``x-request-id``, the
    client's own when it sent one (as vLLM's ``--enable-request-id-headers``), else a new one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = [value for name, value in scope.get("headers", ()) if name.lower() == REQUEST_ID_HEADER]
        request_id = sent[0] if sent and sent[0] else uuid.uuid4().hex.encode()

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _ModelState:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: BaseException | None = None


class ChatServer:
    """The app and its state: which models are served, their loading, the API key."""

    def __init__(
        self,
        models: Mapping[str, str],
        *,
        device: str = "auto",
        api_key: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        preload: bool = True,
        client: AsyncAI | None = None,
        **local_options: Any,
    ) -> None:
        for model_id in models:
            get_model(model_id)  # unknown ids fail at start-up, not on the first request
        self.models = dict(models)
        self._api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.client = client or AsyncAI(backend="local", models=self.models, device=device, **local_options)
        self.created = int(time.time())
        self.states = {m: _ModelState() for m in self.models}
        self.app = self._build_app()
        if preload:
            threading.Thread(target=self._load_all, name="azion-ai-preload", daemon=True).start()
        else:
            for state in self.states.values():
                state.ready.set()

    def __repr__(self) -> str:
        return f"ChatServer(models={sorted(self.models)})"

    def _load_all(self) -> None:
        backend = self.client.transport
        for model_id, state in self.states.items():
            try:
                backend.load(model_id)
            except BaseException as exc:  # noqa: BLE001 - reported by /health and to requests
                state.error = exc
                log.error("loading %s failed: %s", model_id, exc)
            finally:
                state.ready.set()

    def _build_app(self) -> Any:
        import contextlib

        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            yield
            await self.client.aclose()

        from starlette.exceptions import HTTPException

        async def http_error(request: Any, exc: Any) -> Any:
            """Unknown routes and methods answer in OpenAI's error shape too, not plain text."""
            status = getattr(exc, "status_code", 500)
            if status == 404:
                path = request.url.path.rstrip("/")
                why = _ROUTES_NOT_SERVED.get(path, "see docs/serving.md for the routes served")
                return _error(404, f"no route {request.method} {request.url.path}: {why}", type_="not_found_error")
            if status == 405:
                return _error(405, f"{request.method} is not allowed on {request.url.path}", type_="invalid_request_error")
            return _error(status, str(getattr(exc, "detail", "error")), type_="invalid_request_error")

        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                *self._retrieval_routes(),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: http_error},
            middleware=[Middleware(_RequestIds)],
            lifespan=lifespan,
        )

    # -- handlers -------------------------------------------------------------------------------

    def _unauthorized(self, request: Any) -> Any:
        if not self._api_key:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        import hmac

        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self._api_key.encode()):
            return _error(401, "missing or invalid API key (send Authorization: Bearer <key>)", type_="authentication_error", code="invalid_api_key")
        return None

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        loading = [m for m, s in self.states.items() if not s.ready.is_set()]
        failed = {m: str(s.error) for m, s in self.states.items() if s.error is not None}
        status = "loading" if loading else ("error" if failed else "ok")
        code = 200 if status == "ok" else 503
        return JSONResponse({"status": status, "loading": loading, "failed": failed}, status_code=code)

    async def list_models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [self._model_card(m) for m in self.models]})

    def _model_card(self, model_id: str) -> dict[str, Any]:
        info = get_model(model_id)
        backend = self.client.transport
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "azion",
            "root": info.hf_repo or model_id,
            "max_model_len": backend.max_model_len or info.context_length,
        }

    async def get_model(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        model_id = request.path_params["model_id"]
        if model_id not in self.models:
            return _error(404, f"model {model_id!r} is not served here", type_="not_found_error", param="model", code="model_not_found")
        return JSONResponse(self._model_card(model_id))

    async def _read_body(self, request: Any) -> bytes | Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            return _error(413, f"request body is larger than {self.max_body_bytes} bytes", type_="invalid_request_error")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > self.max_body_bytes:
                return _error(413, f"request body is larger than {self.max_body_bytes} bytes", type_="invalid_request_error")
        return bytes(body)

    async def _model_and_payload(self, request: Any) -> tuple[str, dict[str, Any]] | Any:
        """The checks every route makes first, as vLLM's server does: the token, the body (size,
        JSON, an object) and its ``model`` (the one served when absent); an error response or
        ``(model id, payload without "model")``."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        raw = await self._read_body(request)
        if not isinstance(raw, bytes):
            return raw
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"request body is not valid JSON: {exc}", type_="invalid_request_error")
        except RecursionError:
            return _error(400, "request body is nested too deeply", type_="invalid_request_error")
        if not isinstance(payload, dict):
            return _error(400, "request body must be a JSON object", type_="invalid_request_error")
        model_id = payload.pop("model", None)
        served = ", ".join(sorted(self.models))
        if model_id is None and len(self.models) == 1:
            model_id = next(iter(self.models))  # as vLLM: no model means the one served
        elif model_id is None:
            return _error(400, f"\"model\" is required: name one of the served models ({served})", type_="invalid_request_error", param="model", code="missing_required_parameter")
        elif not isinstance(model_id, str):
            return _error(400, f"\"model\" must be a string naming a served model ({served})", type_="invalid_request_error", param="model", code="invalid_type")
        if model_id not in self.models:
            return _error(404, f"model {model_id!r} is not served here; served: {served}", type_="not_found_error", param="model", code="model_not_found")
        return model_id, payload

    async def chat_completions(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        parsed = await self._model_and_payload(request)
        if not isinstance(parsed, tuple):
            return parsed
        model_id, payload = parsed
        result, failed = await self._answer(request, model_id, payload)
        if failed is not None:
            return failed
        if not payload.get("stream"):
            return JSONResponse(result.model_dump(mode="json"))  # type: ignore[union-attr]
        return StreamingResponse(self._sse(result), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _answer(self, request: Any, model_id: str, payload: dict[str, Any]) -> tuple[Any, Any]:
        """``(the model's answer, None)``, or ``(None, an error response)``: the model still
        loading or failed to load, the request failed, or the client left before the answer
        (nobody to send it to)."""
        state = self.states[model_id]
        if not state.ready.is_set():
            return None, _error(503, f"model {model_id!r} is still loading; retry shortly", type_="service_unavailable", code="model_loading")
        if state.error is not None:
            return None, _error(503, f"model {model_id!r} failed to load: {state.error}", type_="service_unavailable", code="model_load_failed")
        try:
            result = await self._run_until_disconnect(request, model_id, payload)
        except BaseException as exc:
            return None, self._exception_response(exc)
        if result is None:
            return None, _error(499, "client disconnected", type_="invalid_request_error")
        return result, None

    async def _run_until_disconnect(self, request: Any, model_id: str, payload: dict[str, Any]) -> Any:
        """``client.run``, cancelled if the client disconnects before a whole (non-stream) answer
        is ready: the generation is aborted and the model's worker freed, as for a stream."""
        import asyncio

        task = asyncio.ensure_future(self.client.run(model_id, payload))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.1)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    log.info("client disconnected: request for %s aborted", model_id)
                    return None
        finally:
            if not task.done():
                task.cancel()

    async def _sse(self, stream: Any) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                # the fields the engine set, as vLLM sends them (a content delta has no "role")
                yield b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        except AzionAIError as exc:
            error = {"error": {"message": str(exc), "type": type(exc).__name__, "param": None, "code": None}}
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            await stream.aclose()  # a disconnect cancels this generator: generation stops here

    # -- retrieval: /v1/embeddings, /v1/rerank, /v1/score (vLLM's pooling endpoints) -------------

    def _retrieval_routes(self) -> list[Any]:
        from starlette.routing import Route

        async def embeddings(request: Any) -> Any:
            return await self._retrieval(request, "embeddings")

        async def rerank(request: Any) -> Any:
            return await self._retrieval(request, "rerank")

        async def score(request: Any) -> Any:
            return await self._retrieval(request, "score")

        return [
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/rerank", rerank, methods=["POST"]),
            Route("/v1/score", score, methods=["POST"]),
        ]

    async def _retrieval(self, request: Any, route: str) -> Any:
        """One retrieval request: the same checks as a chat request's, then the route must fit
        the model (embeddings for an embedding model; rerank and score for a reranker, each with
        its own payload shape)."""
        from starlette.responses import JSONResponse

        from ._models import endpoint

        parsed = await self._model_and_payload(request)
        if not isinstance(parsed, tuple):
            return parsed
        model_id, payload = parsed
        info = get_model(model_id)
        if info.kind != ("embeddings" if route == "embeddings" else "rerank"):
            return _error(400, f"model {model_id!r} ({info.kind}) does not answer /v1/{route}", type_="invalid_request_error", param="model")
        if route != "embeddings" and endpoint(info, payload) != route:
            shape = "{query, documents}" if route == "rerank" else "{text_1, text_2}"
            return _error(400, f"/v1/{route} takes {shape}", type_="invalid_request_error")
        result, failed = await self._answer(request, model_id, payload)
        if failed is not None:
            return failed
        return JSONResponse(result.model_dump(mode="json"))

    def _exception_response(self, exc: BaseException) -> Any:
        if isinstance(exc, ValidationError):
            first = exc.issues[0].path if exc.issues else None
            return _error(400, str(exc), type_="invalid_request_error", param=first)
        if isinstance(exc, UnknownModelError):
            return _error(404, str(exc), type_="not_found_error", param="model")
        if isinstance(exc, ImageError):
            return _error(400, str(exc), type_="invalid_request_error", param=exc.path)
        if isinstance(exc, ModelLoadError):
            return _error(503, str(exc), type_="service_unavailable")
        if isinstance(exc, LocalBackendError):
            return _error(500, str(exc), type_="internal_error")
        if isinstance(exc, Exception):
            log.exception("unexpected error")
            return _error(500, f"internal error: {type(exc).__name__}", type_="internal_error")
        raise exc


def create_app(models: Mapping[str, str], **kwargs: Any) -> Any:
    """The ASGI app serving ``models`` (model id -> weights directory) with the local backend."""
    return ChatServer(models, **kwargs).app


def serve(models: Mapping[str, str], *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **kwargs: Any) -> None:
    """Run the server until interrupted. Binds to loopback unless ``host`` says otherwise."""
    try:
        import uvicorn
    except ImportError:
        from ._exceptions import MissingDependencyError

        raise MissingDependencyError("serving needs the 'server' extra: pip install 'azion-ai[server]'") from None
    server = ChatServer(models, **kwargs)
    uvicorn.run(server.app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """Serve an app from a thread on a loopback port picked by the OS (demos and tests)."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import socket

        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self.host = host
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
