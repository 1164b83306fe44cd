from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# engine="vllm"'s tests run in the vLLM environment (scripts/test.sh runs them there); the main
# environment has no vLLM and does not collect them.
if importlib.util.find_spec("vllm") is None:
    collect_ignore = ["engine_vllm"]

TOKEN = "azion-secret-token-3f9c1e7d"


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
    them by default: subprocesses (benchmarks, the demo) given it reuse them, never rebuild."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_dirs(tiny_cache):
    """Tiny random checkpoints of both architectures, built once per test session."""
    pytest.importorskip("torch")
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
