"""The model registry: what each Azion model id is, what it can do, and its payload schema.

The two seed models come from Azion's model pages; their JSON Schemas are stored verbatim in
``schemas/`` (shipped inside the wheel as ``azion_ai/schemas``). Users add models with
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


_lock = threading.Lock()
_registry: dict[str, ModelInfo] = {}


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
    with _lock:
        if info.id in _registry and not replace:
            raise ValueError(f"model {info.id!r} is already registered (pass replace=True)")
        _registry[info.id] = info
    from ._validation import forget_validator

    forget_validator(info.id)
    return info


def get_model(model_id: str) -> ModelInfo:
    """The registered model with this id, or :class:`UnknownModelError` listing the known ids."""
    try:
        return _registry[model_id]
    except (KeyError, TypeError):
        raise UnknownModelError(str(model_id), sorted(_registry)) from None


def list_models() -> list[ModelInfo]:
    return [_registry[k] for k in sorted(_registry)]


def _register_seed_models() -> None:
    register_model(
        ModelInfo(
            id=QWEN25_VL_3B_AWQ,
            schema=load_bundled_schema(QWEN25_VL_3B_AWQ),
            name="Qwen2.5 VL AWQ 3B",
            hf_repo="Qwen/Qwen2.5-VL-3B-Instruct-AWQ",
            category="VLM",
            size="3B",
            context_length=32768,
            tool_calling=True,
            lora=True,
            input_modalities=("text", "image"),
            license="Apache 2.0",
            family="qwen2_5_vl",
        )
    )
    register_model(
        ModelInfo(
            id=INTERNVL3_1B,
            schema=load_bundled_schema(INTERNVL3_1B),
            name="InternVL3 Instruct 1B",
            hf_repo="OpenGVLab/InternVL3-1B-Instruct",  # Azion's page; original layout, loaded without remote code
            category="VLM",
            size="1B",
            context_length=16384,
            tool_calling=False,
            lora=False,  # Azion's page: "Supports LoRA ❌" (the local backend can still load adapters)
            input_modalities=("text", "image"),
            license="Apache 2.0",
            family="internvl",
        )
    )


_register_seed_models()
