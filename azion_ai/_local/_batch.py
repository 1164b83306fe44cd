"""The running rows of one model and their shared KV cache: rows of different lengths decode
together, left-padded, with per-row positions and an attention mask that hides the padding.

Requests are prefilled on their own (images included) into a cache of their own; joining the
batch pads the shorter side on the left and stacks the rows; leaving selects the rows that stay
and drops padding no row needs any more. While no row is padded (a lone request, or rows of equal
length), the decode step gets no mask at all: exactly the lone request's computation.
"""

from __future__ import annotations

from typing import Any


def mergeable(cache: Any) -> bool:
    """A transformers DynamicCache of plain layers (no sliding window): rows can be stacked."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(tensor: Any, amount: int) -> Any:
    import torch.nn.functional as F

    return F.pad(tensor, (0, 0, amount, 0)) if amount else tensor


class KVBatch:
    """One cache for every running row of a model, and each row's left padding."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.pads: list[int] = []

    @property
    def rows(self) -> int:
        return len(self.pads)

    @property
    def width(self) -> int:
        return int(self.cache.get_seq_length()) if self.cache is not None else 0

    def join(self, cache: Any, rows: int) -> None:
        """Add a prefilled cache's rows at the end (the first one is taken as it is: a static
        cache stays static for a lone request)."""
        if self.cache is None or not self.pads:
            self.cache, self.pads = cache, [0] * rows
            return
        width, theirs = self.width, int(cache.get_seq_length())
        total = max(width, theirs)
        import torch

        for mine, other in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, total - width), _pad_left(other.keys, total - theirs)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, total - width), _pad_left(other.values, total - theirs)], dim=0)
        self.pads = [p + total - width for p in self.pads] + [total - theirs] * rows

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order); padding every kept row has is dropped."""
        if not rows:
            self.cache, self.pads = None, []
            return
        if len(rows) == len(self.pads) and rows == list(range(len(self.pads))):
            return
        import torch

        device = self.cache.layers[0].keys.device
        self.cache.batch_select_indices(torch.tensor(rows, dtype=torch.long, device=device))
        pads = [self.pads[r] for r in rows]
        trim = min(pads)
        if trim:
            for layer in self.cache.layers:
                layer.keys = layer.keys[..., trim:, :]
                layer.values = layer.values[..., trim:, :]
        self.pads = [p - trim for p in pads]

    def mask(self, device: Any) -> Any:
        """The attention mask for the next decode step ([rows, width + 1], 0 at padding), or None
        when no row is padded."""
        if not any(self.pads):
            return None
        import torch

        width = self.width + 1
        columns = torch.arange(width, device=device)
        pads = torch.tensor(self.pads, dtype=torch.long, device=device)
        return (columns[None, :] >= pads[:, None]).to(torch.long)
