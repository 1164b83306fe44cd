"""Every example runs as it stands (on the tiny checkpoints: no token, no weights)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.local, pytest.mark.slow]
EXAMPLES = Path(__file__).parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tiny_dirs):
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZION_")}
    env["AZION_AI_MODELS_DIR"] = str(next(iter(tiny_dirs.values())).parent)
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, script], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
