"""Shared by the examples: a client for wherever you are.

AZION_AI_BASE_URL (+ AZION_AI_TOKEN) -> Azion or any OpenAI-compatible server;
AZION_AI_MODELS_DIR -> the real weights in-process; neither -> tiny random-weight checkpoints
built once (their text is noise, the pipeline is real).
"""

from __future__ import annotations

import os

from azion_ai import AI, AsyncAI

QWEN = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL = "opengvlab-internvl3-1b-instruct"


def local_models() -> dict[str, str]:
    root = os.environ.get("AZION_AI_MODELS_DIR")
    if root:
        return {m: os.path.join(root, m) for m in (QWEN, INTERNVL)}
    from azion_ai._local._tiny import ensure_tiny_checkpoints

    return {k: str(v) for k, v in ensure_tiny_checkpoints().items()}


def make_client() -> AI:
    if os.environ.get("AZION_AI_BASE_URL"):
        return AI()
    return AI(backend="local", models=local_models())


def make_async_client() -> AsyncAI:
    if os.environ.get("AZION_AI_BASE_URL"):
        return AsyncAI()
    return AsyncAI(backend="local", models=local_models())
