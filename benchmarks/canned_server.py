"""A loopback OpenAI-compatible server that returns canned answers instantly (a second process).

    python benchmarks/canned_server.py PORT [CHUNKS]

Used to measure client overhead: the server does no work, so every microsecond is the client's.
"""

from __future__ import annotations

import json
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

MODEL = "qwen-qwen25-vl-3b-instruct-awq"
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-e27716424abf4b3f891ff4850470cb09",
        "object": "chat.completion",
        "created": 1746821581,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "reasoning_content": None, "content": "Sure! Here is a list of some European capitals...", "tool_calls": []},
                "logprobs": None,
                "finish_reason": "stop",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "total_tokens": 527, "completion_tokens": 518, "prompt_tokens_details": None},
        "prompt_logprobs": None,
    }
).encode()


def sse_body(chunks: int) -> bytes:
    parts = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" word{i}"}
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
        parts.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    parts.append(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
    return b"".join(parts)


def make_app(chunks: int) -> Starlette:
    stream_body = sse_body(chunks)

    async def chat(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            async def gen():
                yield stream_body

            return StreamingResponse(gen(), media_type="text/event-stream")
        return Response(COMPLETION, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1])
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    uvicorn.run(make_app(chunks), host="127.0.0.1", port=port, log_level="error", access_log=False)
