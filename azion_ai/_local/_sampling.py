"""Per-request sampling state on the model's device: penalties, logit_bias, warpers, seeded draws,
logprobs.

One :class:`RowSampler` per request (its ``n`` rows). Every tensor it makes is made on the device
of the tensors it is handed (the prompt ids, the logits), never on a default device, so it runs
the same on CPU, CUDA or ``meta`` (the tests drive it there). Penalties keep running state (which
tokens a row has seen, how often it produced each) updated with each new token, rather than
rescanning the whole sequence every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._request import SamplingParams


class Penalties:
    """vLLM's penalties, in its order: ``repetition_penalty`` over the prompt and the output
    (positive logits divided, negative ones multiplied), then the OpenAI ``frequency_penalty`` and
    ``presence_penalty`` over the output alone. ``prompt_ids`` [1 or rows, length] holds the real
    prompt tokens (no padding); the state lives on its device."""

    def __init__(self, params: SamplingParams, prompt_ids: Any, rows: int, width: int) -> None:
        import torch

        self.repetition = params.repetition_penalty
        self.presence = params.presence_penalty
        self.frequency = params.frequency_penalty
        device = prompt_ids.device
        self.seen: Any = None  # bool [rows, width]: tokens in the prompt or the output so far
        self.counts: Any = None  # float [rows, width]: how often each token was generated
        if self.repetition != 1.0:
            self.seen = torch.zeros(rows, width, dtype=torch.bool, device=device)
            self.seen.scatter_(1, prompt_ids.expand(rows, -1), True)
        if self.presence or self.frequency:
            self.counts = torch.zeros(rows, width, dtype=torch.float32, device=device)

    @staticmethod
    def wanted(params: SamplingParams) -> bool:
        return params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty)

    def __call__(self, scores: Any) -> Any:
        import torch

        if self.seen is not None:
            penalised = torch.where(scores > 0, scores / self.repetition, scores * self.repetition)
            scores = torch.where(self.seen, penalised, scores)
        if self.counts is not None:
            counts = self.counts.to(scores.dtype)
            scores = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        return scores

    def update(self, tokens: Any) -> None:
        """Count the rows' new tokens ([rows, 1], on the device)."""
        import torch

        if self.seen is not None:
            self.seen.scatter_(1, tokens, True)
        if self.counts is not None:
            self.counts.scatter_add_(1, tokens, torch.ones(tokens.shape, dtype=self.counts.dtype, device=tokens.device))


class LogitBias:
    """OpenAI's ``logit_bias``: a fixed amount added to chosen tokens' logits (after the
    penalties, before temperature), as vLLM applies it; ids outside the vocabulary are refused
    before generation. The amounts are one dense row, built once on the logits' device."""

    def __init__(self, bias: Sequence[tuple[int, float]]) -> None:
        self.bias = tuple(bias)
        self._row: Any = None

    def __call__(self, scores: Any) -> Any:
        import torch

        row = self._row
        if row is None or row.device != scores.device or row.dtype != scores.dtype or row.shape[-1] != scores.shape[-1]:
            row = torch.zeros(scores.shape[-1], dtype=scores.dtype, device=scores.device)
            ids = torch.tensor([t for t, _ in self.bias], dtype=torch.long, device=scores.device)
            amounts = torch.tensor([a for _, a in self.bias], dtype=scores.dtype, device=scores.device)
            row.index_add_(0, ids, amounts)
            self._row = row
        return scores + row


class RowSampler:
    """One request's rows: its logits processors (penalties, logit_bias), its warpers
    (temperature, top-k, top-p, min-p, in generate()'s order, with transformers' own warpers) and
    its draw (argmax, or a multinomial draw from its own generator when it has a seed)."""

    def __init__(self, params: SamplingParams, prompt_ids: Any, rows: int, width: int, generator: Any = None) -> None:
        from transformers import (
            MinPLogitsWarper,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.penalties = Penalties(params, prompt_ids, rows, width) if Penalties.wanted(params) else None
        self.bias = LogitBias(params.logit_bias) if params.logit_bias else None
        self.sample = not params.greedy
        self.generator = generator
        self.warpers: list[Any] = []
        if self.sample:
            if params.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                self.warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(params.top_p))
            if params.min_p > 0:
                self.warpers.append(MinPLogitsWarper(params.min_p))

    def process(self, scores: Any) -> Any:
        """Penalties, then logit_bias: what a grammar mask is applied to."""
        if self.penalties is not None:
            scores = self.penalties(scores)
        if self.bias is not None:
            scores = self.bias(scores)
        return scores

    def choose(self, scores: Any) -> Any:
        """The next token of each row, [rows, 1] on the scores' device (no host read here)."""
        import torch

        if not self.sample:
            return scores.argmax(dim=-1, keepdim=True)
        for warp in self.warpers:
            scores = warp(None, scores)
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=self.generator)

    def update(self, tokens: Any) -> None:
        if self.penalties is not None:
            self.penalties.update(tokens)


def logprobs(raw: Any, tokens: Sequence[int], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each row's chosen-token logprob and its ``top`` best alternatives, from the model's raw
    logits (before penalties and temperature), as vLLM reports them."""
    import torch

    values = torch.log_softmax(raw, dim=-1)
    out = []
    for row, token in enumerate(tokens):
        best = torch.topk(values[row], top) if top else None
        alternatives = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else []
        out.append((float(values[row, token]), alternatives))
    return out
