"""Every engine behaviour (tests/engine_behaviour.py) on CUDA: both models, the eager path and the
fast one (compile=True). Skipped, named, without a CUDA device; ``scripts/gpu_check.sh`` runs it."""

from __future__ import annotations

import gpu_fixtures
import pytest
from engine_behaviour import *  # noqa: F403 - the shared behavioural tests
from gpu_fixtures import PATHS

pytestmark = pytest.mark.gpu
gpu_device, gpu_dirs = gpu_fixtures.gpu_device, gpu_fixtures.gpu_dirs  # fixtures


@pytest.fixture(scope="module", params=sorted(PATHS))
def engine_client(request, gpu_dirs, gpu_device):  # the fixture engine_behaviour expects
    from azion_ai import AI

    client = AI(
        backend="local", models={k: str(v) for k, v in gpu_dirs.items()}, device=gpu_device, max_model_len=4096,
        any_whitespace=False, **PATHS[request.param],
    )
    yield client
    client.close()
