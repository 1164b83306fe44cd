"""Side-by-side benchmarks: import cost, validation, client overhead, SSE parsing, local decode.

    .venv/bin/python benchmarks/run.py            # full run, prints a markdown table
    .venv/bin/python benchmarks/run.py --write    # ... and stores it in docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --smoke    # tiny counts: proves the code still runs

Every comparison is measured in the same run, interleaved, and reported as a ratio; machines here
are shared and noisy, so absolute numbers vary more than ratios do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

QWEN = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL = "opengvlab-internvl3-1b-instruct"
MARK_START = "<!-- results:start -->"
MARK_END = "<!-- results:end -->"

Row = tuple[str, str, str, str]  # benchmark, subject, value, vs peer


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


# -- 1. import cost -------------------------------------------------------------------------------


def bench_import(reps: int) -> list[Row]:
    code = "import sys,time;t=time.perf_counter();import {m};d=time.perf_counter()-t;print(d, 'torch' in sys.modules, 'transformers' in sys.modules)"
    results: dict[str, list[float]] = {"azion_ai": [], "openai": []}
    heavy = set()
    for _ in range(reps):
        for module in results:
            out = subprocess.run([sys.executable, "-c", code.format(m=module)], capture_output=True, text=True, check=True)
            seconds, torch_loaded, tf_loaded = out.stdout.split()
            results[module].append(float(seconds))
            if module == "azion_ai" and (torch_loaded == "True" or tf_loaded == "True"):
                heavy.add("torch/transformers imported!")
    a, o = median(results["azion_ai"]), median(results["openai"])
    note = "; ".join(sorted(heavy)) or "torch and transformers not imported"
    return [
        ("import", "import azion_ai", f"{a * 1000:.0f} ms ({note})", f"{a / o:.2f}x openai"),
        ("import", "import openai", f"{o * 1000:.0f} ms", "1.00x"),
    ]


# -- 2. validation ----------------------------------------------------------------------------------


def large_payload() -> dict[str, Any]:
    from conftest import png_data_uri

    image = png_data_uri(size=(256, 256))
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant with access to tools."}]
    for i in range(20):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"Question {i}: " + "lorem ipsum " * 40}, {"type": "image_url", "image_url": {"url": image}}, {"type": "image_url", "image_url": {"url": f"https://example.com/{i}.jpg"}}]})
        call_id = f"chatcmpl-tool-{i}"
        messages.append({"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "London"}'}}]})
        messages.append({"role": "tool", "content": '{"temp": 12}', "tool_call_id": call_id})
    tools = [{"type": "function", "function": {"name": f"tool_{k}", "description": "x", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}} for k in range(10)]
    return {"messages": messages, "tools": tools, "temperature": 0.7, "max_tokens": 512, "stream": True}


VALIDATED: list[tuple[str, dict[str, Any], float]] = []  # (label, payload, warm seconds) for the share rows


def bench_validation(reps: int) -> list[Row]:
    """Our full validation (compiled schema check + the rules the schema cannot express) beside
    jsonschema's ``is_valid`` alone on the same schema, interleaved."""
    from jsonschema import Draft7Validator
    from seeds import example_payloads

    import azion_ai
    from azion_ai import _validation

    rows: list[Row] = []
    cases = [(f"seed example {i + 1} ({QWEN})", p) for i, p in enumerate(example_payloads(QWEN))]
    cases.append(("large: 61 messages, 40 images, 20 tool calls, 10 tools", large_payload()))
    model = azion_ai.get_model(QWEN)
    reference = Draft7Validator(_validation._without_dangling_refs(model.schema))
    for label, payload in cases:
        _validation.forget_validator(QWEN)
        t = time.perf_counter()
        _validation.validate_payload(model, payload)
        first = time.perf_counter() - t
        assert reference.is_valid(payload)
        # Interleaved in blocks (each call timed on its own), so neither warms the other's caches.
        blocks, size = (reps // 50, 50) if len(payload["messages"]) < 10 else (max(1, reps // 200), 5)
        ours, peer = [], []
        for _ in range(max(1, blocks)):
            for _ in range(size):
                t = time.perf_counter()
                _validation.validate_payload(model, payload)
                ours.append(time.perf_counter() - t)
            for _ in range(size):
                t = time.perf_counter()
                reference.is_valid(payload)
                peer.append(time.perf_counter() - t)
        o, j = median(ours), median(peer)
        VALIDATED.append((label, payload, o))
        rows.append(("validation", f"azion_ai, {label}", f"first {first * 1e6:.0f} us; warm median {o * 1e6:.1f} us, p99 {p99(ours) * 1e6:.1f} us", f"{o / j:.3f}x jsonschema time"))
        rows.append(("validation", f"jsonschema is_valid, {label}", f"warm median {j * 1e6:.1f} us, p99 {p99(peer) * 1e6:.1f} us", "1.00x"))
    return rows


def bench_validation_share(requests: int, rounds: int) -> list[Row]:
    """Validation's share of a whole request carrying the same payload: azion_ai (sync,
    non-stream) against the canned loopback server, validation included, as in row 3."""
    import azion_ai

    rows: list[Row] = []
    with CannedServer() as server, azion_ai.AI(base_url=server.base_url, token="bench") as ai:
        for label, payload, validation in VALIDATED:
            body = {**payload, "stream": False}
            ai.run(QWEN, body)
            n = requests if len(payload["messages"]) < 10 else max(1, requests // 10)
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(n):
                    ai.run(QWEN, body)
                times.append((time.perf_counter() - t) / n)
            request = median(times)
            rows.append(("validation share", label, f"{validation / request * 100:.2f}% of the request's time", f"request {request * 1e6:,.0f} us, validation {validation * 1e6:.1f} us"))
    return rows


# -- 3. client overhead against a canned loopback server ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CannedServer:
    def __init__(self, chunks: int = 16) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "canned_server.py"), str(self.port), str(chunks)])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> CannedServer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("canned server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


MESSAGES = [{"role": "user", "content": "Name the european capitals"}]


def sync_clients(base_url: str) -> dict[str, Callable[[bool], None]]:
    import httpx
    import openai

    import azion_ai

    ai = azion_ai.AI(base_url=base_url, token="bench")
    oa = openai.OpenAI(base_url=base_url, api_key="bench")
    hx = httpx.Client()

    def azion(stream: bool) -> None:
        result = ai.run(QWEN, {"messages": MESSAGES, "stream": stream})
        if stream:
            for _ in result:  # type: ignore[union-attr]
                pass

    def openai_call(stream: bool) -> None:
        result = oa.chat.completions.create(model=QWEN, messages=MESSAGES, stream=stream)  # type: ignore[call-overload]
        if stream:
            for _ in result:
                pass

    def bare(stream: bool) -> None:
        body = {"model": QWEN, "messages": MESSAGES, "stream": stream}
        if stream:
            with hx.stream("POST", base_url + "/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        json.loads(line[6:])
        else:
            hx.post(base_url + "/chat/completions", json=body).json()

    return {"azion_ai (sync)": azion, "openai (sync)": openai_call, "bare httpx (sync)": bare}


def async_clients(base_url: str) -> dict[str, Callable[[bool], Any]]:
    import httpx
    import openai

    import azion_ai

    ai = azion_ai.AsyncAI(base_url=base_url, token="bench", http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=100)))
    oa = openai.AsyncOpenAI(base_url=base_url, api_key="bench", http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=100)))
    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))

    async def azion(stream: bool) -> None:
        result = await ai.run(QWEN, {"messages": MESSAGES, "stream": stream})
        if stream:
            async for _ in result:  # type: ignore[union-attr]
                pass

    async def openai_call(stream: bool) -> None:
        result = await oa.chat.completions.create(model=QWEN, messages=MESSAGES, stream=stream)  # type: ignore[call-overload]
        if stream:
            async for _ in result:
                pass

    async def bare(stream: bool) -> None:
        body = {"model": QWEN, "messages": MESSAGES, "stream": stream}
        if stream:
            async with hx.stream("POST", base_url + "/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        json.loads(line[6:])
        else:
            (await hx.post(base_url + "/chat/completions", json=body)).json()

    return {"azion_ai (async)": azion, "openai (async)": openai_call, "bare httpx (async)": bare}


def bench_overhead(requests: int, rounds: int, concurrency: int) -> list[Row]:
    rows: list[Row] = []
    with CannedServer() as server:
        sync = sync_clients(server.base_url)
        asyn = async_clients(server.base_url)
        loop = asyncio.new_event_loop()
        for stream in (False, True):
            kind = "stream (16 chunks)" if stream else "non-stream"
            # sequential, sync and async, interleaved round by round
            times: dict[str, list[float]] = {k: [] for k in [*sync, *asyn]}
            for fn in sync.values():
                fn(stream)
            for afn in asyn.values():
                loop.run_until_complete(afn(stream))
            for _ in range(rounds):
                for name, fn in sync.items():
                    t = time.perf_counter()
                    for _ in range(requests):
                        fn(stream)
                    times[name].append((time.perf_counter() - t) / requests)
                for name, afn in asyn.items():
                    async def seq(afn: Callable[[bool], Any] = afn) -> None:
                        for _ in range(requests):
                            await afn(stream)

                    t = time.perf_counter()
                    loop.run_until_complete(seq())
                    times[name].append((time.perf_counter() - t) / requests)
            for pair in (("azion_ai (sync)", "openai (sync)", "bare httpx (sync)"), ("azion_ai (async)", "openai (async)", "bare httpx (async)")):
                ref = median(times[pair[1]])
                for name in pair:
                    m = median(times[name])
                    rows.append(("client overhead", f"{name}, {kind}, sequential", f"{m * 1e6:.0f} us/request", f"{m / ref:.2f}x openai"))
            # concurrent (async)
            conc: dict[str, list[float]] = {k: [] for k in asyn}
            for _ in range(rounds):
                for name, afn in asyn.items():
                    async def many(afn: Callable[[bool], Any] = afn) -> None:
                        await asyncio.gather(*(afn(stream) for _ in range(concurrency)))

                    t = time.perf_counter()
                    loop.run_until_complete(many())
                    conc[name].append((time.perf_counter() - t) / concurrency)
            ref = median(conc["openai (async)"])
            for name in asyn:
                m = median(conc[name])
                rows.append(("client overhead", f"{name}, {kind}, {concurrency} concurrent", f"{m * 1e6:.0f} us/request", f"{m / ref:.2f}x openai"))
        loop.close()
    return rows


# -- 4. SSE parsing throughput ----------------------------------------------------------------------


def bench_sse(sizes: list[int], long_chars: int, rounds: int) -> list[Row]:
    import httpx
    import openai

    import azion_ai

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from canned_server import MODEL, sse_body

    rows: list[Row] = []

    def pieces_of(body: bytes, size: int = 4096) -> list[bytes]:
        return [body[i : i + size] for i in range(0, len(body), size)]

    def run_pair(body: bytes) -> dict[str, float]:
        split = pieces_of(body)

        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Pieces(split))

        ai = azion_ai.AI(base_url="http://bench.invalid/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler)), validate=False)
        oa = openai.OpenAI(base_url="http://bench.invalid/v1", api_key="x", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
        out: dict[str, list[float]] = {"azion_ai": [], "openai": []}
        for _ in range(rounds):
            t = time.perf_counter()
            n = sum(1 for _ in ai.run(MODEL, {"messages": MESSAGES, "stream": True}))  # type: ignore[union-attr]
            out["azion_ai"].append(time.perf_counter() - t)
            t = time.perf_counter()
            m = sum(1 for _ in oa.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))  # type: ignore[call-overload]
            out["openai"].append(time.perf_counter() - t)
            assert n == m, (n, m)
        return {k: median(v) for k, v in out.items()}

    for size in sizes:
        res = run_pair(sse_body(size))
        for name in ("azion_ai", "openai"):
            rows.append(("SSE parsing", f"{name}, {size:,} chunks", f"{(size + 1) / res[name]:,.0f} chunks/s", f"{res[name] / res['openai']:.2f}x openai time"))
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [{"index": 0, "delta": {"content": "x" * long_chars}}]}
    body = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
    res = run_pair(body)
    for name in ("azion_ai", "openai"):
        rows.append(("SSE parsing", f"{name}, one {long_chars / 1e6:.0f} MB chunk in 4 KiB reads", f"{res[name] * 1000:.1f} ms", f"{res[name] / res['openai']:.2f}x openai time"))
    return rows


class _Pieces(httpx.SyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Any:
        return iter(self.pieces)

    def close(self) -> None:
        pass


# -- 5. local backend pipeline overhead ---------------------------------------------------------------


def bench_local(new_tokens: int, rounds: int) -> list[Row]:
    """Tokens/s through ``ai.run`` streaming (our token step, and with ``fast_decode=False`` the
    generate() path) beside ``model.generate()`` called directly on the same loaded model."""
    import torch

    from azion_ai import AI
    from azion_ai._local._tiny import default_cache_dir, ensure_tiny_checkpoints

    dirs = ensure_tiny_checkpoints(default_cache_dir())
    models = {k: str(v) for k, v in dirs.items()}
    rows: list[Row] = []
    with AI(backend="local", models=models, device="cpu") as ai, AI(backend="local", models=models, device="cpu", fast_decode=False) as via_generate:
        for model_id in (QWEN, INTERNVL):
            payload = {"messages": [{"role": "user", "content": "Name the european capitals"}], "max_tokens": new_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            via_generate.transport.load(model_id)  # type: ignore[attr-defined]
            ai.transport.load(model_id)  # type: ignore[attr-defined]
            loaded = ai.transport._engines[model_id].loaded  # type: ignore[attr-defined]
            conv = [{"role": "user", "content": [{"type": "text", "text": payload["messages"][0]["content"]}]}]
            text = loaded.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            inputs = loaded.processor(text=[text], return_tensors="pt")

            def through(client: Any) -> float:
                t = time.perf_counter()
                final = client.run(model_id, payload).get_final_completion()
                return (final.usage.completion_tokens if final.usage else 0) / (time.perf_counter() - t)

            def direct() -> float:
                t = time.perf_counter()
                with torch.inference_mode():
                    out = loaded.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.0, top_k=50, top_p=1.0, temperature=1.0)
                return (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - t)

            speeds: dict[str, list[float]] = {"step": [], "generate path": [], "direct": []}
            for r in range(rounds + 1):
                measured = {"step": through(ai), "generate path": through(via_generate), "direct": direct()}
                if r:  # the first round warms up
                    for key, value in measured.items():
                        speeds[key].append(value)
            # Each round times all three back to back; the median of the paired ratios resists
            # the machine's load swings better than a ratio of medians.
            d = median(speeds["direct"])
            for key, label in (("step", "ai.run streaming (token step, default)"), ("generate path", "ai.run streaming, fast_decode=False (generate())")):
                ratio = median([dd / oo for oo, dd in zip(speeds[key], speeds["direct"], strict=True)])
                rows.append(("local decode (tiny, CPU)", f"{model_id}: {label}", f"{median(speeds[key]):,.0f} tok/s", f"{ratio:.2f}x overhead vs generate() (median of {rounds} paired rounds)"))
            rows.append(("local decode (tiny, CPU)", f"{model_id}: model.generate() direct", f"{d:,.0f} tok/s", "1.00x"))
    return rows


GPU_ROWS: list[Row] = [
    ("GPU (H100)", "Qwen2.5-VL-3B-AWQ batch-1 decode, TTFT with one 448x448 image, 8 concurrent", "not measured", "no GPU was lent to this session"),
    ("GPU (H100)", "InternVL3-1B batch-1 decode, TTFT with one image, 8 concurrent", "not measured", "no GPU was lent to this session"),
    ("GPU (H100)", "eager transformers generate() on the same checkpoints; fraction of HBM ceiling", "not measured", "no GPU was lent to this session"),
    ("GPU (H100)", "row 8: static cache, compile + CUDA graphs, AWQ kernel choice, batching of 8", "not measured", "no GPU was lent to this session"),
]


def render(rows: list[Row], command: str, seconds: float) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.system()}; no GPU.",
        f"Command: `{command}` ({seconds:.0f} s). Ratios are measured side by side in the same run.",
        "",
        "| benchmark | subject | measured | vs peer |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny counts, to prove the benchmarks run")
    parser.add_argument("--write", action="store_true", help="store the table in docs/benchmarks.md")
    parser.add_argument("--only", nargs="*", default=None, help="import validation overhead sse local")
    args = parser.parse_args(argv)
    smoke = args.smoke
    chosen = set(args.only or ["import", "validation", "overhead", "sse", "local"])
    started = time.perf_counter()
    rows: list[Row] = []
    if "import" in chosen:
        rows += bench_import(1 if smoke else 7)
    if "validation" in chosen:
        rows += bench_validation(5 if smoke else 2000)
    if "overhead" in chosen:
        rows += bench_overhead(requests=3 if smoke else 200, rounds=1 if smoke else 5, concurrency=4 if smoke else 64)
    if "validation" in chosen:
        rows += bench_validation_share(requests=3 if smoke else 200, rounds=1 if smoke else 5)
    if "sse" in chosen:
        rows += bench_sse([50, 100] if smoke else [10_000, 20_000], 100_000 if smoke else 5_000_000, 1 if smoke else 5)
    if "local" in chosen:
        rows += bench_local(8 if smoke else 128, 1 if smoke else 11)
    if "gpu" in chosen or smoke:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--awq-kernel", "torch_awq,torch_fused_awq"], check=True, stdout=subprocess.DEVNULL)
    rows += GPU_ROWS
    command = "bash scripts/bench.sh" + (" --smoke" if smoke else "")
    table = render(rows, command, time.perf_counter() - started)
    print(table)
    if args.write and not smoke:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text()
        head, _, rest = text.partition(MARK_START)
        _, _, tail = rest.partition(MARK_END)
        doc.write_text(f"{head}{MARK_START}\n{table}\n{MARK_END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
