"""``engine="vllm"`` for the retrieval models: vLLM's pooling runner (``AsyncLLM.encode``) in
this process, on an event-loop thread of its own, as the chat engine runs ``generate``.

The request side is ours (_pooling: the same token ids the transformers engine gets); vLLM runs
the forward passes and its poolers: Qwen3-Embedding converted to an embedding model (last token,
normalised, ``dimensions`` through Matryoshka, as Azion's page offers it), bge-reranker-v2-m3 as a
sequence classifier with its sigmoid. The answers are shaped by the same code as the other engine's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from .._exceptions import LocalBackendError
from ._engine_vllm import CPU_KV_CACHE_BYTES, AsyncLLMHost, _check_device, _platform, import_vllm
from ._pooling import PoolingCheckpoint, PoolingJob, respond
from ._request import Done, Started

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


class VLLMPoolingEngine(AsyncLLMHost):
    """vLLM's AsyncLLM (pooling runner) for one retrieval model."""

    def __init__(self, checkpoint: PoolingCheckpoint, device: str, max_model_len: int, engine_options: Mapping[str, Any]) -> None:
        import_vllm()
        _check_device(device)
        self._checkpoint = checkpoint
        super().__init__(checkpoint.model_id, checkpoint.path, pooling_arguments(checkpoint, max_model_len, engine_options))
        log.info("vLLM pooling engine for %s: max_model_len %d", checkpoint.model_id, int(self._engine.model_config.max_model_len))

    @property
    def checkpoint(self) -> PoolingCheckpoint:
        return self._checkpoint

    async def _encode(self, prompt: tuple[int, ...], params: Any) -> Any:
        final = None
        async for out in self._engine.encode({"prompt_token_ids": list(prompt)}, params, f"azion-{uuid.uuid4().hex}"):
            final = out
        if final is None:
            raise LocalBackendError("vLLM ended the request without any output")
        return final.outputs.data

    async def _serve(self, job: PoolingJob) -> None:
        from vllm import PoolingParams

        request = job.request
        params = PoolingParams(task=request.task, dimensions=request.dimensions) if request.task == "embed" else PoolingParams(task=request.task)
        job.emit(Started(request.prompt_tokens))
        tensors = await asyncio.gather(*(self._encode(p, params) for p in request.prompts))
        if request.task == "embed":
            outputs: list[Any] = [t.float().tolist() for t in tensors]
        else:
            outputs = [float(t.float().reshape(-1)[0]) for t in tensors]
        job.emit(Done(respond(request, outputs)))
