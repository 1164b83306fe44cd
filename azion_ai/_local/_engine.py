"""The engine interface: what the local backend asks of whatever runs a model's weights.

Two engines implement it: ``transformers`` (our own token step on transformers, the default,
_engine_transformers) and ``vllm`` (vLLM's async engine in this process, _engine_vllm). The
backend renders the prompt, fetches the images and resolves sampling once (_request); an
engine runs the :class:`~._request.Job` and emits its typed events; both shape answers with the
same builder (_response), so they answer alike.
"""

from __future__ import annotations

from typing import Protocol

from ._loading import Checkpoint
from ._request import Job

ENGINES = ("transformers", "vllm")


class Engine(Protocol):
    """One loaded model, answering jobs until :meth:`stop`."""

    name: str
    """"transformers" or "vllm"."""

    @property
    def checkpoint(self) -> Checkpoint:
        """The model's prompt side: tokenizer, templates, sampling defaults, stop tokens."""
        ...

    @property
    def alive(self) -> bool:
        """False once the engine can answer no more (its thread or process died): the backend
        then starts a fresh one for the next request."""
        ...

    def submit(self, job: Job) -> None:
        """Queue ``job``; its events arrive through ``job.emit`` (from another thread)."""
        ...

    def stop(self) -> None:
        """Finish or abort what runs, then free the model."""
        ...
