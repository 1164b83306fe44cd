"""Generation: one worker thread owns each loaded model and is fed by a queue.

Layers, as in mlx-lm: a token step (our own prefill-then-one-forward-per-token loop for a lone
request, eager or compiled; transformers' ``generate`` calling our sink once per token for batches
and sampled ``n`` > 1), a stream of responses (chunk dicts built from those tokens
as they come), and a full response (the same builder's final state). The worker does all
tokenizer and model work, so nothing that touches the model runs on two threads at once; callers
only read the events a job emits.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
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
from .._models import ModelInfo
from ._chat import IncrementalDecoder, ToolCallParser
from ._loading import LoadedModel

log = logging.getLogger("azion_ai")


@dataclass
class SamplingParams:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    n: int
    presence_penalty: float
    frequency_penalty: float

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SamplingParams:
        return cls(
            max_tokens=payload.get("max_tokens"),
            temperature=payload.get("temperature"),
            top_p=payload.get("top_p"),
            n=int(payload.get("n", 1) or 1),
            presence_penalty=float(payload.get("presence_penalty", 0) or 0),
            frequency_penalty=float(payload.get("frequency_penalty", 0) or 0),
        )


Emit = Callable[[tuple[str, Any]], None]


@dataclass
class Job:
    """One request for a worker. Events out: ("started", n) ("chunk", dict) ("done", dict) ("error", exc)."""

    model: ModelInfo
    conversation: list[dict[str, Any]]
    images: list[Any]
    params: SamplingParams
    tools: bool
    stream: bool
    emit: Emit
    image_limits: dict[str, Any] = field(default_factory=dict)
    adapter: tuple[str, Any] | None = None  # (name, directory) of a LoRA adapter
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Choice:
    def __init__(self, index: int, tokenizer: Any, tools: bool) -> None:
        self.index = index
        self.decoder = IncrementalDecoder(tokenizer)
        self.parser = ToolCallParser() if tools else None
        self.content: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.tokens = 0
        self.finish_reason: str | None = None

    def text(self, piece: str, final: bool = False) -> dict[str, Any] | None:
        """The delta for a piece of generated text (content and/or tool calls), or None."""
        if self.parser is None:
            content, calls = piece, []
        else:
            parsed = self.parser.feed(piece)
            if final:
                rest = self.parser.finish()
                parsed.content += rest.content
                parsed.tool_calls += rest.tool_calls
            content, calls = parsed.content, parsed.tool_calls
            if (self.tool_calls or calls) and not content.strip():
                content = ""
        delta: dict[str, Any] = {}
        if content:
            self.content.append(content)
            delta["content"] = content
        if calls:
            start = len(self.tool_calls)
            self.tool_calls.extend(calls)
            delta["tool_calls"] = [{"index": start + k, **call} for k, call in enumerate(calls)]
        return delta or None


class ResponseBuilder:
    """Token ids in; chunk dicts (for streams) and the final completion dict out."""

    def __init__(self, loaded: LoadedModel, model_id: str, n: int, tools: bool, max_tokens: int, prompt_tokens: int) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.eos = set(loaded.eos_token_ids)
        self.max_tokens = max_tokens
        self.prompt_tokens = prompt_tokens
        self.choices = [_Choice(i, loaded.tokenizer, tools) for i in range(n)]

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def first_chunk(self) -> dict[str, Any]:
        return self._chunk(
            [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for c in self.choices]
        )

    def step(self, row_ids: Sequence[int]) -> dict[str, Any] | None:
        """One token per choice; a single token goes to every choice (greedy choices are alike)."""
        if len(row_ids) == 1 and len(self.choices) > 1:
            row_ids = list(row_ids) * len(self.choices)
        out = []
        for choice, tid in zip(self.choices, row_ids, strict=True):
            if choice.finish_reason is not None:
                continue
            choice.tokens += 1
            if tid in self.eos:
                choice.finish_reason = "stop"
                continue
            delta = choice.text(choice.decoder.add(int(tid)))
            if choice.tokens >= self.max_tokens:
                choice.finish_reason = "length"
            if delta:
                out.append({"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None})
        return self._chunk(out) if out else None

    @property
    def all_finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def usage(self) -> dict[str, Any]:
        completion = sum(c.tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": None,
        }

    def finish(self) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        last = []
        for choice in self.choices:
            delta = choice.text(choice.decoder.flush(), final=True)
            if choice.finish_reason is None:
                choice.finish_reason = "length" if choice.tokens >= self.max_tokens else "stop"
            if choice.tool_calls and choice.finish_reason == "stop":
                choice.finish_reason = "tool_calls"
            if delta:
                chunks.append(self._chunk([{"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}]))
            last.append({"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason, "stop_reason": None})
        chunks.append(self._chunk(last, usage=self.usage()))
        return chunks

    def completion(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            content = "".join(c.content)
            choices.append(
                {
                    "index": c.index,
                    "message": {
                        "role": "assistant",
                        "reasoning_content": None,
                        "content": content if content or not c.tool_calls else None,
                        "tool_calls": c.tool_calls,
                    },
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": None,
                }
            )
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
            "usage": self.usage(),
            "prompt_logprobs": None,
        }


class _PenaltyProcessor:
    """OpenAI presence/frequency penalties over the generated tokens (not repetition_penalty)."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len = prompt_len
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _Sink:
    """Receives each step's tokens from ``generate`` (the streamer protocol) and stops rows.

    A batch holds one or more jobs, each owning ``n`` consecutive rows (one per choice). A row
    stops when its choice has finished or its job was cancelled.
    """

    def __init__(self, jobs: list[Job], builders: list[ResponseBuilder], n: int, fan_out: bool = False) -> None:
        self.jobs = jobs
        self.builders = builders
        self.n = n
        # Greedy decoding gives every choice the same tokens: one row per job, fanned out to n.
        self.fan_out = fan_out
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # generate() first hands over the prompt
            return
        rows = value.reshape(-1).tolist()
        n = self.n
        for j, (job, builder) in enumerate(zip(self.jobs, self.builders, strict=True)):
            chunk = builder.step(rows[j : j + 1] if self.fan_out else rows[j * n : (j + 1) * n])
            if chunk is not None and job.stream:
                job.emit(("chunk", chunk))

    def end(self) -> None:
        return None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # StoppingCriteria
        import torch

        pairs = zip(self.jobs, self.builders, strict=True)
        if self.fan_out:
            stop = [job.cancelled.is_set() or builder.all_finished for job, builder in pairs]
        else:
            stop = [job.cancelled.is_set() or choice.finish_reason is not None for job, builder in pairs for choice in builder.choices]
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


def _allow_compiling_quantized(model: Any) -> None:
    """transformers refuses to torch.compile AWQ models (its AWQ quantizer says "not
    compileable"), but gptqmodel's layers trace into a single graph: the compiled output is
    tested to match eager greedy decoding token for token. Only this model's quantizer changes."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        quantizer.__class__ = type(
            f"Compileable{type(quantizer).__name__}", (type(quantizer),), {"is_compileable": property(lambda self: True)}
        )


class ModelWorker:
    """The one thread that runs a loaded model; requests wait in its queue."""

    def __init__(self, loaded: LoadedModel, options: Mapping[str, Any]) -> None:
        self.loaded = loaded
        self.options = dict(options)
        if self.options.get("compile"):
            _allow_compiling_quantized(loaded.model)
        self._peft: Any = None  # the PeftModel wrapping the model once an adapter is loaded
        self._static_cache: Any = None  # reused by lone requests: compiled steps keep its addresses
        self._static_size = 0
        self._compiled_forward: Any = None
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending: collections.deque[Job | None] = collections.deque()
        self._thread = threading.Thread(target=self._loop, name=f"azion-ai-{loaded.model_id}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if not self._thread.is_alive():
            raise LocalBackendError(f"the worker for {self.loaded.model_id!r} has stopped (backend closed?)")
        self._queue.put(job)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _next(self) -> Job | None:
        """Jobs set aside while forming a batch go first, in their order; then the queue."""
        return self._pending.popleft() if self._pending else self._queue.get()

    def _batch(self, first: Job) -> list[Job]:
        """``first`` plus queued jobs that can share its generate() call (same settings, no images)."""
        limit = int(self.options.get("max_batch_size") or 1)
        key = _batch_key(first)
        batch = [first]
        while key is not None and len(batch) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.cancelled.is_set() and _batch_key(job) == key:
                batch.append(job)
            else:
                self._pending.append(job)
                if job is None:
                    break
        return batch

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            if job.cancelled.is_set():
                job.emit(("error", LocalBackendError("request was cancelled before it started")))
                continue
            batch = self._batch(job)
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the callers
                for member in batch:
                    member.emit(("error", exc))
                self._after_error(exc)

    def _after_error(self, exc: BaseException) -> None:
        log.warning("generation failed on %s: %s", self.loaded.model_id, type(exc).__name__)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass

    def _adapter_context(self, job: Job) -> Any:
        """Activate the job's LoRA adapter (loading it once), or run with adapters disabled."""
        import contextlib

        if job.adapter is None:
            return self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
        name, directory = job.adapter
        config = Path(directory) / "adapter_config.json"
        if not config.is_file():
            raise ModelLoadError(f"LoRA adapter {name!r}: {config} not found")
        try:
            from peft import PeftModel
        except ImportError:
            raise MissingDependencyError("LoRA adapters need peft: pip install 'azion-ai[local]'") from None
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.loaded.model, str(directory), adapter_name=name)
                self._peft.eval()
            elif name not in self._peft.peft_config:
                self._peft.load_adapter(str(directory), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"LoRA adapter {name!r} from {str(directory)!r} does not fit {self.loaded.model_id!r}: {str(exc)[:300]}") from None
        self._peft.set_adapter(name)
        return contextlib.nullcontext()

    def _prepare(self, jobs: list[Job]) -> Any:
        processor = self.loaded.processor
        texts = [processor.apply_chat_template(j.conversation, add_generation_prompt=True, tokenize=False) for j in jobs]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt"}
        if len(jobs) > 1:  # batches hold no images (see _batch_key)
            kwargs.update(padding=True, padding_side="left")
            return processor(**kwargs)
        job = jobs[0]
        if job.images:
            kwargs["images"] = job.images
            limits = job.image_limits
            if self.loaded.family == "qwen2_5_vl":
                size = dict(processor.image_processor.size)
                size["longest_edge"] = limits["max_pixels"]
                if limits.get("min_pixels") is not None:
                    size["shortest_edge"] = limits["min_pixels"]
                size["shortest_edge"] = min(size["shortest_edge"], size["longest_edge"])
                kwargs["size"] = size
            elif self.loaded.family == "internvl":
                kwargs["max_patches"] = limits["max_tiles"]
        return processor(**kwargs)

    @staticmethod
    def _budget(job: Job, prompt_len: int) -> int:
        """max_tokens for this job, or a ValidationError if the prompt leaves no room for it."""
        context = job.model.context_length
        wanted = job.params.max_tokens
        if wanted is not None and prompt_len + wanted > context:
            raise ValidationError(
                job.model.id,
                [ValidationIssue("max_tokens", f"the prompt is {prompt_len} tokens; with max_tokens {wanted} that exceeds the context length of {context}")],
            )
        budget = wanted if wanted is not None else context - prompt_len
        if budget < 1:
            raise ValidationError(
                job.model.id, [ValidationIssue("messages", f"the prompt is {prompt_len} tokens, which fills the context length of {context}")]
            )
        return budget

    def _generation_config(self, params: SamplingParams, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        loaded = self.loaded
        temperature, top_p = params.temperature, params.top_p
        top_k = 0
        if temperature is None and top_p is None:
            defaults = loaded.generation_defaults
            temperature, top_p, top_k = defaults.get("temperature"), defaults.get("top_p"), defaults.get("top_k") or 0
        temperature = 1.0 if temperature is None else float(temperature)
        sample = temperature > 0
        # Every sampling field is set explicitly: transformers fills unset ones from the
        # checkpoint's generation_config (Qwen's has repetition_penalty 1.05, top_k 1).
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else 1.0,
            top_p=(1.0 if top_p is None else float(top_p)) if sample else 1.0,
            top_k=top_k if sample else 50,
            num_return_sequences=params.n if sample else 1,  # greedy choices are all alike
            eos_token_id=loaded.eos_token_ids,
            pad_token_id=loaded.pad_token_id,
            repetition_penalty=1.0,
        )
        if self.options.get("static_cache") or self.options.get("compile"):
            config.cache_implementation = "static"
        if self.options.get("compile"):
            from transformers import CompileConfig

            compile_config = CompileConfig(fullgraph=False, dynamic=False)
            compile_config._compile_all_devices = True  # type: ignore[assignment]  # CPU too (transformers compiles only GPUs by default)
            config.compile_config = compile_config
        return config

    def _run(self, jobs: list[Job]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        loaded = self.loaded
        inputs = self._prepare(jobs)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        live: list[int] = []
        builders: list[ResponseBuilder] = []
        for i, job in enumerate(jobs):
            try:
                budget = self._budget(job, int(lengths[i]))
            except ValidationError as exc:
                if len(jobs) == 1:
                    raise
                job.emit(("error", exc))
                continue
            live.append(i)
            builders.append(ResponseBuilder(loaded, job.model.id, job.params.n, job.tools, budget, int(lengths[i])))
        if len(live) < len(jobs):
            if not live:
                return
            inputs = {k: v[live] for k, v in inputs.items()}
            jobs = [jobs[i] for i in live]
        for job, builder in zip(jobs, builders, strict=True):
            job.emit(("started", builder.prompt_tokens))
            if job.stream:
                job.emit(("chunk", builder.first_chunk()))

        params = jobs[0].params  # a batch shares its sampling settings
        config = self._generation_config(params, max(b.max_tokens for b in builders))
        penalty = None
        if params.presence_penalty or params.frequency_penalty:
            width = int(inputs["input_ids"].shape[1])  # rows are left-padded to one width
            penalty = _PenaltyProcessor(width, params.presence_penalty, params.frequency_penalty)
        model_inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
        if "pixel_values" in model_inputs and loaded.model.dtype.is_floating_point:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(loaded.model.dtype)
        with torch.inference_mode(), self._adapter_context(jobs[0]):
            if self._steps_itself(jobs, config):
                self._decode(jobs[0], builders[0], model_inputs, config, penalty)
            else:
                sink = _Sink(jobs, builders, params.n, fan_out=not config.do_sample)
                loaded.model.generate(
                    **model_inputs,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([penalty] if penalty else []),
                    stopping_criteria=StoppingCriteriaList([sink]),
                    streamer=sink,
                )
        for job, builder in zip(jobs, builders, strict=True):
            if job.cancelled.is_set():
                job.emit(("error", LocalBackendError("request was cancelled")))
                continue
            for chunk in builder.finish():
                if job.stream:
                    job.emit(("chunk", chunk))
            job.emit(("done", builder.completion()))

    def _steps_itself(self, jobs: list[Job], config: Any) -> bool:
        """A lone request runs through :meth:`_decode`; batches and sampled ``n`` > 1 use generate()."""
        return (
            len(jobs) == 1
            and (jobs[0].params.n == 1 or not config.do_sample)
            and bool(self.options.get("fast_decode", True))
        )

    def _kv_cache(self, needed: int) -> Any:
        """A fresh dynamic cache; or, with static_cache / compile, the worker's static cache, reset,
        and regrown to the next power of two only when a request needs more room."""
        from transformers import DynamicCache, StaticCache

        config = self.loaded.model.config
        if not (self.options.get("static_cache") or self.options.get("compile")):
            return DynamicCache(config=config)
        if self._static_cache is None or self._static_size < needed:
            self._static_cache = None  # free the old one first
            self._static_size = max(256, 1 << (needed - 1).bit_length())
            self._static_cache = StaticCache(config=config, max_cache_len=self._static_size)
        else:
            self._static_cache.reset()
        return self._static_cache

    def _decode_step(self) -> Any:
        """The model's forward for one token; with compile, torch.compile'd once per worker
        ("reduce-overhead" on CUDA: the step is replayed as CUDA graphs)."""
        if not self.options.get("compile"):
            return self.loaded.model
        if self._compiled_forward is None:
            import torch

            mode = "reduce-overhead" if self.loaded.device.type == "cuda" else None
            self._compiled_forward = torch.compile(self.loaded.model.forward, mode=mode, dynamic=False, fullgraph=False)
        return self._compiled_forward

    def _decode(self, job: Job, builder: ResponseBuilder, inputs: dict[str, Any], config: Any, penalty: Any) -> None:
        """The token step, without generate()'s per-step machinery: prefill once, then one forward
        per token until the builder says the choice is finished or the job is cancelled. With
        static_cache / compile the KV cache is static and (compile) the step is compiled.

        Sampling uses transformers' own warpers in generate()'s order (temperature, top-k, top-p),
        so both paths draw from the same distribution; greedy output is identical (tested)."""
        import torch
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        model = self.loaded.model
        inner: Any = getattr(model, "model", None)
        if getattr(inner, "rope_deltas", None) is not None:
            inner.rope_deltas = None  # Qwen2.5-VL keeps the last request's 3D-rope offsets on the model
        warpers: list[Any] = []
        if config.do_sample:
            if config.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                warpers.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                warpers.append(TopPLogitsWarper(config.top_p))
        ids = inputs["input_ids"]
        cache = self._kv_cache(int(ids.shape[1]) + builder.max_tokens)
        step = self._decode_step()
        out = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)  # prefill: eager
        while True:
            scores = out.logits[:, -1, :].float()
            if penalty is not None:
                scores = penalty(ids, scores)
            if config.do_sample:
                for warp in warpers:
                    scores = warp(ids, scores)
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            if penalty is not None:
                ids = torch.cat([ids, token], dim=1)
            chunk = builder.step(token.view(-1).tolist())  # one row: n > 1 only when greedy
            if chunk is not None and job.stream:
                job.emit(("chunk", chunk))
            if builder.all_finished or job.cancelled.is_set():
                return
            out = step(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)


def _batch_key(job: Job) -> tuple[Any, ...] | None:
    """Jobs with equal keys can run in one generate() call; None: this one runs alone."""
    if job.images:
        return None
    p = job.params
    adapter = job.adapter[0] if job.adapter else None
    return (adapter, p.temperature, p.top_p, p.n, p.presence_penalty, p.frequency_penalty)
