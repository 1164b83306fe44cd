"""One thread per device: the only thread that runs models (mlx-lm's rule).

Every model loaded on a device (``"cuda"`` and ``"cuda:0"`` are one device; the CPU is one too)
hands its work to that device's :class:`DeviceWorker`, whoever loaded it: both models of one
``AI``, both models under ``azion-ai serve``, and models of several ``AI`` instances in one
process share it. Thread-local state (CUDA-graph trees, the current stream, inference mode) then
holds for every model. The worker is released when its last model goes.

The loop: run what was posted (new jobs, registrations), then one :meth:`Runner.step` for each
model that has work, in turn, so a long request on one model never holds another model's requests
back until it ends. No torch here: runners do the device work.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

log = logging.getLogger("azion_ai")


class Runner(Protocol):
    """What a device worker drives: one loaded model's scheduler and steps."""

    @property
    def has_work(self) -> bool: ...

    def step(self) -> None:
        """Admit waiting jobs, then one token for every running row (never raises)."""
        ...


def device_key(device: Any) -> str:
    """One name per device: "cuda" is "cuda:<current index>", "cpu" is "cpu"."""
    if isinstance(device, str):
        kind, _, number = device.partition(":")
        index: int | None = int(number) if number else None
    else:
        kind, index = device.type, device.index
    if kind == "cuda" and index is None:
        import torch

        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return kind if index is None else f"{kind}:{index}"


class DeviceWorker:
    """The thread of one device and the runners it steps."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.users = 0
        self._inbox: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._runners: list[Runner] = []
        self._thread = threading.Thread(target=self._loop, name=f"azion-ai-device-{key}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def post(self, work: Callable[[], object]) -> None:
        """Run ``work`` on the device thread, between steps."""
        self._inbox.put(work)

    def call(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the device thread and wait for its result (or its exception)."""
        if threading.get_ident() == self._thread.ident:
            return work()
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        self.post(run)
        return done.result()

    def add(self, runner: Runner) -> None:
        self.call(lambda: self._runners.append(runner))

    def remove(self, runner: Runner) -> None:
        self.call(lambda: self._runners.remove(runner) if runner in self._runners else None)

    def _stop(self) -> None:
        self._inbox.put(None)
        if threading.get_ident() != self._thread.ident:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            busy = any(r.has_work for r in self._runners)
            try:
                item = self._inbox.get(block=not busy)
            except queue.Empty:
                item = _NOTHING
            while True:
                if item is None:
                    return
                if item is not _NOTHING:
                    item()
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            for runner in list(self._runners):
                if runner.has_work:
                    try:
                        runner.step()
                    except BaseException:  # noqa: BLE001 - a runner's bug must not stop the others
                        log.exception("a model's step failed on %s", self.key)


def _nothing() -> None:
    return None


_NOTHING: Callable[[], object] = _nothing

_workers: dict[str, DeviceWorker] = {}
_registry_lock = threading.Lock()


def acquire(device: Any) -> DeviceWorker:
    """The process's worker for ``device`` (started on first use), with one more user."""
    key = device_key(device)
    with _registry_lock:
        worker = _workers.get(key)
        if worker is None or not worker.alive:
            worker = _workers[key] = DeviceWorker(key)
        worker.users += 1
        return worker


def release(worker: DeviceWorker) -> None:
    """One user fewer; the last one stops the thread."""
    with _registry_lock:
        worker.users -= 1
        if worker.users > 0:
            return
        if _workers.get(worker.key) is worker:
            del _workers[worker.key]
    worker._stop()


def workers() -> dict[str, DeviceWorker]:
    """The running workers by device (for tests and diagnostics)."""
    with _registry_lock:
        return dict(_workers)
