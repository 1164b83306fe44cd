"""What an engine is handed and what it hands back: a prepared request in, typed events out.

Both engines (transformers, vLLM) take the same :class:`Job`: a :class:`PreparedRequest` (prompt
rendered, images decoded, sampling resolved once, as vLLM resolves it) and a function that
receives the job's events, in this order: one :class:`Started`, then (streams only) each
:class:`Chunk`, then one :class:`Done`; a :class:`Failed` can replace any of them and ends the job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import ValidationError, ValidationIssue
from .._models import ModelInfo
from ._constraints import GrammarSpec

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


@dataclass(frozen=True)
class ImageLimits:
    """Tighter image budgets than the checkpoint's own preprocessor bounds (None: the checkpoint's,
    as vLLM). Pixels bound Qwen2.5-VL's resize; tiles bound InternVL's split."""

    max_pixels: int | None = None
    min_pixels: int | None = None
    max_tiles: int | None = None


@dataclass(frozen=True)
class PreparedRequest:
    """One validated chat request, ready for any engine."""

    model: ModelInfo
    prompt: str
    images: tuple[Any, ...]
    """Decoded PIL images, in prompt order (our loader fetched them; engines never fetch)."""
    params: SamplingParams
    stream: bool
    max_model_len: int
    tool_mode: str = "text"
    """How tools shape the answer: "auto", "named" or "required" (hermes calls parsed; the last
    two constrained, see _constraints), "none" (plain content). Without tools: "text"."""
    grammar: GrammarSpec | None = None
    adapter: tuple[str, Any] | None = None  # (name, directory) of a LoRA adapter
    image_limits: ImageLimits = ImageLimits()

    @property
    def needs_token_step(self) -> bool:
        """Per-request parts that only the transformers engine's own token step has."""
        p = self.params
        return p.seed is not None or p.logprobs is not None or bool(p.stop or p.logit_bias) or self.grammar is not None

    def budget(self, prompt_len: int) -> int:
        """Tokens this request may generate: max_tokens, cut to what the context has left (as
        vLLM: output then stops at the context, finish_reason "length"); a ValidationError if the
        prompt alone fills the context."""
        context = self.max_model_len
        if prompt_len >= context:
            raise prompt_too_long(self.model.id, prompt_len, context)
        wanted = self.params.max_tokens
        room = context - prompt_len
        return room if wanted is None else min(int(wanted), room)


def prompt_too_long(model_id: str, prompt_len: int | None, context: int) -> ValidationError:
    size = f"the prompt is {prompt_len} tokens" if prompt_len is not None else "the prompt is longer than that"
    return ValidationError(
        model_id,
        [ValidationIssue("messages", f"This model's maximum context length is {context} tokens; {size}, which leaves no room for output. Shorten the messages or send fewer or smaller images.")],
    )


@dataclass(frozen=True)
class Started:
    """The prompt fit and generation began."""

    prompt_tokens: int


@dataclass(frozen=True)
class Chunk:
    """One ``chat.completion.chunk`` dict (streams only)."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Done:
    """The whole ``chat.completion`` dict; the last event."""

    body: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The job ended with this error (instead of any further event)."""

    error: BaseException


Event = Started | Chunk | Done | Failed


class Cancellable:
    """A job's cancellation, shared by chat and retrieval jobs: ``cancel`` sets ``cancelled``
    once and runs the hooks engines registered (vLLM's abort); a hook registered after the
    cancel runs at once."""

    cancelled: threading.Event
    _on_cancel: list[Callable[[], object]]

    def cancel(self) -> None:
        """Stop this job: the engine ends it at its next step (and vLLM aborts it at once)."""
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        for hook in list(self._on_cancel):
            hook()

    def on_cancel(self, hook: Callable[[], object]) -> None:
        self._on_cancel.append(hook)
        if self.cancelled.is_set():
            hook()


@dataclass
class Job(Cancellable):
    """One request for an engine: what to run, where its events go, and its cancellation."""

    request: PreparedRequest
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    _on_cancel: list[Callable[[], object]] = field(default_factory=list, repr=False)

