"""What differs between the model families the local backend runs, in one place: one adapter per
family (Qwen2.5-VL, InternVL3), chosen once when a model loads. Loading, both engines and the
prompt side ask the adapter; nothing else branches on the family."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._request import ImageLimits


@dataclass(frozen=True)
class Family:
    name: str
    """The registry's ``family`` (schemas/catalogue.json)."""
    model_types: tuple[str, ...]
    """config.json ``model_type`` values of the layout transformers and vLLM load."""
    model_class: str
    """The transformers class that loads it."""
    image_placeholder: str
    """vLLM's placeholder for one image (its models' get_placeholder_str): what a template that
    does not place images gets in front of the text."""
    original_layout: str | None = None
    """The ``model_type`` of a layout converted (no remote code) before loading, if any."""

    def processor_kwargs(self, limits: ImageLimits, size: Mapping[str, int]) -> dict[str, Any]:
        """The Hugging Face processor's keyword arguments for tighter image budgets than the
        checkpoint's own (both engines pass them: transformers directly, vLLM as
        ``mm_processor_kwargs``)."""
        return {}

    def before_request(self, model: Any) -> None:
        """Reset what a model keeps between requests (the transformers engine's token step)."""
        return None

    def take_rope_delta(self, model: Any) -> int:
        """After a prefill: how far the request's rope positions run ahead of its token count
        (Qwen2.5-VL's 3D rope with images), taken off the model so no other request sees it."""
        return 0

    def decode_positions(self, positions: Any) -> Any:
        """The ``position_ids`` of one decode step from each row's position ([rows] tensor)."""
        return positions.view(-1, 1)


@dataclass(frozen=True)
class _Qwen25VL(Family):
    def processor_kwargs(self, limits: ImageLimits, size: Mapping[str, int]) -> dict[str, Any]:
        if not limits.max_pixels and limits.min_pixels is None:
            return {}
        bounds = dict(size)
        if limits.max_pixels:
            bounds["longest_edge"] = limits.max_pixels
        if limits.min_pixels is not None:
            bounds["shortest_edge"] = limits.min_pixels
        bounds["shortest_edge"] = min(bounds["shortest_edge"], bounds["longest_edge"])
        return {"size": bounds}

    def before_request(self, model: Any) -> None:
        inner: Any = getattr(model, "model", None)
        if getattr(inner, "rope_deltas", None) is not None:
            inner.rope_deltas = None  # the last request's 3D-rope offsets, kept on the model

    def take_rope_delta(self, model: Any) -> int:
        inner: Any = getattr(model, "model", None)
        delta = getattr(inner, "rope_deltas", None)
        if delta is None:
            return 0
        inner.rope_deltas = None
        return int(delta.reshape(-1)[0])

    def decode_positions(self, positions: Any) -> Any:
        rows = positions.shape[0]
        return positions.view(1, rows, 1).expand(3, rows, 1)  # temporal, height, width: text tokens share one


@dataclass(frozen=True)
class _InternVL(Family):
    def processor_kwargs(self, limits: ImageLimits, size: Mapping[str, int]) -> dict[str, Any]:
        return {"max_patches": limits.max_tiles} if limits.max_tiles else {}


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": _Qwen25VL(
        "qwen2_5_vl", ("qwen2_5_vl",), "Qwen2_5_VLForConditionalGeneration", "<|vision_start|><|image_pad|><|vision_end|>"
    ),
    "internvl": _InternVL("internvl", ("internvl",), "InternVLForConditionalGeneration", "<IMG_CONTEXT>", original_layout="internvl_chat"),
}
