"""``azion-ai serve --engine vllm`` on InternVL3 (-hf): the command line a user runs, checked
against vLLM's own server on the same checkpoint (float32 both), whole answers and streams, with
openai-python as the client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import vllm_reference
from conformance import COMMON, MAX_MODEL_LEN, answer, stream_shape
from conftest import ROOT

INTERNVL_ID = "opengvlab-internvl3-1b-instruct"
# The tiny InternVL sets no sampling defaults: payloads without a temperature sample, so only the
# greedy ones compare token for token.
GREEDY = {name: payload for name, payload in COMMON.items() if "temperature" in payload}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_reference.VLLMServer(tiny_dirs[INTERNVL_ID], INTERNVL_ID, max_model_len=MAX_MODEL_LEN, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def served(tiny_dirs, tmp_path_factory):
    """``python -m azion_ai serve --engine vllm`` on a loopback port, stopped by its PID."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [
        sys.executable, "-m", "azion_ai", "serve", "--engine", "vllm", "--model", f"{INTERNVL_ID}={tiny_dirs[INTERNVL_ID]}",
        "--port", str(port), "--device", "cpu", "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32", "--enforce-eager",
        "--engine-option", "enable_prefix_caching=false", "--max-num-seqs", "8",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(ROOT))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve --engine vllm exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve --engine vllm was not ready in 240 s:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield base + "/v1"
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


def _post(base: str, payload: dict) -> dict:
    response = httpx.post(f"{base}/chat/completions", json={"model": INTERNVL_ID, **payload}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _sse(base: str, payload: dict) -> list:
    events: list = []
    with httpx.stream("POST", f"{base}/chat/completions", json={"model": INTERNVL_ID, **payload, "stream": True}, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else __import__("json").loads(data))
    return events


@pytest.mark.parametrize("name", sorted(GREEDY))
def test_served_by_vllm_engine_answers_as_vllms_server(served, server, name):
    payload = COMMON[name]
    ours = _post(served, payload)
    assert ours["model"] == INTERNVL_ID
    assert answer(ours) == answer(server.chat(payload).json())


@pytest.mark.parametrize("include_usage", [False, True])
def test_streams_have_vllms_chunk_sequence(served, server, include_usage):
    payload = {**COMMON["image_after_text"], "stream_options": {"include_usage": include_usage}}
    assert stream_shape(_sse(served, payload)) == stream_shape(server.chat_stream(payload))


def test_openai_python_against_serve_with_the_vllm_engine(served, server):
    import openai

    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [INTERNVL_ID]
    payload = COMMON["two_images"]
    whole = client.chat.completions.create(model=INTERNVL_ID, **payload)
    assert whole.choices[0].message.content == server.chat(payload).json()["choices"][0]["message"]["content"]
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(model=INTERNVL_ID, stream=True, **payload) if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=INTERNVL_ID, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=2)
    again = client.chat.completions.create(model=INTERNVL_ID, **payload)
    assert again.choices[0].message.content == whole.choices[0].message.content


@pytest.fixture(scope="module")
def original(tiny_dirs, tmp_path_factory):
    """InternVL3 in its original (internvl_chat) layout, built by .venv from the -hf twin."""
    from conftest import _in_main_env

    out = tmp_path_factory.mktemp("original") / "InternVL3-1B-Instruct"
    code = "import sys; sys.path.insert(0, 'tests'); from checkpoints import build_internvl3_original; print(build_internvl3_original(sys.argv[1], sys.argv[2]))"
    return __import__("pathlib").Path(_in_main_env(code, str(tiny_dirs[INTERNVL_ID]), str(out)))


@pytest.fixture(scope="module")
def original_peers(original, tiny_dirs, tmp_path_factory):
    """vLLM's server on the -hf twin rendering the original tokenizer's template, and
    engine="vllm" on the original layout (its conversion cached in this test's own folder)."""
    from conformance import environ, original_layout_server
    from conftest import engine_ai

    where = tmp_path_factory.mktemp("original-peers")
    server = original_layout_server(tiny_dirs[INTERNVL_ID], original, INTERNVL_ID, where)
    with environ(AZION_AI_CACHE=str(where / "cache")), server, engine_ai(INTERNVL_ID, original) as ai:
        yield server, ai


@pytest.mark.parametrize("name", ["plain", "multi_turn", "image_after_text", "two_images"])
def test_the_original_layout_runs_on_vllms_engine_as_vllm_renders_its_files(original_peers, original, name):
    """vLLM itself reads this layout only by running its remote code; engine="vllm" converts it
    (no remote code) and hands vLLM the converted copy. Its answers equal vLLM's server on the -hf
    twin rendering the original tokenizer's template (--chat-template), as the transformers
    engine's do (tests/test_conformance_internvl.py)."""
    server, ai = original_peers
    payload = COMMON[name]
    assert answer(ai.run(INTERNVL_ID, payload).model_dump(mode="json")) == answer(server.chat(payload).json())
    assert not (original / "remote-code-ran").exists()
