"""Local decode speed against the hardware limit (issue rows 6-7), for a GPU.

    .venv/bin/python benchmarks/gpu.py --size full --device cuda     # on an H100: the real shapes
    .venv/bin/python benchmarks/gpu.py --smoke                        # tiny shapes on CPU: runs, proves nothing
    .venv/bin/python benchmarks/gpu.py --size full --device cuda --awq-kernel auto,marlin,machete,exllama_v2,gemm
                                                                      # Qwen's rows once per AWQ kernel

Full-size checkpoints have the real Qwen2.5-VL-3B-AWQ and InternVL3-1B dimensions with random
weights (AWQ layers packed in code), so speed is real without the real weights. Rows: batch-1
decode tokens/s (256-token prompt, 256 new tokens) through ``ai.run`` streaming and through plain
``generate()`` on the same model, time to first token with one 448x448 image, total throughput
with 8 concurrent requests, and the fraction of the HBM-bandwidth ceiling reached.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN = "qwen-qwen25-vl-3b-instruct-awq"
INTERNVL = "opengvlab-internvl3-1b-instruct"
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}


def image_uri(size: int = 448) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (40, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: everything but the vision tower."""
    total = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if ".visual." in f".{name}" or "vision_tower" in name or "multi_modal_projector" in name:
            continue
        if "embed_tokens" in name and "lm_head" not in name and getattr(model.config, "tie_word_embeddings", False) is False:
            continue  # an untied embedding is gathered (one row), not read whole
        total += tensor.numel() * tensor.element_size()
    return total


def run(size: str, device: str, prompt_tokens: int, new_tokens: int, concurrency: int, rounds: int, model_ids: tuple[str, ...] = (QWEN, INTERNVL), **speed: Any) -> list[tuple[str, str, str]]:
    import torch

    from azion_ai import AI
    from azion_ai._local._tiny import default_cache_dir, ensure_tiny_checkpoints

    dirs = ensure_tiny_checkpoints(default_cache_dir().parent / f"bench-{size}", full_size=size == "full")
    rows: list[tuple[str, str, str]] = []
    gpu_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in gpu_name), None)
    with AI(backend="local", models={k: str(v) for k, v in dirs.items()}, device=device, **speed) as ai:
        for model_id in model_ids:
            ai.transport.load(model_id)  # type: ignore[attr-defined]
            loaded = ai.transport._engines[model_id].loaded  # type: ignore[attr-defined]
            label = f"{model_id} [{loaded.awq_kernel}]" if loaded.awq_kernel else model_id
            words = " ".join(["capital"] * prompt_tokens)
            payload = {"messages": [{"role": "user", "content": words}], "max_tokens": new_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}

            def timed_stream(p: dict[str, Any]) -> tuple[float, float, int]:
                start = time.perf_counter()
                first = None
                final = ai.run(model_id, p)
                for chunk in final:  # type: ignore[union-attr]
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
                end = time.perf_counter()
                n = final._accumulator.completion().usage.completion_tokens  # type: ignore[union-attr]
                return (first or end) - start, end - (first or start), n

            timed_stream(payload)  # warm-up (kernels, caches)
            decode, ttft_text = [], []
            for _ in range(rounds):
                ttft, rest, n = timed_stream(payload)
                ttft_text.append(ttft)
                decode.append((n - 1) / rest if rest > 0 else float("nan"))
            image_payload = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_uri()}}, {"type": "text", "text": "What is in this image?"}]}], "max_tokens": 8, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            ttft_image = statistics.median(timed_stream(image_payload)[0] for _ in range(rounds))

            # plain generate() on the same model and prompt
            conv = [{"role": "user", "content": [{"type": "text", "text": words}]}]
            text = loaded.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            inputs = {k: v.to(loaded.device) for k, v in loaded.processor(text=[text], return_tensors="pt").items()}
            eager = []
            for _ in range(rounds):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.inference_mode():
                    loaded.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.0, top_k=50, top_p=1.0, temperature=1.0)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                eager.append(new_tokens / (time.perf_counter() - t))

            # concurrent requests
            done: list[int] = []

            def one(model_id: str = model_id, payload: dict[str, Any] = payload) -> None:
                done.append(ai.run(model_id, {**payload, "stream": False}).usage.completion_tokens)  # type: ignore[union-attr]

            threads = [threading.Thread(target=one) for _ in range(concurrency)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            throughput = sum(done) / (time.perf_counter() - t)

            d = statistics.median(decode)
            rows.append((label, "batch-1 decode via ai.run (stream)", f"{d:,.1f} tok/s"))
            rows.append((label, "batch-1 decode via plain generate()", f"{statistics.median(eager):,.1f} tok/s"))
            rows.append((label, f"time to first token, {prompt_tokens}-token prompt", f"{statistics.median(ttft_text) * 1000:,.1f} ms"))
            rows.append((label, "time to first token, one 448x448 image", f"{ttft_image * 1000:,.1f} ms"))
            rows.append((label, f"{concurrency} concurrent requests, total", f"{throughput:,.1f} tok/s"))
            per_token = decode_bytes_per_token(loaded.model)
            if bandwidth:
                ceiling = bandwidth / per_token
                rows.append((label, f"HBM ceiling ({per_token / 1e9:.2f} GB/token on {gpu_name})", f"{ceiling:,.0f} tok/s; reached {d / ceiling:.1%}"))
            else:
                rows.append((label, "weights read per decode step", f"{per_token / 1e6:,.1f} MB (no HBM figure for {gpu_name})"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU, few tokens")
    parser.add_argument("--static-cache", action="store_true", help="the backend's static KV cache option")
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile of the decode step")
    parser.add_argument("--max-batch-size", type=int, default=1, help="batch waiting requests (the concurrent row)")
    parser.add_argument("--awq-kernel", default=None, help="comma-separated gptqmodel AWQ kernels: Qwen's rows for each")
    parser.add_argument("--no-fast-decode", action="store_true", help="lone requests through generate(), not the token step")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.device, args.prompt_tokens, args.new_tokens, args.concurrency, args.rounds = "tiny", "cpu", 16, 8, 2, 1
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    speed = {"static_cache": args.static_cache, "compile": args.compile, "max_batch_size": args.max_batch_size, "fast_decode": not args.no_fast_decode}
    kernels = args.awq_kernel.split(",") if args.awq_kernel else [None]
    rows = []
    for i, kernel in enumerate(kernels):
        model_ids = (QWEN, INTERNVL) if i == 0 else (QWEN,)  # InternVL3 is not quantized: once is enough
        rows += run(args.size, args.device, args.prompt_tokens, args.new_tokens, args.concurrency, args.rounds, model_ids, awq_kernel=kernel, **speed)
    mode = "compile" if args.compile else ("static cache" if args.static_cache else "eager")
    mode += ", generate()" if args.no_fast_decode else ", token step"
    mode += f", max_batch_size {args.max_batch_size}"
    print(f"| model | measure ({args.size} shapes, {args.device}, {mode}) | value |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
