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


GREEDY_EPS = 1e-5  # vLLM: a temperature below this is greedy decoding
MIN_TEMPERATURE = 1e-2  # vLLM raises smaller positive temperatures to this (numerical safety)
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
_NEUTRAL: dict[str, float] = {
    "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
    "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
}


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings resolved as vLLM resolves them: the payload's value, else the
    checkpoint's generation_config.json value (each field on its own, ``do_sample`` ignored),
    else the neutral default. ``top_k`` 0 means off."""

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    n: int
    include_usage: bool = False

    @classmethod
    def resolve(cls, payload: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> SamplingParams:
        defaults = defaults or {}
        values: dict[str, float] = {}
        for name in SAMPLING_FIELDS:
            value = payload.get(name)
            if value is None:
                value = defaults.get(name)
            values[name] = _NEUTRAL[name] if value is None else value
        temperature = float(values["temperature"])
        if 0 < temperature < MIN_TEMPERATURE:
            temperature = MIN_TEMPERATURE
        top_k = int(values["top_k"])
        max_tokens = payload.get("max_tokens")
        if max_tokens is None:
            max_tokens = defaults.get("max_new_tokens")
        options = payload.get("stream_options")
        return cls(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=float(values["top_p"]),
            top_k=0 if top_k < 0 else top_k,
            min_p=float(values["min_p"]),
            repetition_penalty=float(values["repetition_penalty"]),
            presence_penalty=float(values["presence_penalty"]),
            frequency_penalty=float(values["frequency_penalty"]),
            n=int(payload.get("n", 1) or 1),
            include_usage=bool(payload.get("stream") and isinstance(options, Mapping) and options.get("include_usage")),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS


Emit = Callable[[tuple[str, Any]], None]


@dataclass
class Job:
    """One request for a worker. Events out: ("started", n) ("chunk", dict) ("done", dict) ("error", exc)."""

    model: ModelInfo
    prompt: str
    images: list[Any]
    params: SamplingParams
    tools: bool
    stream: bool
    emit: Emit
    max_model_len: int
    image_limits: dict[str, Any] = field(default_factory=dict)
    adapter: tuple[str, Any] | None = None  # (name, directory) of a LoRA adapter
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Choice:
    def __init__(self, index: int, tokenizer: Any, tools: bool) -> None:
        self.index = index
        # With tools, vLLM keeps special tokens in the text (hermes tags are special in some
        # checkpoints): the same here, so the parser sees the same text.
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=not tools)
        self.parser = ToolCallParser() if tools else None
        self.content: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.tokens = 0
        self.finish_reason: str | None = None
        self.last_delta: dict[str, Any] | None = None

    def text(self, piece: str, final: bool = False) -> dict[str, Any] | None:
        """The delta for a piece of generated text (content and/or tool calls), or None."""
        calls: list[dict[str, Any]] = []
        if self.parser is None:
            content = piece
        else:
            content = self.parser.feed(piece)
            if final:
                rest = self.parser.finish()
                content += rest.content
                calls = rest.tool_calls
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

    def __init__(
        self, loaded: LoadedModel, model_id: str, n: int, tools: bool, max_tokens: int, prompt_tokens: int, include_usage: bool = False
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.eos = set(loaded.eos_token_ids)
        self.max_tokens = max_tokens
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
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
        """One token per choice."""
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
                choice.last_delta = delta  # sent with the finish chunk, as vLLM sends the last token
                continue
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
        """The last chunks: held-back text, the finish chunk, and (``stream_options.include_usage``)
        the usage chunk with no choices, as vLLM sends them."""
        chunks: list[dict[str, Any]] = []
        last = []
        for choice in self.choices:
            delta = dict(choice.last_delta or {})
            for key, value in (choice.text(choice.decoder.flush(), final=True) or {}).items():
                delta[key] = delta.get(key, type(value)()) + value  # content: str; tool_calls: list
            if choice.finish_reason is None:
                choice.finish_reason = "length" if choice.tokens >= self.max_tokens else "stop"
            if choice.tool_calls:  # as vLLM: also when the output was cut at max_tokens
                choice.finish_reason = "tool_calls"
            last.append({"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": choice.finish_reason, "stop_reason": None})
        chunks.append(self._chunk(last))
        if self.include_usage:
            usage = self.usage()
            usage.pop("prompt_tokens_details", None)
            chunks.append(self._chunk([], usage=usage))
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


class _Penalties:
    """vLLM's penalties, in its order: ``repetition_penalty`` over the prompt and the output
    (positive logits divided, negative ones multiplied; left padding does not count), then the
    OpenAI ``frequency_penalty`` and ``presence_penalty`` over the output alone."""

    def __init__(self, params: SamplingParams, prompt_mask: Any) -> None:
        self.repetition = params.repetition_penalty
        self.presence = params.presence_penalty
        self.frequency = params.frequency_penalty
        self.prompt_mask = prompt_mask  # bool [requests, width]: True at real prompt tokens

    @staticmethod
    def wanted(params: SamplingParams) -> bool:
        return params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        width = self.prompt_mask.shape[1]
        generated = input_ids[:, width:]
        if self.repetition != 1.0:
            mask = self.prompt_mask.repeat_interleave(input_ids.shape[0] // self.prompt_mask.shape[0], dim=0)
            weights = torch.cat([mask, torch.ones_like(generated, dtype=torch.bool)], dim=1).to(scores.dtype)
            seen = torch.zeros_like(scores).scatter_add_(1, input_ids, weights) > 0
            penalised = torch.where(scores > 0, scores / self.repetition, scores * self.repetition)
            scores = torch.where(seen, penalised, scores)
        if (self.presence or self.frequency) and generated.shape[1]:
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            scores = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        return scores


class _Sink:
    """Receives each step's tokens from ``generate`` (the streamer protocol) and stops rows.

    A batch holds one or more jobs, each owning ``n`` consecutive rows (one per choice). A row
    stops when its choice has finished or its job was cancelled.
    """

    def __init__(self, jobs: list[Job], builders: list[ResponseBuilder], n: int) -> None:
        self.jobs = jobs
        self.builders = builders
        self.n = n
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # generate() first hands over the prompt
            return
        rows = value.reshape(-1).tolist()
        n = self.n
        for j, (job, builder) in enumerate(zip(self.jobs, self.builders, strict=True)):
            chunk = builder.step(rows[j * n : (j + 1) * n])
            if chunk is not None and job.stream:
                job.emit(("chunk", chunk))

    def end(self) -> None:
        return None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # StoppingCriteria
        import torch

        pairs = zip(self.jobs, self.builders, strict=True)
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
        kwargs: dict[str, Any] = {"text": [j.prompt for j in jobs], "return_tensors": "pt"}
        if len(jobs) > 1:  # batches hold no images (see _batch_key)
            kwargs.update(padding=True, padding_side="left")
            return processor(**kwargs)
        job = jobs[0]
        if job.images:
            kwargs["images"] = job.images
            # The checkpoint's own preprocessor bounds apply (as in vLLM) unless the backend
            # was given tighter ones.
            limits = job.image_limits
            if self.loaded.family == "qwen2_5_vl" and (limits.get("max_pixels") or limits.get("min_pixels")):
                size = dict(processor.image_processor.size)
                if limits.get("max_pixels"):
                    size["longest_edge"] = limits["max_pixels"]
                if limits.get("min_pixels") is not None:
                    size["shortest_edge"] = limits["min_pixels"]
                size["shortest_edge"] = min(size["shortest_edge"], size["longest_edge"])
                kwargs["size"] = size
            elif self.loaded.family == "internvl" and limits.get("max_tiles"):
                kwargs["max_patches"] = limits["max_tiles"]
        return processor(**kwargs)

    @staticmethod
    def _budget(job: Job, prompt_len: int) -> int:
        """Tokens this job may generate: max_tokens, cut to what the context has left (as vLLM:
        output then stops at the context, finish_reason "length"); a ValidationError if the
        prompt alone fills the context."""
        context = job.max_model_len
        if prompt_len >= context:
            raise ValidationError(
                job.model.id,
                [ValidationIssue("messages", f"This model's maximum context length is {context} tokens; the prompt is {prompt_len} tokens, which leaves no room for output. Shorten the messages or send fewer or smaller images.")],
            )
        wanted = job.params.max_tokens
        room = context - prompt_len
        return room if wanted is None else min(int(wanted), room)

    def _generation_config(self, params: SamplingParams, max_new_tokens: int) -> Any:
        from transformers import GenerationConfig

        loaded = self.loaded
        sample = not params.greedy
        # Every sampling field is set explicitly (already resolved against the checkpoint's
        # defaults as vLLM does): transformers would otherwise fill unset ones by its own rules.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else 1.0,
            top_p=params.top_p if sample else 1.0,
            top_k=params.top_k if sample and params.top_k else None,
            min_p=params.min_p if sample and params.min_p > 0 else None,
            num_return_sequences=params.n,
            eos_token_id=loaded.eos_token_ids,
            pad_token_id=loaded.pad_token_id,
            repetition_penalty=1.0,  # applied by _Penalties, as vLLM does (padding excluded)
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
            builders.append(
                ResponseBuilder(loaded, job.model.id, job.params.n, job.tools, budget, int(lengths[i]), job.params.include_usage)
            )
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
        # rows are left-padded to one width: the attention mask tells the prompt from padding
        penalty = _Penalties(params, inputs["attention_mask"].bool()) if _Penalties.wanted(params) else None
        model_inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
        if "pixel_values" in model_inputs and loaded.model.dtype.is_floating_point:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(loaded.model.dtype)
        with torch.inference_mode(), self._adapter_context(jobs[0]):
            if self._steps_itself(jobs, config):
                self._decode(jobs[0], builders[0], model_inputs, config, penalty)
            else:
                sink = _Sink(jobs, builders, params.n)
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
        """A lone request runs through :meth:`_decode`; batches and ``n`` > 1 use generate()."""
        return len(jobs) == 1 and jobs[0].params.n == 1 and bool(self.options.get("fast_decode", True))

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
        from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        model = self.loaded.model
        inner: Any = getattr(model, "model", None)
        if getattr(inner, "rope_deltas", None) is not None:
            inner.rope_deltas = None  # Qwen2.5-VL keeps the last request's 3D-rope offsets on the model
        processors: list[Any] = [penalty] if penalty is not None else []
        warpers: list[Any] = []
        if config.do_sample:
            if config.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k:
                warpers.append(TopKLogitsWarper(config.top_k))
            if config.top_p < 1.0:
                warpers.append(TopPLogitsWarper(config.top_p))
            if config.min_p:
                warpers.append(MinPLogitsWarper(config.min_p))
        ids = inputs["input_ids"]
        cache = self._kv_cache(int(ids.shape[1]) + builder.max_tokens)
        step = self._decode_step()
        out = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)  # prefill: eager
        while True:
            scores = out.logits[:, -1, :].float()
            for process in processors:
                scores = process(ids, scores)
            if config.do_sample:
                for warp in warpers:
                    scores = warp(ids, scores)
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            if processors:
                ids = torch.cat([ids, token], dim=1)
            chunk = builder.step(token.view(-1).tolist())
            if chunk is not None and job.stream:
                job.emit(("chunk", chunk))
            if builder.all_finished or job.cancelled.is_set():
                return
            out = step(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)


def _batch_key(job: Job) -> tuple[Any, ...] | None:
    """Jobs with equal keys can run in one generate() call; None: this one runs alone."""
    if job.images:
        return None
    adapter = job.adapter[0] if job.adapter else None
    return (adapter, *(getattr(job.params, f) for f in SAMPLING_FIELDS), job.params.n)
