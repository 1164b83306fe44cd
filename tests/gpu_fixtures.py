"""What the gpu suite (tests/test_gpu.py, tests/test_gpu_behaviour.py) loads, and where.

The suite runs on a stock GPU machine whose Python has torch but not our development tools:
nothing here needs more than pytest and the wheels of ``scripts/gpu_wheels.sh``.

- ``AZION_AI_GPU_SUITE_DEVICE``: ``cuda`` (the default) or ``cpu``, which runs the suite on the
  CPU to check the tests themselves before a GPU's time is spent on them (CUDA-only checks skip).
- ``AZION_AI_GPU_QWEN``: ``awq`` (the AWQ checkpoint, through gptqmodel's kernels) or ``bf16`` (its
  unquantized twin, the same weights dequantized); by default AWQ where gptqmodel imports.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

QWEN = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL = "opengvlab-internvl3-1b-instruct"
DEVICE = os.environ.get("AZION_AI_GPU_SUITE_DEVICE", "cuda")
# The two decoding paths every check runs on: compile=True is the fast one (captured CUDA
# graphs); compile=False the eager one, whichever of them the engine's default is.
PATHS = {"eager": {"compile": False}, "fast": {"compile": True}}


def qwen_variant() -> str:
    chosen = os.environ.get("AZION_AI_GPU_QWEN", "auto")
    if chosen in ("awq", "bf16"):
        return chosen
    return "awq" if importlib.util.find_spec("gptqmodel") is not None else "bf16"


def cuda_only() -> None:
    if DEVICE == "cpu":
        pytest.skip("a CUDA-only check (AZION_AI_GPU_SUITE_DEVICE=cpu runs the rest of the suite on the CPU)")


def needs_gptqmodel() -> None:
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("gptqmodel is not installed (it needs torch >= 2.14; pip install 'azion-ai[local]'): AWQ on CUDA is not checked here")


@pytest.fixture(scope="session")
def gpu_device() -> str:
    return DEVICE


@pytest.fixture(scope="session")
def gpu_dirs(tiny_dirs):
    """The tiny checkpoints, Qwen as AWQ or as its unquantized twin (``reference/``)."""
    dirs = dict(tiny_dirs)
    if qwen_variant() == "bf16":
        dirs[QWEN] = dirs[QWEN] / "reference"
    return dirs
