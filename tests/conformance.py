"""Shared parts of the conformance tests: the same payload to real vLLM and to the local backend.

A ``Peers`` holds, for one checkpoint: a vLLM OpenAI server, the local backend in-process
(``AI(backend="local")``) and ``azion-ai serve`` on a loopback port, all three with the same
context length. Payload catalogues live here so each model's test module reads as a table.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import vllm_reference

MAX_MODEL_LEN = 4096

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def image_uri(size: tuple[int, int], seed: int = 0, fmt: str = "PNG") -> str:
    """A noisy RGB image (so the pixels matter), as a data: URI."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def img(size: tuple[int, int], seed: int = 0) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_uri(size, seed)}}


def user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": parts[0] if len(parts) == 1 and isinstance(parts[0], str) else list(parts)}


def greedy(messages: list[dict[str, Any]], max_tokens: int = 12, **extra: Any) -> dict[str, Any]:
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


# Payloads both models take (no tools); each runs greedy in float32 on both sides.
COMMON: dict[str, dict[str, Any]] = {
    "plain": greedy([user("Name the european capitals")]),
    "system": greedy([{"role": "system", "content": "You are terse."}, user("Name the european capitals")]),
    "multi_turn": greedy(
        [user("Hello, world!"), {"role": "assistant", "content": "Paris is the capital of France."}, user("And of Spain?")]
    ),
    "content_parts": greedy([user(text("What is in this image?"), text("Answer in French."))]),
    "image_after_text": greedy([user(text("What is in this image?"), img((64, 48)))]),
    "image_before_text": greedy([user(img((64, 48), 1), text("What is in this image?"))]),
    "image_only": greedy([user(img((100, 80), 2))]),
    "image_odd_size": greedy([user(text("Describe it."), img((333, 197), 3))]),
    "image_large": greedy([user(text("What is in this image?"), img((1920, 1080), 4))], max_tokens=6),
    "image_tall": greedy([user(img((200, 900), 5), text("Read the text."))], max_tokens=6),
    "two_images": greedy([user(text("Compare"), img((64, 64), 6), text("with"), img((96, 64), 7))]),
    "images_across_turns": greedy(
        [
            user(img((64, 64), 8), text("What is this?")),
            {"role": "assistant", "content": "A cat sits on a red sofa."},
            user(text("And this one?"), img((80, 64), 9)),
        ]
    ),
    "system_and_image": greedy([{"role": "system", "content": "Be brief."}, user(img((64, 64), 10), text("What is in this image?"))]),
    "penalties": greedy([user("Numbers 0 1 2 3 4 5 6 7 8 9")], max_tokens=16, presence_penalty=0.8, frequency_penalty=0.6),
    "repetition_penalty": greedy([user("Numbers 0 1 2 3 4 5 6 7 8 9")], max_tokens=16, repetition_penalty=1.3),
    "defaults": {"messages": [user("The weather in London is")], "max_tokens": 16},
    "defaults_with_image": {"messages": [user(img((64, 64), 11), text("What is in this image?"))], "max_tokens": 10},
    "max_tokens_1": greedy([user("Hello, world!")], max_tokens=1),
}

QWEN_TOOLS: dict[str, dict[str, Any]] = {
    "tools_no_system": greedy([user("What is the weather in London?")], tools=[WEATHER]),
    "tools_with_system": greedy(
        [{"role": "system", "content": "You are a weather bot."}, user("What is the weather in London?")], tools=[WEATHER, TIME_TOOL]
    ),
    "tools_history": greedy(
        [
            user("What is the weather in London?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "London"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call-1", "content": "cloudy with light rain"},
        ],
        tools=[WEATHER],
    ),
    "tools_two_results": greedy(
        [
            user("Weather and time in Paris?"),
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
                    {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "b", "content": "10:00"},
        ],
        tools=[WEATHER, TIME_TOOL],
    ),
    "tools_and_image": greedy([user(text("What is the weather where this photo was taken?"), img((64, 64), 12))], tools=[WEATHER]),
    "history_without_tools": greedy(
        [
            user("Hi"),
            {"role": "assistant", "content": None, "tool_calls": [{"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'}}]},
            {"role": "tool", "tool_call_id": "x", "content": "sunny"},
        ]
    ),
    "empty_tool_calls_in_history": greedy([user("Hi"), {"role": "assistant", "content": "Hello!", "tool_calls": []}, user("Bye")]),
}


@dataclass
class Peers:
    model_id: str
    vllm: vllm_reference.VLLMServer
    local: Any  # azion_ai.AI on the local backend
    serve_url: str  # azion-ai serve's /v1

    def vllm_chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        response = self.vllm.chat(payload)
        assert response.status_code == 200, response.text
        return response.json()

    def local_chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self.local.run(self.model_id, payload).model_dump(mode="json")

    def serve_chat(self, payload: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.serve_url}/chat/completions", json={"model": self.model_id, **payload}, timeout=300)

    def serve_stream(self, payload: dict[str, Any]) -> list[dict[str, Any] | str]:
        events: list[dict[str, Any] | str] = []
        body = {"model": self.model_id, **payload, "stream": True}
        with httpx.stream("POST", f"{self.serve_url}/chat/completions", json=body, timeout=300) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
        return events


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """What must match between peers: usage, and per choice its text, calls and finish."""
    choices = []
    for choice in sorted(body["choices"], key=lambda c: c["index"]):
        message = choice["message"]
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
        choices.append({"content": message.get("content"), "tool_calls": calls, "finish_reason": choice["finish_reason"]})
    usage = body["usage"]
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "choices": choices,
    }


def stream_shape(events: list[dict[str, Any] | str]) -> list[Any]:
    """A stream as a comparable list: the role chunk, all content (vLLM coalesces tokens into one
    chunk when its engine runs ahead of the HTTP side, so piece boundaries vary run to run), the
    finish chunk, the usage chunk, ``[DONE]``. Content text is checked never to leak elsewhere."""
    shape: list[Any] = []
    content = ""
    for event in events:
        if event == "[DONE]":
            shape.append("[DONE]")
            continue
        assert isinstance(event, dict)
        if not event["choices"]:
            usage = event.get("usage") or {}
            shape.append(("usage", usage.get("prompt_tokens"), usage.get("completion_tokens")))
            continue
        assert event.get("usage") is None, f"usage in a chunk with choices: {event}"
        for choice in event["choices"]:
            delta = choice.get("delta") or {}
            if "role" in delta:
                assert not shape, f"role after the first chunk: {event}"
                shape.append(("role", delta["role"], delta.get("content")))
                continue
            content += delta.get("content") or ""
            if choice.get("finish_reason"):
                shape.append(("content", content))
                shape.append(("finish", choice["finish_reason"]))
    return shape


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Environment variables set for a block, then restored (module fixtures cannot monkeypatch)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def original_layout_server(hf_dir: Any, original_dir: Any, model_id: str, where: Any) -> vllm_reference.VLLMServer:
    """vLLM cannot read InternVL's original layout without running its remote code; it renders
    such a checkpoint with the tokenizer's template (Qwen2.5's) and images in front. So the
    reference is vLLM's server on the -hf twin with that template (--chat-template)."""
    require_vllm()
    template = where / "original.jinja"
    template.write_text(json.loads((original_dir / "tokenizer_config.json").read_text())["chat_template"])
    return vllm_reference.VLLMServer(hf_dir, model_id, max_model_len=MAX_MODEL_LEN, extra_args=("--chat-template", str(template)), log_path=where / "vllm.log")


def require_vllm() -> None:
    """The conformance suite needs the reference environment: fail loudly, never skip."""
    if not vllm_reference.available():
        pytest.fail("the vLLM reference environment is missing: run `bash scripts/setup_vllm.sh` (scripts/test.sh does)")


def start_peers(model_id: str, model_dir: Any, tmp_path: Any, *, vllm_args: tuple[str, ...] = (), chat_template: str | None = None) -> Any:
    """A generator fixture body: yields Peers, then stops every server it started."""
    from azion_ai import AI
    from azion_ai._server import BackgroundServer, ChatServer

    require_vllm()
    options: dict[str, Any] = {"max_model_len": MAX_MODEL_LEN}
    if chat_template is not None:
        options["chat_template"] = chat_template
    server = vllm_reference.VLLMServer(
        model_dir, model_id, max_model_len=MAX_MODEL_LEN, extra_args=vllm_args, log_path=tmp_path / f"vllm-{model_id}.log"
    )
    local = AI(backend="local", models={model_id: str(model_dir)}, device="cpu", **options)
    chat_server = ChatServer({model_id: str(model_dir)}, device="cpu", preload=False, **options)
    with server, BackgroundServer(chat_server.app) as background:
        yield Peers(model_id, server, local, background.base_url)
    local.close()
