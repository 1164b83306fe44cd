from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# engine="vllm"'s tests run in the vLLM environment (scripts/test.sh runs them there with
# `.venv-vllm/bin/python -m pytest tests/engine_vllm`). Where vLLM does not import, a run that
# does not name that folder leaves it out and says so at the end; named, it is collected and its
# fixtures fail with the command to use. Nothing disappears without a word.
ENGINE_VLLM = Path(__file__).parent / "engine_vllm"
HAS_VLLM = importlib.util.find_spec("vllm") is not None
_left_out: list[str] = []
_skipped: list[str] = []


def pytest_ignore_collect(collection_path, config):
    if HAS_VLLM or Path(collection_path) != ENGINE_VLLM:
        return None
    named = [Path(a.split("::")[0]).resolve() for a in config.args]
    if any(p == ENGINE_VLLM or ENGINE_VLLM in p.parents for p in named):
        return None
    folder = str(ENGINE_VLLM.relative_to(Path(__file__).parent.parent))
    if any(p in ENGINE_VLLM.parents for p in named) and folder not in _left_out:  # it would have run
        _left_out.append(folder)
    return True


def _skip_outside_gpu(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and "gpu" not in report.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _skip_outside_gpu(report)


def pytest_collectreport(report):
    _skip_outside_gpu(report)


def pytest_sessionfinish(session, exitstatus):
    """Only the gpu marker may skip: any other skip fails the run (a missing package or
    environment is a failure that names its fix, never a quiet skip)."""
    if _skipped and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    for folder in _left_out:
        terminalreporter.write_line(
            f"not collected here: {folder} (vLLM does not import in this environment); "
            f"run it with `PYTHONPATH=$PWD .venv-vllm/bin/python -m pytest {folder}` (scripts/test.sh does)",
            yellow=True,
        )
    if _skipped:
        terminalreporter.write_line("skipped outside the gpu marker (this fails the run; only gpu tests may skip):", red=True)
        for line in _skipped:
            terminalreporter.write_line(f"  {line}", red=True)

TOKEN = "azion-secret-token-3f9c1e7d"

if os.environ.get("AZION_AI_MUTATION"):  # scripts/mutation.sh: the same examples for every mutant
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("mutation", derandomize=True, database=None)
    _hypothesis_settings.load_profile("mutation")


def require(module: str):
    """``module``, imported; if it is missing the test FAILS naming the command that installs it.
    Nothing is skipped for a missing package: only the ``gpu`` marker skips (see below)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is not installed ({exc}): run `bash scripts/setup.sh` (the local, server and dev extras)", pytrace=False)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("AZION_TOKEN", "AZION_AI_TOKEN", "AZION_AI_BASE_URL", "AZION_AI_BACKEND", "AZION_AI_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_sleep(monkeypatch):
    """Record retry delays instead of sleeping them."""
    delays: list[float] = []

    async def fake_async_sleep(seconds):
        delays.append(seconds)

    monkeypatch.setattr("azion_ai._remote._sleep", delays.append)
    monkeypatch.setattr("azion_ai._remote._async_sleep", fake_async_sleep)
    return delays


QWEN_ID = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL_ID = "opengvlab-internvl3-1b-instruct"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """An AZION_AI_CACHE root holding this session's tiny checkpoints where azion_ai looks for
    them by default: subprocesses (benchmarks, the demo) given it reuse them, never rebuild.
    scripts/mutation.sh names one that outlives the session (AZION_AI_MUTATION_CACHE): one build
    for every mutant."""
    if os.environ.get("AZION_AI_MUTATION_CACHE"):
        return Path(os.environ["AZION_AI_MUTATION_CACHE"])
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_dirs(tiny_cache):
    """Tiny random checkpoints of both architectures, built once per test session."""
    require("torch")
    from azion_ai._local._tiny import BUILD_VERSION, ensure_tiny_checkpoints

    return ensure_tiny_checkpoints(tiny_cache / "azion_ai" / f"tiny-v{BUILD_VERSION}")


@pytest.fixture(scope="session")
def local_ai(tiny_dirs):
    from azion_ai import AI

    ai = AI(backend="local", models={k: str(v) for k, v in tiny_dirs.items()}, device="cpu")
    yield ai
    ai.close()


@pytest.fixture
def counted_steps(monkeypatch):
    """The response id of every token step, in order: proof of when a generation stopped."""
    from azion_ai._local import _response

    steps: list[str] = []
    original = _response.ResponseBuilder.step

    def counting(self, rows, logprobs=None):
        steps.append(self.id)
        return original(self, rows, logprobs)

    monkeypatch.setattr(_response.ResponseBuilder, "step", counting)
    return steps


def png_data_uri(color=(200, 30, 30), size=(64, 48), fmt="PNG") -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where torch sees a CUDA device; elsewhere they are skipped, named.
    AZION_AI_GPU_SUITE_DEVICE=cpu runs them on the CPU, to check the suite itself (gpu_fixtures.py)."""
    if os.environ.get("AZION_AI_GPU_SUITE_DEVICE") == "cpu":
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
