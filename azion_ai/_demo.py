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
from typing import Any

from ._client import AI
from ._exceptions import ValidationError
from ._models import INTERNVL3_1B, QWEN25_VL_3B_AWQ
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
        return 0

    models_dir = os.environ.get("AZION_AI_MODELS_DIR")
    if models_dir:
        models = {m: os.path.join(models_dir, m) for m in (QWEN25_VL_3B_AWQ, INTERNVL3_1B)}
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
    with AI(backend="local", models=models, device="auto") as ai:
        _tour(ai, "local backend", image)

    from ._server import BackgroundServer, ChatServer

    server = ChatServer(models, device="auto", api_key="demo-key")
    with BackgroundServer(server.app) as running:
        for state in server.states.values():
            state.ready.wait()
        _say(f"\n== serving the same models at {running.base_url} (azion-ai serve), called with the remote transport")
        with AI(base_url=running.base_url, token="demo-key") as remote:
            _tour(remote, "served", image)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
