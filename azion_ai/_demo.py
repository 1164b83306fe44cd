"""The main job: a real ``ai.run`` wherever you are.

With ``AZION_AI_BASE_URL`` set (and ``AZION_AI_TOKEN`` if the endpoint wants one) it calls Azion. Otherwise it runs the local
backend on real weights from ``AZION_AI_MODELS_DIR``, or, with none, on tiny random-weight
checkpoints of both architectures built here once; then it serves them with ``azion-ai serve``
and calls that server through the remote transport.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from typing import Any, cast

from ._client import AI
from ._exceptions import ValidationError
from ._models import BGE_RERANKER_V2_M3, INTERNVL3_1B, QWEN3_EMBEDDING_4B, QWEN25_VL_3B_AWQ
from ._streaming import Stream

QUESTION: dict[str, Any] = {"role": "user", "content": "Name the european capitals"}


def _say(text: str = "") -> None:
    print(text, flush=True)


def _tour(ai: AI, label: str, image_url: str | None) -> None:
    _say(f"\n== {label}: streamed answer from {QWEN25_VL_3B_AWQ}")
    stream = ai.run(QWEN25_VL_3B_AWQ, {"stream": True, "messages": [QUESTION], "max_tokens": 24, "temperature": 0})
    assert isinstance(stream, Stream)
    with stream:
        for piece in stream.iter_text():
            print(piece, end="", flush=True)
    _say()
    content: Any = "What is in this image?"
    if image_url:
        content = [{"type": "text", "text": content}, {"type": "image_url", "image_url": {"url": image_url}}]
    completion = ai.run(INTERNVL3_1B, {"messages": [{"role": "user", "content": content}], "max_tokens": 16, "temperature": 0})
    _say(f"\n== {label}: full response from {INTERNVL3_1B} (with an image)")
    _say(completion.model_dump_json(indent=2))
    _say(f"\n== {label}: a bad payload is caught before anything runs")
    try:
        ai.run(INTERNVL3_1B, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}], "temperature": 5})
    except ValidationError as exc:
        _say(f"azion_ai.ValidationError: {exc}")


PASSAGES = [
    "Paris is the capital of France.",
    "The weather in London is cloudy with light rain.",
    "A cat sits on a red sofa next to a window.",
    "Madrid is the capital of Spain and Rome of Italy.",
]


def _retrieval(ai: AI, label: str) -> None:
    """A small retrieval round: embed the passages and the question, keep the nearest, rerank
    them, answer from the best one."""
    question = "What is the capital of France?"
    _say(f"\n== {label}: retrieval, embed ({QWEN3_EMBEDDING_4B}) -> rerank ({BGE_RERANKER_V2_M3}) -> answer")
    embedded = ai.run(QWEN3_EMBEDDING_4B, {"input": [question, *PASSAGES], "dimensions": 256})
    vectors = [cast(list[float], item.embedding) for item in sorted(embedded.data, key=lambda d: d.index)]  # float encoding
    query, passages = vectors[0], vectors[1:]
    # the vectors are L2-normalised: their dot product is the cosine similarity
    nearest = sorted(range(len(PASSAGES)), key=lambda i: -sum(a * b for a, b in zip(query, passages[i], strict=True)))[:3]
    _say(f"embedded {len(vectors)} texts into {len(query)} dimensions ({embedded.usage.prompt_tokens if embedded.usage else 0} tokens); nearest passages: {nearest}")
    ranked = ai.run(BGE_RERANKER_V2_M3, {"query": question, "documents": [PASSAGES[i] for i in nearest], "top_n": 2})
    for result in ranked.results:
        _say(f"  {result.relevance_score:.4f}  {result.document.text if result.document else ''}")
    best = ranked.results[0].document.text if ranked.results[0].document else ""
    answer = ai.run(QWEN25_VL_3B_AWQ, {"messages": [{"role": "system", "content": f"Answer from this passage: {best}"}, {"role": "user", "content": question}], "max_tokens": 16, "temperature": 0})
    _say(f"answer: {answer.choices[0].message.content}")


def _demo_image() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 160), (30, 90, 200))
    ImageDraw.Draw(image).ellipse((60, 30, 160, 130), fill=(240, 200, 40))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def main(cache_dir: str | None = None) -> int:
    if os.environ.get("AZION_AI_BASE_URL"):
        with_token = " (token from AZION_AI_TOKEN)" if os.environ.get("AZION_AI_TOKEN") else ""
        _say(f"Calling Azion at {os.environ['AZION_AI_BASE_URL']}{with_token}.")
        with AI() as ai:
            _tour(ai, "remote", "https://upload.wikimedia.org/wikipedia/commons/4/47/PNG_transparency_demonstration_1.png")
            _retrieval(ai, "remote")
        return 0

    models_dir = os.environ.get("AZION_AI_MODELS_DIR")
    if models_dir:
        models = {m: os.path.join(models_dir, m) for m in (QWEN25_VL_3B_AWQ, INTERNVL3_1B)}
        for m in (QWEN3_EMBEDDING_4B, BGE_RERANKER_V2_M3):  # the retrieval round, when they are there
            if os.path.isdir(os.path.join(models_dir, m)):
                models[m] = os.path.join(models_dir, m)
        _say(f"Running the real weights from {models_dir}.")
    else:
        from ._local._tiny import default_cache_dir, ensure_tiny_checkpoints

        where = cache_dir or str(default_cache_dir())
        _say(f"No AZION_AI_BASE_URL and no AZION_AI_MODELS_DIR: building (once) tiny random-weight checkpoints of both\narchitectures in {where} and running them in-process.")
        _say("The TEXT BELOW COMES FROM RANDOM WEIGHTS: it is noise, but every step is the real pipeline.")
        _say("Real weights:  azion-ai run MODEL 'prompt' --model-path DIR   (or AZION_AI_MODELS_DIR=/models)")
        _say("Azion itself:  AZION_AI_BASE_URL=https://<app>.map.azionedge.net/v1 (+ AZION_AI_TOKEN if it wants one)")
        models = {k: str(v) for k, v in ensure_tiny_checkpoints(where).items()}

    image = _demo_image()
    retrieval = QWEN3_EMBEDDING_4B in models and BGE_RERANKER_V2_M3 in models
    with AI(backend="local", models=models, device="auto") as ai:
        _tour(ai, "local backend", image)
        if retrieval:
            _retrieval(ai, "local backend")

    from ._server import BackgroundServer, ChatServer

    server = ChatServer(models, device="auto", api_key="demo-key")
    with BackgroundServer(server.app) as running:
        for state in server.states.values():
            state.ready.wait()
        _say(f"\n== serving the same models at {running.base_url} (azion-ai serve), called with the remote transport")
        with AI(base_url=running.base_url, token="demo-key") as remote:
            _tour(remote, "served", image)
            if retrieval:
                _retrieval(remote, "served")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
