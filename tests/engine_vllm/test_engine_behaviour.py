"""The engine behaviours (tests/engine_behaviour.py) on engine="vllm"."""

from __future__ import annotations

import pytest
from conftest import CPU_OPTIONS
from engine_behaviour import *  # noqa: F403 - the shared behavioural tests


@pytest.fixture(scope="module")
def engine_client(tiny_dirs):
    from azion_ai import AI

    # float32 for every model of the client: the unquantized twin stands in for the AWQ checkpoint
    # (vLLM runs AWQ in float16/bfloat16 only)
    models = {"qwen-qwen25-vl-3b-instruct-awq": str(tiny_dirs["qwen-qwen25-vl-3b-instruct-awq"] / "reference"), "opengvlab-internvl3-1b-instruct": str(tiny_dirs["opengvlab-internvl3-1b-instruct"])}
    client = AI(
        backend="local", engine="vllm", models=models, device="cpu", max_model_len=4096, any_whitespace=False,
        engine_options=CPU_OPTIONS,
    )
    yield client
    client.close()
