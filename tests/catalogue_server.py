"""A loopback server shaped like vLLM's OpenAI server for every kind of Azion model: answers
/v1/chat/completions, /v1/embeddings, /v1/rerank and /v1/score as vLLM does (response shapes from
Azion's pages), and records what it was sent."""

from __future__ import annotations

import json
import time
from typing import Any


def create_app(received: list[dict[str, Any]]) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def record(request: Any) -> dict[str, Any]:
        body = json.loads(await request.body())
        received.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        return body

    async def chat(request: Any) -> Any:
        body = await record(request)
        text = " ".join(m["content"] if isinstance(m["content"], str) else "[parts]" for m in body["messages"])
        return JSONResponse(
            {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
             "choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {text}", "tool_calls": []}, "finish_reason": "stop", "stop_reason": None}],
             "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}},
            headers={"x-request-id": "req-chat"},
        )

    async def embeddings(request: Any) -> Any:
        body = await record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = body.get("dimensions") or 8
        data = [{"index": i, "object": "embedding", "embedding": [round(0.1 * (i + 1) * (k + 1), 3) for k in range(size)]} for i in range(len(inputs))]
        return JSONResponse({"id": "embd-1", "object": "list", "created": 1746821207, "model": body["model"], "data": data,
                             "usage": {"prompt_tokens": 11, "total_tokens": 11, "completion_tokens": 0, "prompt_tokens_details": None}})

    async def rerank(request: Any) -> Any:
        body = await record(request)
        scored = sorted(((len(set(d.split()) & set(body["query"].split())), i, d) for i, d in enumerate(body["documents"])), reverse=True)
        results = [{"index": i, "document": {"text": d}, "relevance_score": s / 10} for s, i, d in scored][: body.get("top_n") or None]
        return JSONResponse({"id": "rerank-1", "model": body["model"], "usage": {"total_tokens": 78}, "results": results})

    async def score(request: Any) -> Any:
        body = await record(request)
        others = body["text_2"] if isinstance(body["text_2"], list) else [body["text_2"]]
        data = [{"index": i, "object": "score", "score": 1.0 / (i + 1)} for i in range(len(others))]
        return JSONResponse({"id": "score-1", "object": "list", "created": 1, "model": body["model"], "data": data, "usage": {"prompt_tokens": 9}})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v1/score", score, methods=["POST"]),
    ])
