"""The local backend: a transport that answers ``ai.run`` with the model running in this process.

It is a peer of the HTTP transport: it takes the same validated ``ChatRequest`` and returns the
same completion dicts and chunk streams, so ``AI`` / ``AsyncAI`` never tell the two apart.
Nothing here imports torch until a model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .._exceptions import (
    APITimeoutError,
    LocalBackendError,
    ModelLoadError,
    ValidationError,
    ValidationIssue,
)
from .._models import ModelInfo, get_model
from .._transport import (
    AsyncBaseTransport,
    AsyncChunkStream,
    AsyncTransportResponse,
    BaseTransport,
    ChatRequest,
    ChunkStream,
    TransportResponse,
)
from .._validation import lone_surrogate_issue
from ._chat import render_prompt
from ._constraints import STRICT_LEVELS, GrammarSpec
from ._engine import ENGINES, Engine
from ._engine_transformers import TransformersOptions
from ._images import ImageLoader, ImagePolicy
from ._loading import AWQ_KERNELS
from ._pooling import POOLING_KINDS, PoolingEngine, PoolingJob
from ._request import (
    Chunk,
    Done,
    Event,
    Failed,
    ImageLimits,
    Job,
    PreparedRequest,
    SamplingParams,
    Started,
)
from ._response import one_choice_each

log = logging.getLogger("azion_ai")
progress = logging.getLogger("azion_ai.progress")  # loading, compiling, warming up: shown by `azion-ai serve`
EngineT = TypeVar("EngineT", Engine, PoolingEngine)
# One model loads at a time in a process: transformers' from_pretrained patches module-level
# state while it builds a model, so two loads on two threads (two models' first requests at once)
# can leave the next model's weights untied.
_LOADING = threading.Lock()

ENV_MODELS_DIR = "AZION_AI_MODELS_DIR"
# Parameters that change an answer and that the local backend does not implement: refused with a
# clear error rather than ignored (docs/parameters.md). Others it does not use (user, metadata,
# store, service_tier) do not change an answer and pass.
NOT_HONOURED = {
    "functions": "the deprecated 'functions' are not supported; send 'tools'",
    "function_call": "the deprecated 'function_call' is not supported; send 'tool_choice'",
    "best_of": "is not supported by the local backend; use 'n'",
    "prediction": "predicted outputs are not supported by the local backend",
    "audio": "audio output is not supported by these models",
    "modalities": "only text output is supported by these models; remove 'modalities'",
    "min_tokens": "is not supported by the local backend",
    "ignore_eos": "is not supported by the local backend",
    "stop_token_ids": "is not supported by the local backend; use 'stop' strings",
    "echo": "is not supported by the local backend",
    "guided_json": "use response_format {\"type\": \"json_schema\"}",
    "guided_regex": "regular-expression guidance is not supported by the local backend",
    "guided_grammar": "grammar guidance is not supported by the local backend",
    "guided_choice": "choice guidance is not supported by the local backend",
    "structured_outputs": "use response_format or tool_choice",
}


class LocalTransport(BaseTransport, AsyncBaseTransport):
    """Runs Azion's models from local weight directories, on an engine: transformers (AWQ through
    gptqmodel; the default) or vLLM's own (``engine="vllm"``).

    ``models`` maps model ids to directories; otherwise ``$AZION_AI_MODELS_DIR/<model_id>`` is
    used. Models load on first use (or :meth:`load`) and stay loaded until :meth:`close`.
    """

    backend_name = "local"

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike[str]] | None = None,
        device: str = "auto",
        *,
        image_policy: ImagePolicy | None = None,
        max_image_pixels: int | None = None,
        min_image_pixels: int | None = None,
        max_image_tiles: int | None = None,
        max_model_len: int | None = None,
        chat_template: str | os.PathLike[str] | None = None,
        max_n: int = 16,
        lora_adapters: Mapping[str, str | os.PathLike[str]] | None = None,
        lora: str | None = None,
        static_cache: bool = False,
        compile: bool = False,
        max_batch_size: int | None = None,
        awq_kernel: str | None = None,
        fast_decode: bool = True,
        any_whitespace: bool = True,
        tool_strict_level: str = "auto",
        image_loader: ImageLoader | None = None,
        engine: str = "transformers",
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise ValueError(f"device must be 'cuda', 'cpu' or 'auto', got {device!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
        self.device = device
        # What runs the weights: "transformers" (our token step, the default) or "vllm" (vLLM's
        # engine in this process; engine_options are its engine arguments, e.g.
        # tensor_parallel_size, gpu_memory_utilization, max_num_seqs).
        self.engine = engine
        if engine_options and engine != "vllm":
            raise ValueError("engine_options are vLLM's engine arguments: pass them with engine='vllm'")
        self.engine_options = dict(engine_options or {})
        if engine == "vllm":
            tuned = {
                "static_cache": static_cache, "compile": compile, "max_batch_size": max_batch_size is not None,
                "awq_kernel": awq_kernel is not None, "fast_decode": not fast_decode,
            }
            given = [name for name, changed in tuned.items() if changed]
            if given:
                raise ValueError(
                    f"{', '.join(given)} tune the transformers engine; vLLM batches, caches and picks its kernels itself "
                    "(pass vLLM's own settings in engine_options)"
                )
        self._paths = {k: Path(v).expanduser() for k, v in (models or {}).items()}
        self.images = image_loader or ImageLoader(image_policy)
        # Image budgets: None keeps the checkpoint's own preprocessor bounds, as vLLM does
        # (Qwen2.5-VL: up to 12,845,056 pixels, 16,384 tokens an image; InternVL3: 12 tiles).
        self.image_limits = ImageLimits(max_image_pixels, min_image_pixels, max_image_tiles)
        # The context length (prompt + output), like vLLM's --max-model-len; None: the model's
        # context length from the registry (Azion's page).
        if max_model_len is not None and max_model_len < 1:
            raise ValueError("max_model_len must be >= 1")
        self.max_model_len = max_model_len
        # A chat template for every request (template text or a .jinja file), like vLLM's
        # --chat-template; None renders as vLLM does by default (see docs/conformance.md).
        self.chat_template = _read_template(chat_template)
        self.max_n = max_n
        self.lora_adapters = {name: Path(p).expanduser() for name, p in (lora_adapters or {}).items()}
        if lora is not None and lora not in self.lora_adapters:
            raise ValueError(f"lora={lora!r} is not among lora_adapters ({', '.join(sorted(self.lora_adapters)) or 'none'})")
        self.default_lora = lora
        # Decode-path speed options: max_batch_size rows (a request's n choices each count) decode
        # together, requests joining and leaving between steps (None: 8); a static KV cache, and
        # torch.compile of the decoding step on top of it (on CUDA in "reduce-overhead" mode,
        # i.e. replayed as CUDA graphs), AWQ models included, one request at a time. awq_kernel
        # picks gptqmodel's kernel for AWQ layers. fast_decode=False: requests without
        # per-request parts run through transformers' generate() (a reference path).
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if awq_kernel is not None and awq_kernel not in AWQ_KERNELS:
            raise ValueError(f"awq_kernel must be one of {', '.join(AWQ_KERNELS)} (or None), got {awq_kernel!r}")
        self.awq_kernel = awq_kernel
        # How far tool calls are constrained, as vLLM's --tool-strict-level: "auto" (forced
        # tool_choice, and strict tools), "function" (every call's envelope), "parameter" (and
        # every tool's arguments, as if each were strict).
        if tool_strict_level not in STRICT_LEVELS:
            raise ValueError(f"tool_strict_level must be one of {', '.join(STRICT_LEVELS)}, got {tool_strict_level!r}")
        self.tool_strict_level = tool_strict_level
        # JSON from response_format / forced tool_choice may hold any whitespace between tokens
        # (vLLM's default); False allows none, so a weak model cannot pad its answer with
        # whitespace until max_tokens (vLLM: structured_outputs disable_any_whitespace).
        self.any_whitespace = any_whitespace
        self.transformers_options = TransformersOptions(
            static_cache=static_cache, compile=compile, fast_decode=fast_decode, any_whitespace=any_whitespace,
            **({"max_batch_size": max_batch_size} if max_batch_size is not None else {}),
        )
        self._engines: dict[str, Engine] = {}
        self._poolers: dict[str, PoolingEngine] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"LocalTransport(engine={self.engine!r}, device={self.device!r}, models={sorted(self._paths) or 'from ' + ENV_MODELS_DIR})"

    @property
    def extra_url_schemes(self) -> tuple[str, ...]:
        return ("file",) if self.images.policy.allowed_local_dir else ()

    # -- loading ------------------------------------------------------------------------------

    def model_path(self, model_id: str) -> Path:
        if model_id in self._paths:
            return self._paths[model_id]
        root = os.environ.get(ENV_MODELS_DIR)
        if root:
            return Path(root).expanduser() / model_id
        raise ModelLoadError(
            f"no weights configured for {model_id!r}: pass AI(backend='local', models={{{model_id!r}: '/path'}}) "
            f"or set {ENV_MODELS_DIR} to a directory holding {model_id}/"
        )

    def load(self, model_id: str) -> None:
        """Load ``model_id`` now rather than on its first request."""
        model = get_model(model_id)
        if model.kind in POOLING_KINDS:
            self._pooler_for(model)
        else:
            self._engine_for(model)

    @staticmethod
    def _runs_here(model: ModelInfo) -> None:
        """Chat models of a family this backend has (Qwen2.5-VL, InternVL3) and the retrieval
        models (Qwen3-Embedding, bge-reranker-v2-m3) run locally; any other catalogue model is an
        error before anything loads."""
        if model.kind in POOLING_KINDS:
            return
        if model.kind != "chat" or model.family is None:
            raise LocalBackendError(
                f"{model.id!r} is a model whose architecture the local backend does not have: it runs the Qwen2.5-VL "
                "family, InternVL3, Qwen3-Embedding and bge-reranker-v2-m3. "
                "Use the remote backend for it: AI(base_url='https://<app>.map.azionedge.net/v1')"
            )

    def _engine_for(self, model: ModelInfo) -> Engine:
        """The chat model's engine, started (and its weights loaded) on first use, once."""
        self._runs_here(model)
        return self._started(model, self._engines, self._start_engine)

    def _pooler_for(self, model: ModelInfo) -> PoolingEngine:
        """The retrieval model's engine, started on first use, once."""
        return self._started(model, self._poolers, self._start_pooler)

    def _started(self, model: ModelInfo, engines: dict[str, EngineT], start: Callable[[ModelInfo], EngineT]) -> EngineT:
        if self._closed:
            raise LocalBackendError("this local backend is closed")
        engine = engines.get(model.id)
        if engine is not None and engine.alive:
            return engine
        with self._lock:
            lock = self._load_locks.setdefault(model.id, threading.Lock())
        with lock:
            engine = engines.get(model.id)
            if engine is not None and not engine.alive:  # it died: free what it holds, start anew
                log.warning("the %s engine for %s stopped; starting a new one", engine.name, model.id)
                engines.pop(model.id, None)
                with contextlib.suppress(Exception):
                    engine.stop()
                engine = None
            if engine is None:
                with _LOADING:
                    engine = start(model)
                engines[model.id] = engine
        return engine

    def _start_pooler(self, model: ModelInfo) -> PoolingEngine:
        from ._pooling import load_pooling_checkpoint

        checkpoint = load_pooling_checkpoint(model.id, model.kind, self.model_path(model.id))
        if self.engine == "vllm":
            from ._engine_vllm_pooling import VLLMPoolingEngine

            max_model_len = checkpoint.context_length(self.max_model_len or model.context_length)
            return VLLMPoolingEngine(checkpoint, self.device, max_model_len, dict(self.engine_options))
        from ._engine_pooling import TransformersPoolingEngine

        return TransformersPoolingEngine(checkpoint, self.device)

    def _start_engine(self, model: ModelInfo) -> Engine:
        assert model.family is not None  # _runs_here checked it
        path = self.model_path(model.id)
        if self.engine == "vllm":
            from ._engine_vllm import VLLMEngine, VLLMSettings
            from ._loading import load_checkpoint

            checkpoint = load_checkpoint(model.id, model.family, path)
            settings = VLLMSettings(
                device=self.device,
                max_model_len=self.max_model_len or model.context_length,
                any_whitespace=self.any_whitespace,
                lora_adapters=dict(self.lora_adapters),
                engine_options=dict(self.engine_options),
            )
            return VLLMEngine(checkpoint, settings)
        from ._engine_transformers import TransformersEngine
        from ._loading import load_model

        began = time.monotonic()
        progress.info("%s: loading the weights from %s", model.id, path)
        loaded = load_model(model.id, model.family, path, self.device, self.awq_kernel)
        engine = TransformersEngine(loaded, self.transformers_options)
        progress.info("%s: ready on %s in %.1f s", model.id, loaded.device, time.monotonic() - began)
        return engine

    def close(self) -> None:
        """Stop the engines and free the models' memory."""
        self._closed = True
        engines, self._engines = self._engines, {}
        poolers, self._poolers = self._poolers, {}
        running: list[Engine | PoolingEngine] = [*engines.values(), *poolers.values()]
        for engine in running:
            engine.stop()
        del engines, poolers, running
        gc.collect()
        try:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    # -- requests -----------------------------------------------------------------------------

    def _submission(self, request: ChatRequest, emit: Callable[[Event], None]) -> tuple[Callable[[], None], Job | PoolingJob]:
        """The job for this request (chat or retrieval) and the call that hands it to its engine."""
        if request.model.kind in POOLING_KINDS:
            pooler, pooling_job = self._pooling_job(request, emit)
            return functools.partial(pooler.submit, pooling_job), pooling_job
        engine, job = self._job(request, emit)
        return functools.partial(engine.submit, job), job

    def _job(self, request: ChatRequest, emit: Callable[[Event], None]) -> tuple[Engine, Job]:
        """Everything that can fail before a model runs (checks, loading, rendering, images)."""
        model = request.model
        payload = request.payload
        self._runs_here(model)
        if request.extra_headers:
            raise LocalBackendError("extra_headers apply to HTTP requests; the local backend sends none (use the remote backend)")
        surrogate = lone_surrogate_issue(payload)  # validation finds it first; this is validate=False
        if surrogate is not None:
            raise ValidationError(model.id, [surrogate])
        n = payload.get("n", 1)
        if isinstance(n, int) and n > self.max_n:
            raise ValidationError(model.id, [ValidationIssue("n", f"{n} choices is over this backend's limit of {self.max_n} (max_n)")])
        lora = request.lora if request.lora is not None else self.default_lora
        adapter = None
        if lora is not None:
            if lora not in self.lora_adapters:
                known = ", ".join(sorted(self.lora_adapters)) or "none configured"
                raise LocalBackendError(f"unknown LoRA adapter {lora!r} (configured: {known}); pass AI(..., lora_adapters={{name: dir}})")
            adapter = (lora, self.lora_adapters[lora])
        max_model_len = self.max_model_len or model.context_length
        for name in ("max_completion_tokens", "max_tokens"):
            limit = payload.get(name)
            if isinstance(limit, int) and limit > max_model_len:
                raise ValidationError(
                    model.id, [ValidationIssue(name, f"{name}={limit} cannot be greater than the context length ({max_model_len} tokens)")]
                )
        refused = sorted(set(payload) & set(NOT_HONOURED))
        if refused:
            raise ValidationError(model.id, [ValidationIssue(name, NOT_HONOURED[name]) for name in refused])
        engine = self._engine_for(model)
        checkpoint = engine.checkpoint
        for token in payload.get("logit_bias") or {}:
            if int(token) >= checkpoint.vocab_size:
                raise ValidationError(
                    model.id, [ValidationIssue(f"logit_bias.{token}", f"token id {token} is outside the vocabulary ({checkpoint.vocab_size} tokens)")]
                )
        params = SamplingParams.resolve(payload, checkpoint.generation_defaults)
        if params.greedy and params.n > 1:
            raise ValidationError(model.id, [ValidationIssue("n", f"n must be 1 when using greedy sampling (temperature 0), got {params.n}")])
        templates = checkpoint.templates
        if self.chat_template is not None:
            templates = dataclasses.replace(templates, override=self.chat_template)
        choice = payload.get("tool_choice")
        tools = bool(payload.get("tools"))
        tool_mode = ("named" if isinstance(choice, Mapping) else str(choice or "auto")) if tools else "text"
        grammar = GrammarSpec.from_payload(payload, self.tool_strict_level, self.any_whitespace)
        try:
            prompt, image_refs = render_prompt(checkpoint.tokenizer, templates, payload["messages"], payload.get("tools"), checkpoint.image_placeholder)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:  # only with validate=False
            raise ValidationError(model.id, [ValidationIssue("messages", f"malformed payload ({type(exc).__name__}: {exc}); run with validation on to see every problem")]) from None
        except jinja2_errors() as exc:
            raise ValidationError(model.id, [ValidationIssue("messages", f"the chat template could not render these messages: {exc}")]) from None
        images = self.images.load_all(image_refs)
        prepared = PreparedRequest(
            model=model,
            prompt=prompt,
            images=tuple(images),
            params=params,
            stream=request.stream,
            max_model_len=max_model_len,
            tool_mode=tool_mode,
            grammar=grammar,
            adapter=adapter,
            image_limits=self.image_limits,
        )
        return engine, Job(prepared, emit)

    def _pooling_job(self, request: ChatRequest, emit: Callable[[Event], None]) -> tuple[PoolingEngine, PoolingJob]:
        """A retrieval request: checked and tokenized here (vLLM's refusals), run by the engine."""
        from ._pooling import prepare

        model = request.model
        if request.extra_headers:
            raise LocalBackendError("extra_headers apply to HTTP requests; the local backend sends none (use the remote backend)")
        if request.lora is not None:
            raise LocalBackendError(f"{model.id!r} takes no LoRA adapter (Azion serves it without); lora applies to chat models")
        if request.stream:
            raise ValidationError(model.id, [ValidationIssue("stream", f"{request.endpoint} answers are not streamed; remove 'stream'")])
        engine = self._pooler_for(model)
        prepared = prepare(engine.checkpoint, model, request.endpoint, request.payload, self.max_model_len or model.context_length)
        return engine, PoolingJob(prepared, emit)

    def handle_request(self, request: ChatRequest) -> TransportResponse:
        events: queue.Queue[Event] = queue.Queue()
        submit, job = self._submission(request, events.put)
        submit()

        def next_event() -> Event:
            """The job's next event; with a timeout, a stall cancels the job (freeing the worker)."""
            try:
                return events.get(timeout=request.timeout)
            except queue.Empty:
                job.cancel()
                raise APITimeoutError(f"the local backend gave nothing for {request.timeout} s; the request was cancelled") from None

        _expect(next_event(), Started)
        if not request.stream:
            return TransportResponse(body=_expect(next_event(), Done).body)

        def chunks() -> Iterator[dict[str, Any]]:
            while True:
                event = _expect(next_event(), Chunk, Done)
                if isinstance(event, Done):
                    return
                yield from one_choice_each(event.data)

        return TransportResponse(events=ChunkStream(chunks(), job.cancel))  # a job that ended ignores the cancel

    async def handle_async_request(self, request: ChatRequest) -> AsyncTransportResponse:
        call_soon = _threadsafe_scheduler()
        send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=math.inf)

        def deliver(item: Event) -> None:  # runs on the event loop's thread
            try:
                send.send_nowait(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                job.cancel()  # the caller stopped listening

        def emit(item: Event) -> None:  # runs on the engine's thread
            try:
                call_soon(deliver, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                job.cancel()

        def done() -> None:
            job.cancel()
            receive.close()
            send.close()

        # model loading and image fetching block: keep them off the event loop
        submit, job = await anyio.to_thread.run_sync(self._submission, request, emit)
        submit()

        async def next_event() -> Event:
            try:
                with anyio.fail_after(request.timeout):
                    return await receive.receive()
            except TimeoutError:
                raise APITimeoutError(f"the local backend gave nothing for {request.timeout} s; the request was cancelled") from None

        try:
            _expect(await next_event(), Started)
            if not request.stream:
                body = _expect(await next_event(), Done).body
                done()
                return AsyncTransportResponse(body=body)
        except BaseException:
            done()
            raise

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            while True:
                event = _expect(await next_event(), Chunk, Done)
                if isinstance(event, Done):
                    return
                for part in one_choice_each(event.data):
                    yield part

        async def release() -> None:
            done()

        return AsyncTransportResponse(events=AsyncChunkStream(chunks(), release))


def _threadsafe_scheduler() -> Callable[..., Any]:
    """``call_soon(fn, *args)`` onto the running event loop from another thread: asyncio's
    ``call_soon_threadsafe`` or trio's ``run_sync_soon``, so the async path runs under either."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]
        except RuntimeError:  # trio is imported, but this is not a trio run
            pass
    return asyncio.get_running_loop().call_soon_threadsafe


def _expect(event: Event, *kinds: type[Any]) -> Any:
    """The event, if it is one of ``kinds``; a :class:`Failed` raises its error as the SDK's own."""
    if isinstance(event, Failed):
        public = _public(event.error)
        raise public from (None if public is event.error else event.error)
    if not isinstance(event, kinds):
        raise LocalBackendError(f"the engine sent {type(event).__name__} where {' or '.join(k.__name__ for k in kinds)} was due")
    return event


def _public(exc: BaseException) -> BaseException:
    """Errors from the worker as the SDK's own: ours pass through, anything else is wrapped."""
    from .._exceptions import AzionAIError

    if isinstance(exc, AzionAIError):
        return exc
    message = str(exc).splitlines()[0] if str(exc) else ""
    if type(exc).__name__ == "OutOfMemoryError":
        return LocalBackendError(f"out of memory while generating; try fewer or smaller images or a lower max_tokens ({message[:200]})")
    return LocalBackendError(f"generation failed: {type(exc).__name__}: {message[:300]}")


# Templates shipped with azion_ai, by name: InternVL's own conversation ("internvl2_5", what its
# remote-code chat() uses) and the -hf layout's (images where they appear, no default system).
NAMED_TEMPLATES = {"internvl2_5": "internvl2_5.jinja", "internvl-hf": "internvl_hf.jinja", "qwen2.5-tools": "qwen25_tokenizer.jinja"}


def _read_template(template: str | os.PathLike[str] | None) -> str | None:
    """A chat template given as text, by name (NAMED_TEMPLATES), or as the path of a file holding
    it (.jinja or .json)."""
    if template is None:
        return None
    text = str(template)
    if text in NAMED_TEMPLATES:
        return (Path(__file__).with_name("templates") / NAMED_TEMPLATES[text]).read_text(encoding="utf-8")
    if "{" not in text:  # a path: templates always hold Jinja tags
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"chat_template: {text!r} is neither a Jinja template, a file, nor one of {', '.join(NAMED_TEMPLATES)}")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            import json

            text = json.loads(text)["chat_template"]
    return text


def jinja2_errors() -> tuple[type[BaseException], ...]:
    import jinja2

    return (jinja2.TemplateError,)
