"""The engine behaviours (tests/engine_behaviour.py) on the default engine, transformers."""

from __future__ import annotations

import pytest
from engine_behaviour import *  # noqa: F403 - the shared behavioural tests

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def engine_client(tiny_dirs):
    from azion_ai import AI

    client = AI(backend="local", models={k: str(v) for k, v in tiny_dirs.items()}, device="cpu", max_model_len=4096, any_whitespace=False)
    yield client
    client.close()
