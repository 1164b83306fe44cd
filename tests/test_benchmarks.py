"""The benchmarks run in smoke mode so they cannot rot (no time is asserted: benchmarks are not tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).parent.parent


@pytest.mark.local
@pytest.mark.slow
def test_benchmarks_smoke(tiny_dirs, tiny_cache):
    require("openai")
    require("torch")
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


@pytest.mark.local
@pytest.mark.slow
def test_gpu_benchmark_writes_its_rows_as_it_goes(tiny_dirs, tiny_cache, tmp_path):
    """benchmarks/gpu.py --out: the JSON and markdown are rewritten after every row, so a run that
    is killed leaves what it measured (marked incomplete); a finished run has every row, each with
    the options it ran with."""
    import json
    import signal
    import time

    require("torch")
    env = {**os.environ, "AZION_AI_CACHE": str(tiny_cache), "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "benchmarks" / "gpu.py")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, script, "--smoke", "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            rows = json.loads((killed / "gpu-results.json").read_text())["rows"] if (killed / "gpu-results.json").exists() else []
            if any(r["measure"] == "load (ai.transport.load)" for r in rows):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    data = json.loads((killed / "gpu-results.json").read_text())
    assert not data["complete"] and any(r["measure"] == "load (ai.transport.load)" for r in data["rows"])
    assert "INCOMPLETE" in (killed / "gpu-results.md").read_text()

    done = tmp_path / "done"
    out = subprocess.run([sys.executable, script, "--smoke", "--models", "internvl", "--no-compile", "--out", str(done)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((done / "gpu-results.json").read_text())
    assert data["complete"]
    measures = {r["measure"] for r in data["rows"]}
    for needle in ("load (ai.transport.load)", "batch-1 decode via ai.run (stream)", "batch-1 decode via bare model.generate()", "time to first token, text prompt", "time to first token, one 448x448 image", "1 request alone, total", "2 concurrent requests, total", "peak memory", "ceiling: weight bytes per token / copy bandwidth"):
        assert needle in measures, needle
    assert any(m.startswith("copy bandwidth on ") for m in measures)
    assert all("compile=False" in r["options"] for r in data["rows"] if r["model"].startswith("opengvlab") and r["measure"].startswith(("load", "batch-1 decode via ai.run (", "2 concurrent")))
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(data["rows"]) + 2 and (done / "gpu-results.md").read_text().count("\n| ") == len(data["rows"]) + 2


@pytest.mark.local
@pytest.mark.slow
def test_retrieval_benchmark_smoke(tiny_dirs, tiny_cache):
    require("sentence_transformers")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "retrieval.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "AZION_AI_CACHE": str(tiny_cache)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| embeddings") or line.startswith("| rerank")]
    assert len(rows) == 2
    for row in rows:  # the two sides answered alike
        assert float(row.rstrip(" |").rsplit("|", 1)[1]) < 1e-5
