"""The vLLM engine's tests run inside the reference environment (.venv-vllm), where vLLM imports.

``scripts/test.sh`` runs them after the main suite: ``.venv-vllm/bin/python -m pytest
tests/engine_vllm``. The main suite (``.venv``, no vLLM) does not collect this folder. Tiny
checkpoints and LoRA adapters are built by ``.venv`` (the local extra's torch and transformers),
then loaded here by vLLM through ``AI(backend="local", engine="vllm")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
MAX_MODEL_LEN = 4096
# float32, no prefix caching: the same numbers as the reference server (tests/vllm_reference.py)
CPU_OPTIONS = {"dtype": "float32", "enforce_eager": True, "enable_prefix_caching": False, "max_num_seqs": 16}

for name, value in (("VLLM_TARGET_DEVICE", "cpu"), ("VLLM_CPU_KVCACHE_SPACE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(name, value)


def _in_main_env(code: str, *args: str) -> str:
    if not MAIN_PYTHON.is_file():
        pytest.fail("the main environment is missing: run `bash scripts/setup.sh` (scripts/test.sh does)")
    proc = subprocess.run([str(MAIN_PYTHON), "-c", code, *args], capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"building in .venv failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """The tiny checkpoints of both architectures (the main suite's), built once per session."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        pytest.fail("tests/engine_vllm run in the vLLM environment: .venv-vllm/bin/python -m pytest tests/engine_vllm")
    out = tmp_path_factory.mktemp("tiny")
    code = (
        "import json, sys; from azion_ai._local._tiny import ensure_tiny_checkpoints; "
        "print(json.dumps({k: str(v) for k, v in ensure_tiny_checkpoints(sys.argv[1]).items()}))"
    )
    return {k: Path(v) for k, v in json.loads(_in_main_env(code, str(out))).items()}


@pytest.fixture(scope="session")
def lora_dir(tiny_dirs, tmp_path_factory):
    """A rank-8 LoRA adapter (peft's file layout) for the unquantized Qwen twin."""
    out = tmp_path_factory.mktemp("lora") / "adapter"
    code = (
        "import sys; sys.path.insert(0, 'tests'); from checkpoints import build_lora_adapter; "
        "print(build_lora_adapter('qwen-qwen25-vl-3b-instruct-awq', sys.argv[1], sys.argv[2], rank=8))"
    )
    return Path(_in_main_env(code, str(tiny_dirs["qwen-qwen25-vl-3b-instruct-awq"] / "reference"), str(out)))


def engine_ai(model_id: str, model_dir: Path, **options):
    """``AI`` on the vLLM engine with the reference server's numbers (float32, 4096 tokens)."""
    from azion_ai import AI

    engine_options = {**CPU_OPTIONS, **options.pop("engine_options", {})}
    return AI(backend="local", engine="vllm", models={model_id: str(model_dir)}, device="cpu", max_model_len=MAX_MODEL_LEN, engine_options=engine_options, **options)


@contextlib.contextmanager
def engine_cores_started() -> Iterator[list[int]]:
    """The pids of vLLM engine processes this process starts inside the block (not those of other
    engines or of a reference server started earlier)."""
    import psutil

    def cores() -> set[int]:
        found = set()
        for process in psutil.Process().children(recursive=True):
            try:
                if "EngineCore" in " ".join([*process.cmdline(), process.name()]):
                    found.add(process.pid)
            except psutil.Error:  # gone, or a zombie left by an earlier test's server
                continue
        return found

    before = cores()
    started: list[int] = []
    yield started
    started.extend(sorted(cores() - before))
    assert started, "no vLLM engine process was started"


def kill(pids: list[int]) -> None:
    """SIGKILL, as the OOM killer sends."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def failures_until_dead(engine, request: Callable[[], object]) -> list[str]:
    """After :func:`kill`: send ``request`` until ``engine`` knows it is dead (60 s at most) and
    return the messages of the SDK errors met on the way; none may hang (each has 30 s)."""
    from azion_ai import LocalBackendError

    failures = []
    deadline = time.monotonic() + 60
    while engine.alive and time.monotonic() < deadline:
        try:
            request()
        except LocalBackendError as exc:
            failures.append(str(exc))
        time.sleep(0.2)
    assert not engine.alive, "the killed engine still says it is alive after 60 s"
    return failures
