from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import INTERNVL_ID, QWEN_ID, require

import azion_ai
from azion_ai._cli import main


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert QWEN_ID in out and "32,768" in out and "16,384" in out
    line = next(line for line in out.splitlines() if line.startswith(INTERNVL_ID))
    assert " no " in line and "OpenGVLab/InternVL3-1B-Instruct" in line  # no tool calling, no LoRA
    for model in azion_ai.list_models():  # the whole catalogue, with its kind
        row = next(line for line in out.splitlines() if line.startswith(model.id))
        assert model.kind in row
    assert "(also Qwen/Qwen3-Embedding-4B)" in out


def test_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}], "n": 0}))
    assert main(["validate", str(good), "--model", QWEN_ID]) == 0
    assert main(["validate", str(bad), "--model", INTERNVL_ID]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: tools:" in out and f"{bad}: n:" in out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.json"), "--model", QWEN_ID]) == 1
    err = capsys.readouterr().err
    assert err.startswith("azion-ai: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["run", "nope-model", "hi", "--base-url", "http://127.0.0.1:9/v1"]) == 1
    assert "known models" in capsys.readouterr().err


def test_run_against_a_server_with_jsonl_output(capsys):
    import httpx
    import respx

    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": QWEN_ID, "choices": [{"index": 0, "delta": {"content": "Hi!"}}]}
    with respx.mock:
        respx.post("http://127.0.0.1:9/v1/chat/completions").mock(
            return_value=httpx.Response(200, content=b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
        )
        assert main(["run", QWEN_ID, "hello", "--base-url", "http://127.0.0.1:9/v1"]) == 0
        assert capsys.readouterr().out == "Hi!\n"
        assert main(["run", QWEN_ID, "hello", "--base-url", "http://127.0.0.1:9/v1", "--jsonl"]) == 0
        assert json.loads(capsys.readouterr().out)["choices"][0]["delta"]["content"] == "Hi!"


@pytest.mark.local
def test_run_local_subprocess_streams_and_images(tiny_dirs, tmp_path):
    require("torch")
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.new("RGB", (50, 40), (1, 2, 3)).save(image)
    cmd = [sys.executable, "-m", "azion_ai._cli", "run", INTERNVL_ID, "What is this?", "--image", str(image), "--model-path", str(tiny_dirs[INTERNVL_ID]), "--device", "cpu", "--max-tokens", "5", "--temperature", "0", "--no-stream", "--jsonl"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    completion = json.loads(out.stdout.strip().splitlines()[-1])
    assert completion["usage"]["completion_tokens"] == 5 and completion["usage"]["prompt_tokens"] > 20
    bad = subprocess.run([*cmd[:6], "--image", str(tmp_path / "nope.png"), "--model-path", str(tiny_dirs[INTERNVL_ID])], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_serve_passes_the_speed_options_to_the_local_backend(monkeypatch, tmp_path):
    require("uvicorn")
    import uvicorn

    from azion_ai import _server

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    built = []
    real = _server.ChatServer
    monkeypatch.setattr(_server, "ChatServer", lambda models, **kw: built.append(real(models, **kw)) or built[-1])
    argv = ["serve", "--model", f"{QWEN_ID}={tmp_path}", "--device", "cpu", "--compile", "--max-batch-size", "4", "--awq-kernel", "torch_fused_awq"]
    assert main(argv) == 0
    transport = built[0].client.transport
    from azion_ai._local._engine_transformers import TransformersOptions

    assert transport.transformers_options == TransformersOptions(static_cache=False, compile=True, max_batch_size=4, fast_decode=True, any_whitespace=True)
    assert transport.awq_kernel == "torch_fused_awq"
    assert started == [{"host": "127.0.0.1", "port": 8000, "log_level": "info"}]
    with pytest.raises(SystemExit):
        main(["serve", "--model", f"{QWEN_ID}={tmp_path}", "--awq-kernel", "warp-drive"])
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert main(["serve", "--model", f"{QWEN_ID}={tmp_path}", "--chat-template", str(template), "--max-model-len", "2048"]) == 0
    transport = built[-1].client.transport
    assert transport.chat_template == template.read_text() and transport.max_model_len == 2048


def test_serve_engine_vllm_passes_vllms_arguments_through(monkeypatch, tmp_path, capsys):
    require("uvicorn")
    import uvicorn

    from azion_ai import _server

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    built = []
    real = _server.ChatServer
    monkeypatch.setattr(_server, "ChatServer", lambda models, **kw: built.append(real(models, **kw)) or built[-1])
    argv = [
        "serve", "--engine", "vllm", "--model", f"{QWEN_ID}={tmp_path}", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.8",
        "--max-num-seqs", "64", "--dtype", "bfloat16", "--enforce-eager", "--engine-option", "max_num_batched_tokens=8192",
        "--engine-option", "kv_cache_dtype=fp8",
    ]
    assert main(argv) == 0
    transport = built[0].client.transport
    assert transport.engine == "vllm"
    assert transport.engine_options == {
        "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_num_seqs": 64, "dtype": "bfloat16", "enforce_eager": True,
        "max_num_batched_tokens": 8192, "kv_cache_dtype": "fp8",
    }
    assert main(["serve", "--model", f"{QWEN_ID}={tmp_path}", "--tensor-parallel-size", "2"]) == 1
    assert "need --engine vllm" in capsys.readouterr().err
    assert main(["serve", "--engine", "vllm", "--model", f"{QWEN_ID}={tmp_path}", "--compile"]) == 1
    assert "tune the transformers engine" in capsys.readouterr().err


@pytest.mark.local
def test_the_demo_prints_our_output_only(tmp_path):
    """The README's main job: the tour, with no third-party banner, log line, warning or progress
    bar between our headings; ``--verbose`` is accepted (it skips the quieting)."""
    require("torch")
    env = {k: v for k, v in __import__("os").environ.items() if k != "AZION_AI_QUIET"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "azion_ai._cli", "demo", "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
    assert "GPT-QModel" not in done.stdout and "INFO" not in done.stdout and "Loading weights" not in done.stdout
    assert done.stdout.count("\n== ") >= 6 and "azion_ai.ValidationError" in done.stdout
    loud = subprocess.run([sys.executable, "-m", "azion_ai._cli", "--verbose", "models"], capture_output=True, text=True, timeout=60, env=env)
    assert loud.returncode == 0 and "qwen-qwen3-embedding-4b" in loud.stdout
