"""The model registry: what each Azion model id is, what it can do, and its payload schema.

Every model on Azion's pages is registered from ``schemas/catalogue.json``; their JSON Schemas
are stored as published in ``schemas/`` (shipped inside the wheel as ``azion_ai/schemas``; the
pages' quirks are documented in docs/models.md). Users add models with
:func:`register_model` as Azion publishes them, without editing the package.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._exceptions import UnknownModelError

__all__ = ["ModelInfo", "register_model", "get_model", "list_models"]

QWEN25_VL_3B_AWQ = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL3_1B = "opengvlab-internvl3-1b-instruct"
QWEN3_EMBEDDING_4B = "qwen-qwen3-embedding-4b"
BGE_RERANKER_V2_M3 = "baai-bge-reranker-v2-m3"


@dataclass(frozen=True)
class ModelInfo:
    """A model Azion serves: its id, capabilities and payload schema (draft-07 JSON Schema)."""

    id: str
    schema: Mapping[str, Any] = field(repr=False)
    context_length: int
    tool_calling: bool = False
    lora: bool = False
    input_modalities: tuple[str, ...] = ("text",)
    name: str = ""
    hf_repo: str = ""
    category: str = "LLM"
    size: str = ""
    license: str = ""
    family: str | None = None
    """Architecture family the local backend uses to load it (``qwen2_5_vl``, ``internvl``)."""
    kind: str = "chat"
    """What it answers: ``chat`` (/chat/completions), ``embeddings`` (/embeddings) or ``rerank``
    (/rerank, and /score for the ``{text_1, text_2}`` shape)."""
    aliases: tuple[str, ...] = ()
    """Other ids Azion's pages use for it (``Qwen/Qwen3-Embedding-4B``)."""

    @property
    def supports_images(self) -> bool:
        return "image" in self.input_modalities


def _schema_dir() -> Path:
    packaged = Path(__file__).with_name("schemas")
    if packaged.is_dir():  # installed wheel
        return packaged
    return Path(__file__).resolve().parent.parent / "schemas"  # source checkout / editable


def load_bundled_schema(model_id: str) -> dict[str, Any]:
    path = _schema_dir() / f"{model_id}.json"
    with path.open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


KINDS = ("chat", "embeddings", "rerank")
_lock = threading.Lock()
_registry: dict[str, ModelInfo] = {}
_aliases: dict[str, str] = {}


def register_model(info: ModelInfo, *, replace: bool = False) -> ModelInfo:
    """Add a model to the registry (``replace=True`` to redefine an existing id)."""
    if not isinstance(info, ModelInfo):
        raise TypeError("register_model() takes a ModelInfo")
    if not isinstance(info.schema, Mapping) or info.schema.get("type") != "object":
        raise ValueError(f"model {info.id!r}: schema must be a JSON Schema object with type 'object'")
    if info.context_length < 1:
        raise ValueError(f"model {info.id!r}: context_length must be positive")
    frozen = MappingProxyType(dict(info.schema))
    info = ModelInfo(**{**info.__dict__, "schema": frozen})
    if info.kind not in KINDS:
        raise ValueError(f"model {info.id!r}: kind must be one of {', '.join(KINDS)}, got {info.kind!r}")
    with _lock:
        if info.id in _registry and not replace:
            raise ValueError(f"model {info.id!r} is already registered (pass replace=True)")
        _registry[info.id] = info
        for alias in info.aliases:
            _aliases[alias] = info.id
    return info


def get_model(model_id: str) -> ModelInfo:
    """The registered model with this id, or :class:`UnknownModelError` listing the known ids."""
    try:
        return _registry[model_id] if model_id in _registry else _registry[_aliases[model_id]]
    except (KeyError, TypeError):
        raise UnknownModelError(str(model_id), sorted(_registry)) from None


def list_models() -> list[ModelInfo]:
    return [_registry[k] for k in sorted(_registry)]


def _register_catalogue() -> None:
    """Every model on Azion's pages, from ``schemas/catalogue.json`` (data, not code)."""
    with (_schema_dir() / "catalogue.json").open(encoding="utf-8") as fh:
        catalogue = json.load(fh)
    for entry in catalogue["models"]:
        entry = dict(entry)
        schema_file = entry.pop("schema")
        with (_schema_dir() / schema_file).open(encoding="utf-8") as fh:
            schema = json.load(fh)
        entry["input_modalities"] = tuple(entry["input_modalities"])
        entry["aliases"] = tuple(entry.get("aliases", ()))
        register_model(ModelInfo(schema=schema, **entry))


def endpoint(model: ModelInfo, payload: Mapping[str, Any]) -> str:
    """The OpenAI-style path a request goes to, by the model's kind (and, for rerank models,
    the payload's shape)."""
    if model.kind == "embeddings":
        return "embeddings"
    if model.kind == "rerank":
        return "score" if "text_1" in payload and "query" not in payload else "rerank"
    return "chat/completions"


def score_schema() -> dict[str, Any]:
    """The ``{text_1, text_2}`` score request that the reranker's page shows (its own schema
    requires ``query`` and ``documents``): accepted for rerank models, sent to ``/score``."""
    return load_bundled_schema("score-payload")


_register_catalogue()
