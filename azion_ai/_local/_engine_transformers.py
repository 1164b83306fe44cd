"""The transformers engine: one worker thread owns each loaded model and is fed by a queue.

Layers, as in mlx-lm: a token step (our own prefill-then-one-forward-per-token loop for a lone
request, eager or compiled; transformers' ``generate`` calling our sink once per token for
batches), and the response built from those tokens as they come (_response). The worker does all
tokenizer and model work, so nothing that touches the model runs on two threads at once; callers
only read the events a job emits (_request).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import LocalBackendError, MissingDependencyError, ModelLoadError, ValidationError
from ._loading import LoadedModel
from ._request import SAMPLING_FIELDS, Chunk, Done, Failed, Job, SamplingParams, Started
from ._response import ResponseBuilder

log = logging.getLogger("azion_ai")


@dataclass(frozen=True)
class TransformersOptions:
    """The transformers engine's speed options (all off by default: same tokens either way).

    ``static_cache``: a static KV cache reused by lone requests; ``compile``: torch.compile of the
    decoding step on top of it ("reduce-overhead" on CUDA: CUDA graphs); ``max_batch_size`` > 1:
    waiting requests that share sampling settings and carry no images run in one generate()
    call; ``fast_decode``: a lone request runs our own token loop rather than generate();
    ``any_whitespace``: JSON from a grammar may hold any whitespace (vLLM's default)."""

    static_cache: bool = False
    compile: bool = False
    max_batch_size: int = 1
    fast_decode: bool = True
    any_whitespace: bool = True

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
            if chunk is not None and job.request.stream:
                job.emit(Chunk(chunk))

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


class TransformersEngine:
    """The one thread that runs a loaded model; requests wait in its queue."""

    name = "transformers"

    def __init__(self, loaded: LoadedModel, options: TransformersOptions | None = None) -> None:
        self.loaded = loaded
        self.options = options or TransformersOptions()
        if self.options.compile:
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

    @property
    def checkpoint(self) -> LoadedModel:
        return self.loaded

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

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
        limit = self.options.max_batch_size
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
                job.emit(Failed(LocalBackendError("request was cancelled before it started")))
                continue
            batch = self._batch(job)
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the callers
                for member in batch:
                    member.emit(Failed(exc))
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
        if job.request.adapter is None:
            return self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
        name, directory = job.request.adapter
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
        kwargs: dict[str, Any] = {"text": [j.request.prompt for j in jobs], "return_tensors": "pt"}
        if len(jobs) > 1:  # batches hold no images (see _batch_key)
            kwargs.update(padding=True, padding_side="left")
            return processor(**kwargs)
        request = jobs[0].request
        if request.images:
            kwargs["images"] = list(request.images)
            # The checkpoint's own preprocessor bounds apply (as in vLLM) unless the backend
            # was given tighter ones.
            kwargs.update(self.loaded.adapter.processor_kwargs(request.image_limits, processor.image_processor.size))
        return processor(**kwargs)

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
        if self.options.static_cache or self.options.compile:
            config.cache_implementation = "static"
        if self.options.compile:
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
                budget = job.request.budget(int(lengths[i]))
            except ValidationError as exc:
                if len(jobs) == 1:
                    raise
                job.emit(Failed(exc))
                continue
            live.append(i)
            builders.append(ResponseBuilder.for_request(loaded, job.request, budget, int(lengths[i])))
        if len(live) < len(jobs):
            if not live:
                return
            inputs = {k: v[live] for k, v in inputs.items()}
            jobs = [jobs[i] for i in live]
        for job, builder in zip(jobs, builders, strict=True):
            job.emit(Started(builder.prompt_tokens))
            if job.request.stream:
                job.emit(Chunk(builder.first_chunk()))

        params = jobs[0].request.params  # a batch shares its sampling settings
        config = self._generation_config(params, max(b.max_tokens for b in builders))
        # rows are left-padded to one width: the attention mask tells the prompt from padding
        penalty = _Penalties(params, inputs["attention_mask"].bool()) if _Penalties.wanted(params) else None
        model_inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
        if "pixel_values" in model_inputs and loaded.model.dtype.is_floating_point:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(loaded.model.dtype)
        with torch.inference_mode(), self._adapter_context(jobs[0]):
            if self._steps_itself(jobs, config):
                self._token_loop(jobs[0], builders[0], model_inputs, config, penalty)
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
                job.emit(Failed(LocalBackendError("request was cancelled")))
                continue
            for chunk in builder.finish():
                if job.request.stream:
                    job.emit(Chunk(chunk))
            job.emit(Done(builder.completion()))

    def _steps_itself(self, jobs: list[Job], config: Any) -> bool:
        """A lone request runs through :meth:`_decode`; batches use generate() (and, with
        fast_decode=False, plain requests too). Requests that need the token step's per-request
        parts (a seed, logprobs, stop strings, a grammar) always take it."""
        if len(jobs) > 1:
            return False
        return self.options.fast_decode or jobs[0].request.needs_token_step

    def _kv_cache(self, needed: int) -> Any:
        """A fresh dynamic cache; or, with static_cache / compile, the worker's static cache, reset,
        and regrown to the next power of two only when a request needs more room."""
        from transformers import DynamicCache, StaticCache

        config = self.loaded.model.config
        if not (self.options.static_cache or self.options.compile):
            return DynamicCache(config=config)
        if self._static_cache is None or self._static_size < needed:
            self._static_cache = None  # free the old one first
            self._static_size = max(256, 1 << (needed - 1).bit_length())
            self._static_cache = StaticCache(config=config, max_cache_len=self._static_size)
        else:
            self._static_cache.reset()
        return self._static_cache

    def _step_forward(self) -> Any:
        """The model's forward for one token; with compile, torch.compile'd once per worker
        ("reduce-overhead" on CUDA: the step is replayed as CUDA graphs)."""
        if not self.options.compile:
            return self.loaded.model
        if self._compiled_forward is None:
            import torch

            mode = "reduce-overhead" if self.loaded.device.type == "cuda" else None
            self._compiled_forward = torch.compile(self.loaded.model.forward, mode=mode, dynamic=False, fullgraph=False)
        return self._compiled_forward

    def _token_loop(self, job: Job, builder: ResponseBuilder, inputs: dict[str, Any], config: Any, penalty: Any) -> None:
        """The layers joined, as mlx-lm's: :meth:`token_steps` (each step's tokens) into the
        response builder (chunks, then the whole answer), until every choice has finished or the
        job is cancelled; then the steps stop (no forward is run for a token nobody wants)."""
        steps = self.token_steps(job, builder.max_tokens, inputs, config, penalty)
        try:
            for tokens, logprobs in steps:
                chunk = builder.step(tokens, logprobs)
                if chunk is not None and job.request.stream:
                    job.emit(Chunk(chunk))
                if builder.all_finished or job.cancelled.is_set():
                    return
        finally:
            steps.close()

    def token_steps(
        self, job: Job, budget: int, inputs: dict[str, Any], config: Any, penalty: Any
    ) -> Generator[tuple[list[int], list[tuple[float, list[tuple[int, float]]]] | None], None, None]:
        """The token step, a plain generator: prefill once, then for each step the next token of
        every choice (and, with logprobs, each one's logprob and top alternatives), one forward per
        token, for as long as the caller reads. With static_cache / compile the KV cache is
        static (sized for ``budget`` more tokens) and (compile) the step is compiled.

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
        self.loaded.adapter.before_request(model)
        processors: list[Any] = [penalty] if penalty is not None else []
        params = job.request.params
        if params.logit_bias:
            processors.append(_LogitBias(params.logit_bias))
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
        rows = params.n
        ids = inputs["input_ids"]
        # n choices: one prefill, then the KV cache is repeated into n rows decoded side by side
        cache = self._kv_cache(int(ids.shape[1]) + budget) if rows == 1 else DynamicCache(config=model.config)
        step = self._step_forward() if rows == 1 else model
        # a seed gives this request its own generator: the same draws whatever else runs
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.loaded.device).manual_seed(params.seed % (1 << 63))
        constraint = self._constraint(job, rows)
        out = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)  # prefill: eager
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
            yield tokens, (_logprobs(raw, tokens, params.logprobs) if params.logprobs is not None else None)
            out = step(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :]

    def _constraint(self, job: Job, rows: int) -> Any:
        """The request's grammar (response_format, forced tool_choice) as a per-step mask."""
        request = job.request
        if request.grammar is None:
            return None
        if self._grammars is None:
            from ._constraints import GrammarCompiler

            loaded = self.loaded
            vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
            self._grammars = GrammarCompiler(loaded.tokenizer, vocab, self.options.any_whitespace)
        return self._grammars.constraint(self._grammars.compile(request.grammar, request.model.id), rows)


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
    request = job.request
    if request.images or request.needs_token_step:
        return None
    adapter = request.adapter[0] if request.adapter else None
    return (adapter, *(getattr(request.params, f) for f in SAMPLING_FIELDS), request.params.n)
