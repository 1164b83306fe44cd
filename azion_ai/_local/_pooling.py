"""The retrieval models' request side, shared by both engines: a pooling checkpoint (no weights),
a payload turned into token-id prompts as vLLM's server tokenizes them, and the engine's numbers
turned back into vLLM's answers (``/v1/embeddings``, ``/v1/rerank``, ``/v1/score``).

Qwen3-Embedding: each input is one prompt (a text through the tokenizer, whose post-processor
appends ``<|endoftext|>``, or token ids as given); the engine pools the last token, keeps the
first ``dimensions`` values (Matryoshka) and L2-normalises. bge-reranker-v2-m3: each (query,
document) pair is one prompt, ``<s> q </s></s> d </s>``; the engine returns the sigmoid of the
classification head's logit. vLLM's rules are followed where they show: the context check and its
wording, the ``dimensions`` range, ``max_tokens_per_doc``, the 1:1 / 1:N / N:N pairing, usage.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._exceptions import ModelLoadError, ValidationError, ValidationIssue
from .._models import ModelInfo
from ._loading import _WEIGHT_FILES, _read_config, import_torch
from ._request import Cancellable, Event

# What each kind of retrieval model needs from its directory, and vLLM's pooling task for it.
_ARCHITECTURES = {
    "embeddings": ({"qwen3"}, {"Qwen3ForCausalLM", "Qwen3Model"}, "embed"),
    "rerank": ({"xlm-roberta"}, {"XLMRobertaForSequenceClassification"}, "classify"),
}
POOLING_KINDS = tuple(_ARCHITECTURES)


@dataclass(kw_only=True)
class PoolingCheckpoint:
    """A retrieval model directory's request side: its tokenizer and the facts both engines need.
    No weights are loaded for it."""

    model_id: str
    kind: str
    """The registry's kind: ``embeddings`` or ``rerank``."""
    path: Path
    config: dict[str, Any]
    tokenizer: Any
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int | None
    max_chars_per_token: int
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Held while tokenizing: a fast tokenizer's truncation settings are shared state."""

    @property
    def task(self) -> str:
        """vLLM's pooling task: ``embed`` or ``classify``."""
        return _ARCHITECTURES[self.kind][2]

    def context_length(self, wanted: int) -> int:
        """The context vLLM gives this checkpoint: ``wanted``, cut to its position table (XLM-R
        keeps two positions for its padding offset)."""
        limit = self.max_position_embeddings
        if limit and self.config.get("model_type") == "xlm-roberta":
            limit -= int(self.config.get("pad_token_id", 1)) + 1
        return min(wanted, limit) if limit else wanted


def load_pooling_checkpoint(model_id: str, kind: str, path: str | Path) -> PoolingCheckpoint:
    """Check a retrieval model's directory (naming the file or field) and read its tokenizer."""
    import_torch()
    directory = Path(path).expanduser()
    config = _read_config(directory)
    model_types, architectures, _ = _ARCHITECTURES[kind]
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise ModelLoadError(f"{directory / 'config.json'}: model_type is {model_type!r}, but {model_id} needs {' or '.join(map(repr, sorted(model_types)))}")
    named = set(config.get("architectures") or ())
    if named and not named & architectures:
        raise ModelLoadError(f"{directory / 'config.json'}: architectures {sorted(named)} are not {' or '.join(sorted(architectures))}")
    if kind == "rerank" and int(config.get("num_labels", len(config.get("id2label") or {0: 0}))) != 1:
        raise ModelLoadError(f"{directory / 'config.json'}: a reranker has one label (the relevance logit); this one has {len(config.get('id2label') or {})}")
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(f"{str(directory)!r} has no weights ({' / '.join(_WEIGHT_FILES[:2])})")
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(f"{str(directory)!r} has no tokenizer (tokenizer.json)")
    if kind == "embeddings":
        _check_sentence_transformers(directory)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {model_id!r} from {str(directory)!r}: {exc}") from None
    vocab = tokenizer.get_vocab()
    positions = config.get("max_position_embeddings")
    return PoolingCheckpoint(
        model_id=model_id,
        kind=kind,
        path=directory,
        config=config,
        tokenizer=tokenizer,
        hidden_size=int(config["hidden_size"]),
        vocab_size=int(config.get("vocab_size") or len(tokenizer)),
        max_position_embeddings=int(positions) if positions else None,
        max_chars_per_token=max(len(token) for token in vocab),  # vLLM's bound on text length
    )


def _check_sentence_transformers(directory: Path) -> None:
    """Qwen3-Embedding pools the last token and normalises; a modules.json that says otherwise
    describes another model, which this backend would answer for wrongly."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return  # vLLM's default for a converted decoder: the last token, normalised
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        pooling = next((m for m in modules if m.get("type", "").endswith("models.Pooling")), None)
        settings = json.loads((directory / pooling["path"] / "config.json").read_text(encoding="utf-8")) if pooling else {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{modules_file}: cannot read the sentence-transformers modules ({exc})") from None
    if pooling and not (settings.get("pooling_mode_lasttoken") or settings.get("pooling_mode") == "lasttoken"):
        raise ModelLoadError(f"{directory / pooling['path'] / 'config.json'}: this model pools otherwise than by the last token, as Qwen3-Embedding does")
    if not any(str(m.get("type", "")).endswith("models.Normalize") for m in modules):
        raise ModelLoadError(f"{modules_file}: no Normalize module; Qwen3-Embedding's embeddings are L2-normalised")


@dataclass(frozen=True)
class PoolingRequest:
    """One validated retrieval request, ready for either engine: its prompts as token ids and
    what the answer needs."""

    model: ModelInfo
    endpoint: str
    """``embeddings``, ``rerank`` or ``score``."""
    task: str
    prompts: tuple[tuple[int, ...], ...]
    dimensions: int | None = None
    encoding_format: str = "float"
    documents: tuple[str, ...] = ()
    top_n: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def _issue(model: ModelInfo, where: str, message: str) -> ValidationError:
    return ValidationError(model.id, [ValidationIssue(where, message)])


def _too_long(model: ModelInfo, where: str, count: int, context: int, at_least: bool) -> ValidationError:
    qualifier = "at least " if at_least else ""
    return _issue(
        model,
        where,
        f"This model's maximum context length is {context} tokens. However, your prompt contains {qualifier}{count} "
        "input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt.",
    )


def prepare(checkpoint: PoolingCheckpoint, model: ModelInfo, endpoint: str, payload: Mapping[str, Any], max_model_len: int) -> PoolingRequest:
    """The payload as prompts, with vLLM's refusals (each a ValidationError, HTTP 400 from serve)."""
    context = checkpoint.context_length(max_model_len)
    with checkpoint.lock:
        if endpoint == "embeddings":
            return _prepare_embeddings(checkpoint, model, payload, context)
        return _prepare_pairs(checkpoint, model, endpoint, payload, context)


def _text_limit(checkpoint: PoolingCheckpoint, model: ModelInfo, where: str, text: str, context: int) -> None:
    """vLLM refuses a text longer than the context times its tokenizer's longest token before
    tokenizing it."""
    limit = context * checkpoint.max_chars_per_token
    if len(text) > limit:
        raise _issue(
            model,
            where,
            f"This model's maximum context length is {context} tokens. However, your prompt contains {len(text)} characters "
            f"(more than {limit} characters, which is the upper bound for {context} input tokens). Please reduce the length of the input prompt.",
        )


def _prepare_embeddings(checkpoint: PoolingCheckpoint, model: ModelInfo, payload: Mapping[str, Any], context: int) -> PoolingRequest:
    raw = payload.get("input")
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        items = list(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        items = [list(raw)]  # one prompt of token ids
    elif isinstance(raw, list) and raw and all(isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in raw):
        items = [list(x) for x in raw]
    elif isinstance(raw, list) and not raw:
        raise _issue(model, "input", "input is empty: send a string, a list of strings, or token ids")
    else:
        raise _issue(model, "input", "input must be a string, a list of strings, a list of token ids, or a list of lists of token ids (not a mix)")
    tokenizer = checkpoint.tokenizer
    prompts: list[tuple[int, ...]] = []
    for i, item in enumerate(items):
        where = "input" if isinstance(raw, str) else f"input[{i}]"
        if isinstance(item, str):
            _text_limit(checkpoint, model, where, item, context)
            ids = tokenizer(item, add_special_tokens=True, truncation=True, max_length=context + 1)["input_ids"]
            if len(ids) > context:
                raise _too_long(model, where, len(ids), context, at_least=len(ids) == context + 1)
        else:
            ids = item
            if not ids:
                raise _issue(model, where, "an empty list of token ids has nothing to embed")
            bad = next((t for t in ids if not 0 <= t < checkpoint.vocab_size), None)
            if bad is not None:
                raise _issue(model, where, f"token id {bad} is outside the vocabulary ({checkpoint.vocab_size} tokens)")
            if len(ids) > context:
                raise _too_long(model, where, len(ids), context, at_least=len(ids) == context + 1)
        prompts.append(tuple(int(t) for t in ids))
    dimensions = payload.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= checkpoint.hidden_size):
        raise _issue(model, "dimensions", f"Model {model.id!r} only supports dimensions in range [1, {checkpoint.hidden_size}], got {dimensions}.")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise _issue(model, "encoding_format", f"encoding_format must be 'float' or 'base64', got {encoding!r}")
    return PoolingRequest(model=model, endpoint="embeddings", task="embed", prompts=tuple(prompts), dimensions=dimensions, encoding_format=encoding)


def _texts(model: ModelInfo, where: str, value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _issue(model, where, f"{where} must be a string or a list of strings")
    return list(values)


def _truncate_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The text cut at the character where its first ``max_tokens`` tokens end (vLLM's
    ``max_tokens_per_doc``: cut the text, never re-join decoded tokens)."""
    while text:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        if len(encoding["input_ids"]) <= max_tokens:
            break
        end = min(offsets[max_tokens - 1][1], offsets[max_tokens][0])
        text = text[: min(end, len(text) - 1)]
    return text


def _prepare_pairs(checkpoint: PoolingCheckpoint, model: ModelInfo, endpoint: str, payload: Mapping[str, Any], context: int) -> PoolingRequest:
    if endpoint == "rerank":
        queries, documents = _texts(model, "query", payload.get("query")), _texts(model, "documents", payload.get("documents"))
        first, second = "query", "documents"
    else:
        queries, documents = _texts(model, "text_1", payload.get("text_1")), _texts(model, "text_2", payload.get("text_2"))
        first, second = "text_1", "text_2"
    if len(queries) > 1 and len(queries) != len(documents):
        raise _issue(model, first, "Input lengths must be either 1:1, 1:N or N:N")
    if not queries:
        raise _issue(model, first, "At least one text element must be given")
    if not documents:
        raise _issue(model, second, "At least one text_pair element must be given")
    top_n = payload.get("top_n", 0) if endpoint == "rerank" else 0
    if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
        raise _issue(model, "top_n", f"top_n must be an integer >= 0 (0: every document), got {top_n!r}")
    per_doc = payload.get("max_tokens_per_doc", 0) if endpoint == "rerank" else 0
    if not isinstance(per_doc, int) or isinstance(per_doc, bool) or per_doc < 0:
        raise _issue(model, "max_tokens_per_doc", "max_tokens_per_doc must be a non-negative integer")
    if per_doc >= context:
        raise _issue(model, "max_tokens_per_doc", f"max_tokens_per_doc ({per_doc}) must be less than max_model_len ({context}).")
    tokenizer = checkpoint.tokenizer
    if len(queries) == 1:
        queries = queries * len(documents)
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    prompts: list[tuple[int, ...]] = []
    for i, (query, document) in enumerate(zip(queries, documents, strict=True)):
        where = f"{second}[{i}]"
        kwargs: dict[str, Any] = {"truncation": True, "max_length": context + 1}
        if per_doc > 0:
            document = _truncate_text(tokenizer, document, per_doc)
            query_len = len(tokenizer(query, add_special_tokens=False)["input_ids"])
            kwargs = {"truncation": "only_second", "max_length": min(query_len + per_doc + specials, context + 1)}
        ids = tokenizer(text=query, text_pair=document, add_special_tokens=True, **kwargs)["input_ids"]
        if len(ids) > context:
            raise _too_long(model, where, len(ids), context, at_least=len(ids) == context + 1)
        prompts.append(tuple(int(t) for t in ids))
    return PoolingRequest(
        model=model, endpoint=endpoint, task="classify", prompts=tuple(prompts), documents=tuple(documents) if endpoint == "rerank" else (), top_n=top_n
    )


def _floats_base64(values: Sequence[float]) -> str:
    """vLLM's base64 embedding: the float32 values' bytes, little-endian (x86 and ARM's native
    order), base64-encoded (what openai-python decodes)."""
    import numpy as np

    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def respond(request: PoolingRequest, outputs: Sequence[Any]) -> dict[str, Any]:
    """vLLM's answer for ``outputs`` (per prompt: an embedding as a list of floats, or a score)."""
    tokens = request.prompt_tokens
    model = request.model.id
    if request.endpoint == "embeddings":
        encode = _floats_base64 if request.encoding_format == "base64" else list
        return {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": [{"index": i, "object": "embedding", "embedding": encode(vector)} for i, vector in enumerate(outputs)],
            "usage": _usage(tokens),
        }
    scores = [float(s) for s in outputs]
    if request.endpoint == "score":
        return {
            "id": f"score-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": _usage(tokens),
        }
    results: list[dict[str, Any]] = [{"index": i, "document": {"text": request.documents[i], "multi_modal": None}, "relevance_score": s} for i, s in enumerate(scores)]
    results.sort(key=lambda r: r["relevance_score"], reverse=True)  # stable: ties keep input order, as vLLM
    if 0 < request.top_n < len(results):
        results = results[: request.top_n]
    return {"id": f"score-{uuid.uuid4().hex}", "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "results": results}


def _usage(tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None, "completion_tokens_details": None}


@dataclass
class PoolingJob(Cancellable):
    """One retrieval request for an engine: its events are ``Started`` then ``Done`` (or
    ``Failed``), as a chat job's without chunks."""

    request: PoolingRequest
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    _on_cancel: list[Callable[[], object]] = field(default_factory=list, repr=False)


class PoolingEngine(Protocol):
    """One loaded retrieval model, answering pooling jobs until :meth:`stop`."""

    name: str

    @property
    def checkpoint(self) -> PoolingCheckpoint: ...

    @property
    def alive(self) -> bool: ...

    def submit(self, job: PoolingJob) -> None: ...

    def stop(self) -> None: ...
