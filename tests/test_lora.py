"""LoRA adapters on the local backend: per client and per request, over AWQ and bf16/fp32 models."""

from __future__ import annotations

import pytest
from conftest import INTERNVL_ID, QWEN_ID, require

import azion_ai
from azion_ai import AI

pytestmark = pytest.mark.local
require("peft")
HELLO = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": 10, "temperature": 0}


@pytest.fixture(scope="module")
def adapters(tiny_dirs, tmp_path_factory):
    from checkpoints import build_lora_adapter

    root = tmp_path_factory.mktemp("lora")
    return {
        "qwen-style": build_lora_adapter(QWEN_ID, tiny_dirs[QWEN_ID], root / "qwen", seed=3),
        "qwen-other": build_lora_adapter(QWEN_ID, tiny_dirs[QWEN_ID], root / "qwen2", seed=11),
        "intern-style": build_lora_adapter(INTERNVL_ID, tiny_dirs[INTERNVL_ID], root / "intern", seed=5),
    }


def text(completion):
    return completion.choices[0].message.content


def test_adapters_per_request_and_back(tiny_dirs, adapters):
    models = {k: str(v) for k, v in tiny_dirs.items()}
    with AI(backend="local", models=models, device="cpu", lora_adapters={k: str(v) for k, v in adapters.items()}) as ai:
        for model_id, name, other in ((QWEN_ID, "qwen-style", "qwen-other"), (INTERNVL_ID, "intern-style", None)):
            base = text(ai.run(model_id, HELLO))
            tuned = text(ai.run(model_id, HELLO, lora=name))
            assert tuned != base
            assert text(ai.run(model_id, HELLO)) == base  # adapters off again
            assert text(ai.run(model_id, HELLO, lora=name)) == tuned
            streamed = ai.run(model_id, {**HELLO, "stream": True}, lora=name).get_final_completion()
            assert text(streamed) == tuned
            if other:
                assert text(ai.run(model_id, HELLO, lora=other)) not in (base, tuned)
        with pytest.raises(azion_ai.LocalBackendError, match="unknown LoRA adapter 'nope'"):
            ai.run(QWEN_ID, HELLO, lora="nope")


def test_adapter_per_client(tiny_dirs, adapters, local_ai):
    base = text(local_ai.run(INTERNVL_ID, HELLO))
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu", lora_adapters={"s": str(adapters["intern-style"])}, lora="s") as ai:
        tuned = text(ai.run(INTERNVL_ID, HELLO))
    assert tuned != base
    with pytest.raises(ValueError, match="not among lora_adapters"):
        AI(backend="local", models={}, lora="missing")


def test_bad_adapter_directory(tiny_dirs, tmp_path, adapters):
    import json
    import shutil

    wrong = tmp_path / "wrong"
    shutil.copytree(adapters["intern-style"], wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    empty = tmp_path / "empty"
    empty.mkdir()
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu", lora_adapters={"empty": str(empty), "wrong": str(wrong)}) as ai:
        with pytest.raises(azion_ai.ModelLoadError, match="adapter_config.json"):
            ai.run(INTERNVL_ID, HELLO, lora="empty")
        with pytest.raises(azion_ai.ModelLoadError, match="does not fit"):
            ai.run(INTERNVL_ID, HELLO, lora="wrong")
        assert ai.run(INTERNVL_ID, HELLO).usage.completion_tokens == 10


def test_remote_sends_the_adapter_as_the_model_name():
    import json

    import httpx

    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})

    with AI(base_url="http://127.0.0.1:9/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler))) as ai:
        ai.run(QWEN_ID, HELLO, lora="my-adapter")
        ai.run(QWEN_ID, HELLO)
    assert [b["model"] for b in seen] == ["my-adapter", QWEN_ID]
