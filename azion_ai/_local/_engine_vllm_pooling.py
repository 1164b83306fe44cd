"""``engine="vllm"`` for the retrieval models: vLLM's pooling runner (``AsyncLLM.encode``) in
this process, on an event-loop thread of its own, as the chat engine runs ``generate``.

The request side is ours (_pooling: the same token ids the transformers engine gets); vLLM runs
the forward passes and its poolers: Qwen3-Embedding converted to an embedding model (last token,
normalised, ``dimensions`` through Matryoshka, as Azion's page offers it), bge-reranker-v2-m3 as a
sequence classifier with its sigmoid. The answers are shaped by the same code as the other engine's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from .._exceptions import LocalBackendError, MissingDependencyError, ModelLoadError
from ._engine_vllm import _START_TIMEOUT, CPU_KV_CACHE_BYTES, _check_device, _platform, import_vllm
from ._pooling import PoolingCheckpoint, PoolingJob, respond
from ._request import Done, Failed, Started

log = logging.getLogger("azion_ai")


def pooling_arguments(checkpoint: PoolingCheckpoint, max_model_len: int, engine_options: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's engine arguments for a retrieval model: the pooling runner, the embedding
    conversion and Matryoshka for Qwen3-Embedding (``is_matryoshka``, what serving ``dimensions``
    needs), then the caller's options."""
    import os

    from vllm.engine.arg_utils import AsyncEngineArgs

    args: dict[str, Any] = {
        "model": str(checkpoint.path),
        "tokenizer": str(checkpoint.path),
        "served_model_name": [checkpoint.model_id],
        "max_model_len": max_model_len,
        "runner": "pooling",
        "trust_remote_code": False,
        "disable_log_stats": True,
    }
    if checkpoint.kind == "embeddings":
        args.update(convert="embed", hf_overrides={"is_matryoshka": True})
    if _platform() == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and not {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(engine_options):
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES  # as the chat engine: not 92% of the machine
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(engine_options) - known)
    if unknown:
        raise ValueError(f"engine_options: {', '.join(unknown)} {'is not a vLLM engine argument' if len(unknown) == 1 else 'are not vLLM engine arguments'} (see vLLM's AsyncEngineArgs)")
    args.update(engine_options)
    return args


class VLLMPoolingEngine:
    """vLLM's AsyncLLM (pooling runner) for one retrieval model."""

    name = "vllm"

    def __init__(self, checkpoint: PoolingCheckpoint, device: str, max_model_len: int, engine_options: Mapping[str, Any]) -> None:
        import_vllm()
        _check_device(device)
        self._checkpoint = checkpoint
        self.arguments = pooling_arguments(checkpoint, max_model_len, engine_options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"azion-ai-vllm-{checkpoint.model_id}", daemon=True)
        self._thread.start()
        self._running: set[concurrent.futures.Future[None]] = set()
        self._running_lock = threading.Lock()
        self._stopped = False
        try:
            self._engine: Any = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(_START_TIMEOUT)
        except BaseException as exc:
            self._end_loop()
            if not isinstance(exc, Exception) or isinstance(exc, (ModelLoadError, MissingDependencyError)):
                raise
            lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
            reason = "; ".join(lines)[:500] or type(exc).__name__
            raise ModelLoadError(f"vLLM could not start {checkpoint.model_id!r} from {str(checkpoint.path)!r}: {reason}") from exc
        log.info("vLLM pooling engine for %s: max_model_len %d", checkpoint.model_id, int(self._engine.model_config.max_model_len))

    async def _start(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**self.arguments))

    @property
    def checkpoint(self) -> PoolingCheckpoint:
        return self._checkpoint

    @property
    def alive(self) -> bool:
        return not self._stopped and not self._engine.errored

    def submit(self, job: PoolingJob) -> None:
        if self._stopped:
            raise LocalBackendError(f"the vLLM engine for {self._checkpoint.model_id!r} has stopped (backend closed?)")
        future = asyncio.run_coroutine_threadsafe(self._run(job), self._loop)
        with self._running_lock:
            self._running.add(future)
        future.add_done_callback(self._finished)
        job.on_cancel(future.cancel)

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
            await asyncio.sleep(0)
            self._engine.shutdown()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(60)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:  # pragma: no cover
            log.warning("vLLM engine for %s did not shut down cleanly: %s", self._checkpoint.model_id, exc)
        self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    async def _encode(self, prompt: tuple[int, ...], params: Any) -> Any:
        final = None
        async for out in self._engine.encode({"prompt_token_ids": list(prompt)}, params, f"azion-{uuid.uuid4().hex}"):
            final = out
        if final is None:
            raise LocalBackendError("vLLM ended the request without any output")
        return final.outputs.data

    async def _run(self, job: PoolingJob) -> None:
        from vllm import PoolingParams

        request = job.request
        try:
            if job.cancelled.is_set():
                job.emit(Failed(LocalBackendError("request was cancelled before it started")))
                return
            params = PoolingParams(task=request.task, dimensions=request.dimensions) if request.task == "embed" else PoolingParams(task=request.task)
            job.emit(Started(request.prompt_tokens))
            tensors = await asyncio.gather(*(self._encode(p, params) for p in request.prompts))
            if request.task == "embed":
                outputs: list[Any] = [t.float().tolist() for t in tensors]
            else:
                outputs = [float(t.float().reshape(-1)[0]) for t in tensors]
            job.emit(Done(respond(request, outputs)))
        except asyncio.CancelledError:
            job.emit(Failed(LocalBackendError("request was cancelled")))
        except Exception as exc:  # noqa: BLE001 - every failure goes to the caller
            if self._engine.errored:
                exc = LocalBackendError(f"the vLLM engine for {request.model.id!r} stopped ({type(exc).__name__}); the next request starts a new one")
            job.emit(Failed(exc))
