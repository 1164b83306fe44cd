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
from ._constraints import GrammarSpec
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
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    """None: no logprobs; k >= 0: each token's logprob and its k most likely alternatives."""
    logit_bias: tuple[tuple[int, float], ...] = ()

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
        # vLLM: max_completion_tokens, the newer OpenAI name, wins over max_tokens
        max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if max_tokens is None:
            max_tokens = defaults.get("max_new_tokens")
        options = payload.get("stream_options")
        stop = payload.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
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
            stop=stop,
            seed=payload.get("seed"),
            logprobs=int(payload.get("top_logprobs") or 0) if payload.get("logprobs") else None,
            logit_bias=tuple((int(k), float(v)) for k, v in (payload.get("logit_bias") or {}).items()),
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
    tool_mode: str = "auto"
    """How tools shape the answer: "auto", "named" or "required" (hermes calls parsed; the last
    two constrained, see _constraints), "none" (plain content). Without tools: "text"."""
    grammar: GrammarSpec | None = None
    adapter: tuple[str, Any] | None = None  # (name, directory) of a LoRA adapter
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class _Choice:
    """One choice's text on its way out: decoding, stop strings, tool calls, logprobs."""

    def __init__(self, index: int, tokenizer: Any, tool_mode: str, stops: tuple[str, ...] = ()) -> None:
        self.index = index
        # With tools, vLLM keeps special tokens in the text (hermes tags are special in some
        # checkpoints): the same here, so the parser sees the same text.
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=tool_mode in ("none", "text"))
        self.mode = tool_mode
        self.parser = ToolCallParser() if tool_mode in ("auto", "named", "required") else None
        self.stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1  # never leak a partial stop string
        self._text = ""  # all text so far, cut at a matched stop string
        self._released = 0
        self._closed = False
        self.content: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] = []
        self.tokens = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.last_delta: dict[str, Any] | None = None
        self.last_logprobs: list[dict[str, Any]] = []

    def _release(self, piece: str, final: bool) -> str:
        """Text that can go out now: stop strings checked (vLLM's rule: the first listed one that
        occurs ends the output before it), a possible start of one held back."""
        if not self.stops:
            return piece
        before = len(self._text)
        self._text += piece
        for stop in self.stops:
            at = self._text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                self._text = self._text[:at]
                self.stop_reason, self.finish_reason = stop, "stop"
                final = True
                break
        end = len(self._text) if final else max(self._released, len(self._text) - self._hold)
        out, self._released = self._text[self._released : end], end
        return out

    def text(self, piece: str, final: bool = False) -> dict[str, Any] | None:
        """The delta for a piece of generated text (content and/or tool calls), or None."""
        if self._closed:
            return None
        piece = self._release(piece, final)
        final = final or self.stop_reason is not None
        calls: list[dict[str, Any]] = []
        content = piece if self.parser is None else self.parser.feed(piece)
        if final and self.parser is not None:
            rest = self.parser.finish()
            content += rest.content
            calls = rest.tool_calls
        if final:
            self._closed = True
        delta: dict[str, Any] = {}
        if content:
            self.content.append(content)
            delta["content"] = content
        if calls:
            start = len(self.tool_calls)
            self.tool_calls.extend(calls)
            delta["tool_calls"] = [{"index": start + k, **call} for k, call in enumerate(calls)]
        return delta or None


def decoded_token(tokenizer: Any, token: int, context: Sequence[int]) -> str:
    """A token's text for logprobs, as vLLM gives it: a byte of an unfinished character is "",
    and the token that finishes one carries the whole character (read with up to 4 preceding
    tokens of the output as context)."""
    text = str(tokenizer.decode([token]))
    if not text.endswith("\ufffd"):
        return text
    for size in range(1, min(len(context), 4) + 1):
        before = list(context[-size:])
        whole = str(tokenizer.decode([*before, token]))
        if whole.endswith("\ufffd"):
            continue
        clean = len(before)
        while clean > 0 and str(tokenizer.decode([before[clean - 1]])).endswith("\ufffd"):
            clean -= 1
        prefix = str(tokenizer.decode(before[:clean])) if clean else ""
        common = 0
        for a, b in zip(prefix, whole, strict=False):
            if a != b:
                break
            common += 1
        return whole[common:]
    return ""


def logprob_entry(tokenizer: Any, token: int, logprob: float, top: Sequence[tuple[int, float]], context: Sequence[int] = ()) -> dict[str, Any]:
    """One token in OpenAI's chat logprobs shape."""

    def item(tid: int, lp: float) -> dict[str, Any]:
        text = decoded_token(tokenizer, tid, context)
        return {"token": text, "logprob": max(lp, -9999.0), "bytes": list(text.encode("utf-8", errors="replace"))}

    return {**item(token, logprob), "top_logprobs": [item(t, lp) for t, lp in top]}


class ResponseBuilder:
    """Token ids in; chunk dicts (for streams) and the final completion dict out."""

    def __init__(
        self,
        loaded: LoadedModel,
        model_id: str,
        n: int,
        tools: bool,
        max_tokens: int,
        prompt_tokens: int,
        include_usage: bool = False,
        *,
        tool_mode: str | None = None,
        stops: tuple[str, ...] = (),
        logprobs: bool = False,
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.eos = set(loaded.eos_token_ids)
        self.max_tokens = max_tokens
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.tokenizer = loaded.tokenizer
        self.with_logprobs = logprobs
        mode = tool_mode or ("auto" if tools else "text")
        self.choices = [_Choice(i, loaded.tokenizer, mode, stops) for i in range(n)]

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

    def step(self, row_ids: Sequence[int], logprobs: Sequence[tuple[float, Sequence[tuple[int, float]]]] | None = None) -> dict[str, Any] | None:
        """One token per choice (and, with logprobs, each one's logprob and top alternatives)."""
        out = []
        for row, (choice, tid) in enumerate(zip(self.choices, row_ids, strict=True)):
            if choice.finish_reason is not None:
                continue
            choice.tokens += 1
            entry = None
            if self.with_logprobs and logprobs is not None:
                entry = logprob_entry(self.tokenizer, int(tid), logprobs[row][0], logprobs[row][1], choice.decoder.ids[-4:])
                choice.logprobs.append(entry)
            if tid in self.eos:
                choice.finish_reason = "stop"
                choice.last_logprobs = [entry] if entry else []
                continue
            delta = choice.text(choice.decoder.add(int(tid)))
            if choice.finish_reason is None and choice.tokens >= self.max_tokens:
                choice.finish_reason = "length"
            if choice.finish_reason is not None:  # max_tokens or a stop string
                choice.last_delta = delta  # sent with the finish chunk, as vLLM sends the last token
                choice.last_logprobs = [entry] if entry else []
                continue
            if delta or entry:
                out.append({"index": choice.index, "delta": delta or {}, "logprobs": {"content": [entry]} if entry else None, "finish_reason": None})
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
            # as vLLM: "tool_calls" for auto calls (also when cut at max_tokens) and for required
            # ones that ended normally; a named function keeps "stop"
            if choice.tool_calls and (choice.mode == "auto" or (choice.mode == "required" and choice.finish_reason == "stop")):
                choice.finish_reason = "tool_calls"
            logprobs = {"content": choice.last_logprobs} if self.with_logprobs else None
            last.append({"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason})
        chunks.append(self._chunk(last))
        if self.include_usage:
            usage = self.usage()
            usage.pop("prompt_tokens_details", None)
            chunks.append(self._chunk([], usage=usage))
        return chunks

    def completion(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            content: str | None = "".join(c.content)
            if c.mode in ("named", "required"):
                content = content or ""  # as vLLM for forced calls
            elif c.tool_calls and not content:
                content = None
            choices.append(
                {
                    "index": c.index,
                    "message": {"role": "assistant", "reasoning_content": None, "content": content, "tool_calls": c.tool_calls},
                    "logprobs": {"content": c.logprobs} if self.with_logprobs else None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
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
        self._grammars: Any = None  # xgrammar's compiler over this model's vocabulary, made on first use
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
                ResponseBuilder(
                    loaded, job.model.id, job.params.n, job.tools, budget, int(lengths[i]), job.params.include_usage,
                    tool_mode=job.tool_mode if job.tools else "text", stops=job.params.stop,
                    logprobs=job.params.logprobs is not None,
                )
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
        """A lone request runs through :meth:`_decode`; batches use generate() (and, with
        fast_decode=False, plain requests too). Requests that need the token step's per-request
        parts (a seed, logprobs, stop strings, a grammar) always take it."""
        if len(jobs) > 1:
            return False
        return bool(self.options.get("fast_decode", True)) or _needs_token_step(jobs[0])

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
        from transformers import (
            DynamicCache,
            MinPLogitsWarper,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        model = self.loaded.model
        inner: Any = getattr(model, "model", None)
        if getattr(inner, "rope_deltas", None) is not None:
            inner.rope_deltas = None  # Qwen2.5-VL keeps the last request's 3D-rope offsets on the model
        processors: list[Any] = [penalty] if penalty is not None else []
        if job.params.logit_bias:
            processors.append(_LogitBias(job.params.logit_bias))
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
        params = job.params
        rows = params.n
        ids = inputs["input_ids"]
        # n choices: one prefill, then the KV cache is repeated into n rows decoded side by side
        cache = self._kv_cache(int(ids.shape[1]) + builder.max_tokens) if rows == 1 else DynamicCache(config=model.config)
        step = self._decode_step() if rows == 1 else model
        # a seed gives this request its own generator: the same draws whatever else runs
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.loaded.device).manual_seed(params.seed % (1 << 63))
        constraint = self._constraint(job, rows)
        out = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)  # prefill: eager
        logits = out.logits[:, -1, :]
        if rows > 1:
            cache.batch_repeat_interleave(rows)
            ids = ids.repeat(rows, 1)
            logits = logits.repeat(rows, 1)
        while True:
            raw = logits.float()
            scores = raw
            for process in processors:
                scores = process(ids, scores)
            if constraint is not None:
                scores = constraint.mask(scores.clone())
            if config.do_sample:
                for warp in warpers:
                    scores = warp(ids, scores)
                token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator)
            else:
                token = scores.argmax(dim=-1, keepdim=True)
            tokens = token.view(-1).tolist()
            if constraint is not None:
                constraint.accept(tokens)
            if processors:
                ids = torch.cat([ids, token], dim=1)
            logprobs = _logprobs(raw, tokens, params.logprobs) if params.logprobs is not None else None
            chunk = builder.step(tokens, logprobs)
            if chunk is not None and job.stream:
                job.emit(("chunk", chunk))
            if builder.all_finished or job.cancelled.is_set():
                return
            out = step(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :]

    def _constraint(self, job: Job, rows: int) -> Any:
        """The request's grammar (response_format, forced tool_choice) as a per-step mask."""
        if job.grammar is None:
            return None
        if self._grammars is None:
            from ._constraints import GrammarCompiler

            loaded = self.loaded
            vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
            self._grammars = GrammarCompiler(loaded.tokenizer, vocab, bool(self.options.get("any_whitespace", True)))
        return self._grammars.constraint(self._grammars.compile(job.grammar, job.model.id), rows)


def _logprobs(raw: Any, tokens: Sequence[int], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each row's chosen-token logprob and its ``top`` best alternatives, from the model's raw
    logits (before penalties and temperature), as vLLM reports them."""
    import torch

    logprobs = torch.log_softmax(raw, dim=-1)
    out = []
    for row, token in enumerate(tokens):
        best = torch.topk(logprobs[row], top) if top else None
        alternatives = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else []
        out.append((float(logprobs[row, token]), alternatives))
    return out


def _needs_token_step(job: Job) -> bool:
    p = job.params
    return p.seed is not None or p.logprobs is not None or bool(p.stop or p.logit_bias) or job.grammar is not None


class _LogitBias:
    """OpenAI's ``logit_bias``: a fixed amount added to chosen tokens' logits (after the
    penalties, before temperature), as vLLM applies it; ids outside the vocabulary are refused
    before generation."""

    def __init__(self, bias: Sequence[tuple[int, float]]) -> None:
        self.bias = bias

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores = scores.clone()
        for token, amount in self.bias:
            scores[:, token] += amount
        return scores


def _batch_key(job: Job) -> tuple[Any, ...] | None:
    """Jobs with equal keys can run in one generate() call; None: this one runs alone."""
    if job.images or _needs_token_step(job):
        return None
    adapter = job.adapter[0] if job.adapter else None
    return (adapter, *(getattr(job.params, f) for f in SAMPLING_FIELDS), job.params.n)
