"""Real vLLM, the engine Azion runs, as a test peer: its OpenAI server on a loopback port.

vLLM lives in its own virtual environment (``.venv-vllm``, made by ``scripts/setup_vllm.sh``):
it pins torch and transformers versions that differ from ``.venv``'s. Each server runs one
checkpoint in float32 on the CPU, with prefix caching off, so its greedy tokens can be compared
with the local backend's float32 run. Servers are started and stopped by PID (their own process
group), with time limits on both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-vllm"
PYTHON = VENV / "bin" / "python"
START_TIMEOUT = 240.0


def available() -> bool:
    return PYTHON.is_file() and (VENV / ".azion-ai-vllm-installed").is_file()


def vllm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(
        VLLM_TARGET_DEVICE="cpu",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",  # the engine in the server's process: one PID, 2 GB
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    return env


def run_python(code: str, *args: str, timeout: float = 300) -> str:
    """Run a snippet in the vLLM environment; its stdout (a failure raises with stderr's tail)."""
    proc = subprocess.run(
        [str(PYTHON), "-c", code, *args], env=vllm_env(), capture_output=True, text=True, timeout=timeout, cwd=str(ROOT)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM snippet failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` for one checkpoint, on 127.0.0.1."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        served_name: str,
        *,
        max_model_len: int = 4096,
        dtype: str = "float32",
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.port = _free_port()
        self.args = [
            str(PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir,
            "--served-model-name", served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--dtype", dtype,
            "--max-model-len", str(max_model_len),
            "--enforce-eager",
            "--no-enable-prefix-caching",
            "--max-num-seqs", "8",
            "--seed", "0",
            *extra_args,
        ]
        self.log_path = Path(log_path) if log_path else Path(self.model_dir).parent / f"vllm-{served_name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self) -> VLLMServer:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.args, env=vllm_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(ROOT),
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM did not become ready in {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests -------------------------------------------------------------------------------

    def chat(self, payload: dict, timeout: float = 120) -> httpx.Response:
        body = {"model": self.served_name, **payload}
        return httpx.post(f"{self.base_url}/chat/completions", json=body, timeout=timeout)

    def chat_stream(self, payload: dict, timeout: float = 120) -> list[dict | str]:
        """The SSE events of a streamed request: chunk dicts, and the final "[DONE]"."""
        body = {"model": self.served_name, **payload, "stream": True}
        events: list[dict | str] = []
        with httpx.stream("POST", f"{self.base_url}/chat/completions", json=body, timeout=timeout) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                    events.append(data if data == "[DONE]" else json.loads(data))
        return events

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus metric from /metrics over the series whose labels match."""
        total = 0.0
        for line in httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text.splitlines():
            if not line.startswith(name + "{"):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{key}="{want}"' in series for key, want in labels.items()):
                total += float(value)
        return total

    def tokenize_chat(self, payload: dict) -> dict:
        """vLLM's own prompt for a chat payload (``/tokenize``): token ids and count."""
        body = {"model": self.served_name, "messages": payload["messages"], "add_generation_prompt": True}
        for key in ("tools", "chat_template"):
            if key in payload:
                body[key] = payload[key]
        response = httpx.post(f"http://127.0.0.1:{self.port}/tokenize", json=body, timeout=60)
        response.raise_for_status()
        return response.json()
