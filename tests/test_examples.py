"""Every example runs as it stands (on the tiny checkpoints: no token, no weights).

They run one after another in one fresh interpreter (torch imported once, not once per example),
each as ``__main__`` from the examples folder, with its own output and its own failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

pytestmark = [pytest.mark.local, pytest.mark.slow]
EXAMPLES = Path(__file__).parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
MARKER = "EXAMPLE-RESULTS:"
DRIVER = f"""
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, ".")
results = {{}}
for name in list(sys.argv[1:]):
    sys.argv[:] = [name]  # as if run alone: no arguments
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(name, run_name="__main__")
        results[name] = {{"ok": True, "stdout": out.getvalue()}}
    except BaseException:
        results[name] = {{"ok": False, "stdout": out.getvalue(), "error": traceback.format_exc()[-3000:]}}
print({MARKER!r} + json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs(tiny_dirs):
    require("torch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZION_")}
    env["AZION_AI_MODELS_DIR"] = str(next(iter(tiny_dirs.values())).parent)
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", DRIVER, *SCRIPTS], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=600)
    line = next((l for l in out.stdout.splitlines() if l.startswith(MARKER)), None)
    assert line is not None, out.stderr[-3000:]
    return json.loads(line[len(MARKER):])


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, runs):
    result = runs[script]
    assert result["ok"], result.get("error")
    assert result["stdout"].strip()
