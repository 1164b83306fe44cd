"""The transformers engine: each loaded model is a runner that its device's one thread steps.

Layers, as in mlx-lm and vLLM: the device worker (_device_worker) owns the thread and calls
:meth:`TransformersEngine.step` between other models' steps; a step admits waiting requests
(each prefilled on its own, images included), samples the next token of every running row
(_sampling: penalties, logit_bias, grammar masks, warpers, seeded draws, all on the model's
device), reads the new ids to the host once, feeds each request's response builder (_response),
drops the rows that finished, and runs one batched decode forward over the rows left (_batch: one
KV cache, rows of different lengths left-padded). Callers only read the events a job emits
(_request).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._exceptions import LocalBackendError, MissingDependencyError, ModelLoadError, ValidationError
from . import _device_worker
from ._batch import KVBatch, mergeable
from ._loading import LoadedModel
from ._request import Chunk, Done, Failed, Job, SamplingParams, Started
from ._response import ResponseBuilder
from ._sampling import Penalties, RowSampler, logprobs

log = logging.getLogger("azion_ai")
progress = logging.getLogger("azion_ai.progress")  # loading, compiling, warming up: shown by `azion-ai serve`


@dataclass(frozen=True)
class TransformersOptions:
    """The transformers engine's speed options (same greedy tokens whatever they are).

    ``max_batch_size``: how many rows (a request's ``n`` choices each count) decode together in
    one forward per step; requests join and leave between steps. ``static_cache``: a static KV
    cache for a lone request; ``compile``: torch.compile of the decode step on top of it
    ("reduce-overhead" on CUDA: CUDA graphs), warmed up at load; both decode one request at a
    time. ``fast_decode=False``: requests without per-request parts run through transformers'
    ``generate()`` (a reference path, one request at a time). ``any_whitespace``: JSON from a
    grammar may hold any whitespace (vLLM's default)."""

    static_cache: bool = False
    compile: bool = False
    max_batch_size: int = 8
    fast_decode: bool = True
    any_whitespace: bool = True


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


@dataclass(eq=False)
class _Running:
    """One request's rows in the running batch (consecutive rows, one per choice)."""

    job: Job
    builder: ResponseBuilder
    sampler: RowSampler
    constraint: Any
    rows: int
    length: int  # tokens in the cache per row (prompt + generated), padding not counted
    delta: int  # rope positions ahead of the token count (Qwen2.5-VL with images)
    adapter: str | None
    logits: Any = None  # [rows, vocab]: the next token's logits, to be sampled
    tokens: Any = None  # [rows, 1]: the tokens just sampled, on the device
    raw: Any = None
    error: BaseException | None = None
    finished: bool = False


def out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError"


class TransformersEngine:
    """One loaded model: its waiting and running requests, stepped by its device's worker."""

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
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[_Running] = []
        self._kv = KVBatch()
        self._closed = False
        self.batch_sizes: list[int] = []  # rows of each decode forward (tests and benchmarks read it)
        self._worker = _device_worker.acquire(loaded.device)
        self._worker.add(self)
        if self.options.compile:
            self._warm_up()

    @property
    def checkpoint(self) -> LoadedModel:
        return self.loaded

    @property
    def alive(self) -> bool:
        return not self._closed and self._worker.alive

    @property
    def device_thread(self) -> int | None:
        """The ident of the thread that runs this model (shared by every model on its device)."""
        return self._worker.ident

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise LocalBackendError(f"the worker for {self.loaded.model_id!r} has stopped (backend closed?)")
        self._worker.post(lambda: self._waiting.append(job))

    def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._worker.alive:
            self._worker.call(self._shutdown)
        _device_worker.release(self._worker)

    def _shutdown(self) -> None:
        closed = LocalBackendError("the local backend was closed while this request ran")
        for job in self._waiting:
            job.emit(Failed(closed))
        for running in self._running:
            running.job.emit(Failed(closed))
        self._waiting.clear()
        self._running = []
        self._kv = KVBatch()
        self._worker.remove(self)

    # -- the step -----------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> None:
        """Admit what fits, then one token for every running row (called by the device worker)."""
        import torch

        with torch.inference_mode():
            self._admit()
            if self._running:
                self._sample()
                self._leave()
            if self._running:
                self._decode()

    def _row_limit(self) -> int:
        if self.options.static_cache or self.options.compile:
            return 1  # the static cache (and the compiled step) serve one request at a time
        return max(1, self.options.max_batch_size)

    def _admit(self) -> None:
        """Waiting jobs join in their order while they fit: rows under max_batch_size, the same
        LoRA adapter as the running rows (peft's adapter is the model's). A job that does not
        fit waits for the rows ahead of it to finish; nothing behind it jumps the queue."""
        limit = self._row_limit()
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                job.emit(Failed(LocalBackendError("request was cancelled before it started")))
                continue
            adapter = job.request.adapter[0] if job.request.adapter else None
            reference = not self.options.fast_decode and not job.request.needs_token_step
            if self._running:
                rows = sum(r.rows for r in self._running)
                if reference or rows + job.request.params.n > limit or adapter != self._running[0].adapter:
                    return
                if not mergeable(self._kv.cache):
                    return
            self._waiting.popleft()
            if reference:
                self._run_generate(job)
                continue
            self._start(job, adapter)

    def _host_inputs(self, job: Job) -> Any:
        """The processor's tensors, made on the host (whatever the thread's default device),
        then moved to the model's device by :meth:`_model_inputs`."""
        import torch

        with torch.device("cpu"):
            return self._prepare(job)

    def _prepare(self, job: Job) -> Any:
        processor = self.loaded.processor
        request = job.request
        kwargs: dict[str, Any] = {"text": [request.prompt], "return_tensors": "pt"}
        if request.images:
            kwargs["images"] = list(request.images)
            # The checkpoint's own preprocessor bounds apply (as in vLLM) unless the backend
            # was given tighter ones.
            kwargs.update(self.loaded.adapter.processor_kwargs(request.image_limits, processor.image_processor.size))
        return processor(**kwargs)

    def _model_inputs(self, inputs: Any) -> dict[str, Any]:
        loaded = self.loaded
        model_inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
        if "pixel_values" in model_inputs and loaded.model.dtype.is_floating_point:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(loaded.model.dtype)
        return model_inputs

    def _start(self, job: Job, adapter: str | None) -> None:
        """Prefill one job on its own (images here) and add its rows to the running batch; a
        failure fails this job only."""
        import torch
        from transformers import DynamicCache

        loaded, model = self.loaded, self.loaded.model
        request = job.request
        params = request.params
        started = False
        try:
            inputs = self._host_inputs(job)
            length = int(inputs["input_ids"].shape[1])
            budget = request.budget(length)
            builder = ResponseBuilder.for_request(loaded, request, budget, length)
            job.emit(Started(builder.prompt_tokens))
            started = True
            if request.stream:
                job.emit(Chunk(builder.first_chunk()))
            model_inputs = self._model_inputs(inputs)
            rows = params.n
            # n choices: one prefill, then the KV cache is repeated into n rows decoded side by side
            alone = rows == 1 and not self._running and (self.options.static_cache or self.options.compile)
            cache = self._kv_cache(length + budget) if alone else DynamicCache(config=model.config)
            # a seed gives this request its own generator: the same draws whatever else runs
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=loaded.device).manual_seed(params.seed % (1 << 63))
            constraint = self._constraint(job, rows)
            with self._adapter_context(job):
                loaded.adapter.before_request(model)
                out = model(**model_inputs, cache=cache, use_cache=True, logits_to_keep=1)
            delta = loaded.adapter.take_rope_delta(model)
            logits = out.logits[:, -1, :]
            if rows > 1:
                cache.batch_repeat_interleave(rows)
                logits = logits.repeat(rows, 1)
            sampler = RowSampler(params, model_inputs["input_ids"], rows, int(logits.shape[-1]), generator)
            self._kv.join(cache, rows)
        except BaseException as exc:  # noqa: BLE001 - this job fails, the batch goes on
            if not started and isinstance(exc, ValidationError):
                job.emit(Failed(exc))
                return
            job.emit(Failed(self._failure(exc, job)))
            return
        self._running.append(_Running(job, builder, sampler, constraint, rows, length, delta, adapter, logits=logits))

    def _sample(self) -> None:
        """Every running row's next token; one host read of the ids for the whole batch."""
        import torch

        chosen = []
        for running in self._running:
            try:
                raw = running.logits.float()
                scores = running.sampler.process(raw)
                if running.constraint is not None:
                    scores = running.constraint.mask(scores.clone())
                running.tokens = running.sampler.choose(scores)
                running.raw = raw if running.job.request.params.logprobs is not None else None
                chosen.append(running.tokens)
            except BaseException as exc:  # noqa: BLE001
                running.error = exc
        if not chosen:
            return
        ids = torch.cat(chosen).view(-1).tolist()
        at = 0
        for running in self._running:
            if running.error is not None:
                continue
            tokens = ids[at : at + running.rows]
            at += running.rows
            job, builder = running.job, running.builder
            try:
                if running.constraint is not None:
                    running.constraint.accept(tokens)
                running.sampler.update(running.tokens)
                top = job.request.params.logprobs
                chunk = builder.step(tokens, logprobs(running.raw, tokens, top) if top is not None else None)
                if chunk is not None and job.request.stream:
                    job.emit(Chunk(chunk))
            except BaseException as exc:  # noqa: BLE001
                running.error = exc
                continue
            running.finished = builder.all_finished or job.cancelled.is_set()

    def _leave(self) -> None:
        """Finished, cancelled and failed requests end here; their rows leave the batch."""
        staying: list[_Running] = []
        keep: list[int] = []
        at = 0
        for running in self._running:
            rows = list(range(at, at + running.rows))
            at += running.rows
            job = running.job
            if running.error is not None:
                job.emit(Failed(self._failure(running.error, job)))
            elif running.finished and job.cancelled.is_set():
                job.emit(Failed(LocalBackendError("request was cancelled")))
            elif running.finished:
                for chunk in running.builder.finish():
                    if job.request.stream:
                        job.emit(Chunk(chunk))
                job.emit(Done(running.builder.completion()))
            else:
                staying.append(running)
                keep.extend(rows)
                continue
        if len(staying) != len(self._running):
            self._kv.keep(keep)
            self._running = staying

    def _decode(self) -> None:
        """One forward for every running row: each row's own position, padding masked."""
        import torch

        loaded, running = self.loaded, self._running
        device = loaded.device
        try:
            tokens = torch.cat([r.tokens for r in running]) if len(running) > 1 else running[0].tokens
            positions = torch.tensor([r.length + r.delta for r in running for _ in range(r.rows)], dtype=torch.long, device=device)
            kwargs: dict[str, Any] = {
                "input_ids": tokens, "cache": self._kv.cache, "use_cache": True, "logits_to_keep": 1,
                "position_ids": loaded.adapter.decode_positions(positions),
            }
            mask = self._kv.mask(device)
            if mask is not None:
                kwargs["attention_mask"] = mask
            forward = self._step_forward() if self._kv.cache is self._static_cache else loaded.model
            self.batch_sizes.append(int(tokens.shape[0]))
            with self._adapter_context(running[0].job):
                out = forward(**kwargs)
            logits = out.logits[:, -1, :]
        except BaseException as exc:  # noqa: BLE001 - every row of the forward was hit
            for r in running:
                r.job.emit(Failed(self._failure(exc, r.job)))
            self._running = []
            self._kv = KVBatch()
            return
        at = 0
        for r in running:
            r.logits = logits[at : at + r.rows]
            r.length += 1
            at += r.rows

    def _failure(self, exc: BaseException, job: Job) -> BaseException:
        """What a failed job is told; out of memory says what to reduce, and memory is given back."""
        log.warning("generation failed on %s: %s", self.loaded.model_id, type(exc).__name__)
        self._free_memory()
        if not out_of_memory(exc):
            return exc
        request = job.request
        what = ["fewer or smaller images" if request.images else "", "a lower max_tokens", "a lower n" if request.params.n > 1 else ""]
        error = LocalBackendError(
            f"{self.loaded.device} ran out of memory running this request ({str(exc).splitlines()[0][:200] if str(exc) else 'OutOfMemoryError'}); "
            f"send {', '.join(w for w in what if w)}, fewer concurrent requests, or set a lower max_batch_size "
            f"(now {self.options.max_batch_size}) or max_image_pixels"
        )
        error.__cause__ = exc
        return error

    def _free_memory(self) -> None:
        try:
            import torch

            if self.loaded.device.type == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass

    # -- pieces -------------------------------------------------------------------------------

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

    def _kv_cache(self, needed: int) -> Any:
        """The runner's static cache, reset, and regrown to the next power of two only when a
        request needs more room (static_cache / compile)."""
        from transformers import StaticCache

        config = self.loaded.model.config
        if self._static_cache is None or self._static_size < needed:
            self._static_cache = None  # free the old one first
            self._static_size = max(256, 1 << (needed - 1).bit_length())
            self._static_cache = StaticCache(config=config, max_cache_len=self._static_size)
        else:
            self._static_cache.reset()
        return self._static_cache

    def _step_forward(self) -> Any:
        """The model's forward for one token; with compile, torch.compile'd once per model
        ("reduce-overhead" on CUDA: the step is replayed as CUDA graphs, on the device thread)."""
        if not self.options.compile:
            return self.loaded.model
        if self._compiled_forward is None:
            import torch

            mode = "reduce-overhead" if self.loaded.device.type == "cuda" else None
            self._compiled_forward = torch.compile(self.loaded.model.forward, mode=mode, dynamic=False, fullgraph=False)
        return self._compiled_forward

    def _constraint(self, job: Job, rows: int) -> Any:
        """The request's grammar (response_format, forced tool_choice) as a per-step mask: host
        work (xgrammar fills its bitmask on the CPU; the mask moves it to the logits' device)."""
        import torch

        request = job.request
        if request.grammar is None:
            return None
        with torch.device("cpu"):
            if self._grammars is None:
                from ._constraints import GrammarCompiler

                loaded = self.loaded
                vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
                self._grammars = GrammarCompiler(loaded.tokenizer, vocab, self.options.any_whitespace)
            return self._grammars.constraint(self._grammars.compile(request.grammar, request.model.id), rows)

    def _warm_up(self) -> None:
        """compile=True: compile (on CUDA, capture) the decode step now, on the device thread,
        with a short greedy request, so the first real request does not pay for it."""
        import threading

        from .._models import get_model
        from ._request import PreparedRequest

        began = time.monotonic()
        progress.info("%s: compiling the decode step (torch.compile, once per process and shape; this can take a minute)", self.loaded.model_id)
        done = threading.Event()
        failures: list[BaseException] = []

        def emit(event: Any) -> None:
            if isinstance(event, Failed):
                failures.append(event.error)
            if isinstance(event, (Done, Failed)):
                done.set()

        request = PreparedRequest(
            model=get_model(self.loaded.model_id), prompt="warm up", images=(),
            params=SamplingParams.resolve({"max_tokens": 3, "temperature": 0}), stream=False, max_model_len=256,
        )
        self.submit(Job(request, emit))
        done.wait()
        if failures:
            progress.warning("%s: warm-up failed (%s); the first request will compile", self.loaded.model_id, failures[0])
        else:
            progress.info("%s: decode step compiled and warmed up in %.1f s", self.loaded.model_id, time.monotonic() - began)

    # -- the reference path: generate() -------------------------------------------------------

    def _run_generate(self, job: Job) -> None:
        """fast_decode=False: one request through transformers' generate() (a reference for the
        token step's output; it holds the device thread until it ends)."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        loaded = self.loaded
        try:
            inputs = self._host_inputs(job)
            length = int(inputs["input_ids"].shape[1])
            try:
                budget = job.request.budget(length)
            except ValidationError as exc:
                job.emit(Failed(exc))
                return
            builder = ResponseBuilder.for_request(loaded, job.request, budget, length)
            job.emit(Started(builder.prompt_tokens))
            if job.request.stream:
                job.emit(Chunk(builder.first_chunk()))
            params = job.request.params
            sample = not params.greedy
            # Every sampling field is set explicitly (already resolved against the checkpoint's
            # defaults as vLLM does): transformers would otherwise fill unset ones by its own rules.
            config = GenerationConfig(
                max_new_tokens=budget, do_sample=sample,
                temperature=params.temperature if sample else 1.0, top_p=params.top_p if sample else 1.0,
                top_k=params.top_k if sample and params.top_k else None, min_p=params.min_p if sample and params.min_p > 0 else None,
                num_return_sequences=params.n, eos_token_id=loaded.eos_token_ids, pad_token_id=loaded.pad_token_id,
                repetition_penalty=1.0,  # applied by Penalties, as vLLM does
            )
            model_inputs = self._model_inputs(inputs)
            processors = []
            if Penalties.wanted(params):
                width = int(loaded.model.get_output_embeddings().weight.shape[0])
                processors.append(_GeneratePenalties(Penalties(params, model_inputs["input_ids"], params.n, width), length))
            sink = _Sink([job], [builder], params.n)
            with self._adapter_context(job):
                loaded.adapter.before_request(loaded.model)
                loaded.model.generate(
                    **model_inputs, generation_config=config, logits_processor=LogitsProcessorList(processors),
                    stopping_criteria=StoppingCriteriaList([sink]), streamer=sink,
                )
        except BaseException as exc:  # noqa: BLE001
            job.emit(Failed(self._failure(exc, job)))
            return
        if job.cancelled.is_set():
            job.emit(Failed(LocalBackendError("request was cancelled")))
            return
        for chunk in builder.finish():
            if job.request.stream:
                job.emit(Chunk(chunk))
        job.emit(Done(builder.completion()))


@dataclass
class _GeneratePenalties:
    """generate()'s logits-processor protocol over :class:`Penalties` (counted as tokens come)."""

    penalties: Penalties
    length: int

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.length:
            self.penalties.update(input_ids[:, -1:])
            self.length = int(input_ids.shape[1])
        return self.penalties(scores)
