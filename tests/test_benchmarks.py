"""The benchmarks run in smoke mode so they cannot rot (no time is asserted: benchmarks are not tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.local
@pytest.mark.slow
def test_benchmarks_smoke(tiny_dirs, tiny_cache):
    pytest.importorskip("openai")
    pytest.importorskip("torch")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "AZION_AI_CACHE": str(tiny_cache)},  # the session's checkpoints
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    subjects = " ".join(rows)
    for needle in ("import azion_ai", "torch and transformers not imported", "validation", "jsonschema is_valid", "validation share", "azion_ai (sync)", "openai (async)", "bare httpx", "SSE parsing", "ai.run streaming (token step", "fast_decode=False", "not measured"):
        assert needle in subjects, needle
