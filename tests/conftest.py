from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "azion-secret-token-3f9c1e7d"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("AZION_TOKEN", "AZION_AI_BASE_URL", "AZION_AI_BACKEND", "AZION_AI_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_sleep(monkeypatch):
    """Record retry delays instead of sleeping them."""
    delays: list[float] = []

    async def fake_async_sleep(seconds):
        delays.append(seconds)

    monkeypatch.setattr("azion_ai._remote.time.sleep", delays.append)
    monkeypatch.setattr("azion_ai._remote.anyio.sleep", fake_async_sleep)
    return delays
