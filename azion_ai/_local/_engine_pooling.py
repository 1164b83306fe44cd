"""The transformers engine for the retrieval models: batched forward passes, no token loop.

A worker thread owns the model. A request's prompts run in batches (longest first, right-padded,
up to a budget of padded tokens), each one forward pass:

- embeddings (Qwen3-Embedding): the base decoder's last hidden state at each prompt's last token
  (the ``<|endoftext|>`` its tokenizer appended), the first ``dimensions`` values kept, then
  L2-normalised, in float32;
- scores (bge-reranker-v2-m3): XLM-RoBERTa's sequence-classification logit for each pair, through
  a sigmoid.

Right padding keeps every real token's position and attention as in an unpadded run, so a
prompt's answer does not depend on what it is batched with.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from .._exceptions import LocalBackendError, ModelLoadError
from ._loading import _quiet, pick_device
from ._pooling import PoolingCheckpoint, PoolingJob, respond
from ._request import Done, Failed, Started

log = logging.getLogger("azion_ai")

BATCH_TOKENS = 16384
"""Padded tokens one forward pass may hold (a batch of short texts, or one long one)."""


def load_pooling_model(checkpoint: PoolingCheckpoint, device: str) -> tuple[Any, Any, Any]:
    """The weights on ``device``: (model, torch.device, dtype); a tensor the model needs that the
    directory lacks, or holds in another shape, fails the load with its name."""
    import transformers

    dev, dtype = pick_device(device)
    cls: Any = transformers.Qwen3Model if checkpoint.kind == "embeddings" else transformers.XLMRobertaForSequenceClassification
    if _quiet():
        transformers.utils.logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(
            str(checkpoint.path), dtype=dtype, device_map=str(dev), output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load {checkpoint.model_id!r} from {str(checkpoint.path)!r}: {exc}") from None
    missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]
    if missing or mismatched:
        problems = [f"missing {', '.join(sorted(missing)[:5])}" if missing else "", f"mis-shaped {', '.join(mismatched[:5])}" if mismatched else ""]
        raise ModelLoadError(f"{str(checkpoint.path)!r}: the weights do not fit the model ({'; '.join(p for p in problems if p)})")
    model.eval()
    log.info("loaded %s from %s on %s (%s)", checkpoint.model_id, checkpoint.path, dev, str(dtype).replace("torch.", ""))
    return model, dev, dtype


def batches(lengths: list[int], budget: int = BATCH_TOKENS) -> list[list[int]]:
    """Prompt indices grouped for forward passes: longest first, each group's padded size
    (members x the longest) within ``budget`` (a longer prompt runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class TransformersPoolingEngine:
    """A retrieval model on transformers, answering one job at a time from its worker thread."""

    name = "transformers"

    def __init__(self, checkpoint: PoolingCheckpoint, device: str, batch_tokens: int = BATCH_TOKENS) -> None:
        self._checkpoint = checkpoint
        self.model, self.device, self.dtype = load_pooling_model(checkpoint, device)
        self.pad_id = int(checkpoint.tokenizer.pad_token_id if checkpoint.tokenizer.pad_token_id is not None else 0)
        self.batch_tokens = batch_tokens
        self._jobs: queue.Queue[PoolingJob | None] = queue.Queue()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name=f"azion-ai-pooling-{checkpoint.model_id}", daemon=True)
        self._thread.start()

    @property
    def checkpoint(self) -> PoolingCheckpoint:
        return self._checkpoint

    @property
    def alive(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def submit(self, job: PoolingJob) -> None:
        if self._stopped:
            raise LocalBackendError(f"the engine for {self._checkpoint.model_id!r} has stopped (backend closed?)")
        self._jobs.put(job)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._jobs.put(None)
        self._thread.join(timeout=60)
        self.model = None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                job.emit(Failed(LocalBackendError("request was cancelled before it started")))
                continue
            try:
                job.emit(Started(job.request.prompt_tokens))
                outputs = self.run(job)
                job.emit(Done(respond(job.request, outputs)))
            except Exception as exc:  # noqa: BLE001 - every failure goes to the caller
                job.emit(Failed(exc))

    def run(self, job: PoolingJob) -> list[Any]:
        """Each prompt's embedding (a list of floats) or score, in prompt order."""
        import torch

        request = job.request
        prompts = request.prompts
        results: list[Any] = [None] * len(prompts)
        for group in batches([len(p) for p in prompts], self.batch_tokens):
            if job.cancelled.is_set():
                raise LocalBackendError("request was cancelled")
            width = len(prompts[group[0]])
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, : len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.long)
                mask[row, : len(prompts[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode():
                if request.task == "embed":
                    hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                    last = mask.sum(dim=1) - 1
                    pooled = hidden[torch.arange(len(group), device=self.device), last].float()
                    if request.dimensions is not None:
                        pooled = pooled[:, : request.dimensions]
                    values = torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu()
                    rows: list[Any] = values.tolist()
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                    rows = torch.sigmoid(logits[:, 0]).cpu().tolist()
            for row, i in enumerate(group):
                results[i] = rows[row]
        return results

