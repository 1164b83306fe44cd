"""Local decode speed against the hardware limit, for both engines side by side.

    .venv/bin/python benchmarks/gpu.py --size full --device cuda     # on an H100: the real shapes
    .venv/bin/python benchmarks/gpu.py --smoke                        # tiny shapes on CPU: runs, proves nothing
    .venv/bin/python benchmarks/gpu.py --size full --device cuda --awq-kernel auto,marlin,machete,exllama_v2,gemm
                                                                      # Qwen's rows once per AWQ kernel
    .venv/bin/python benchmarks/gpu.py --engine both --smoke          # transformers (.venv) and vLLM
                                                                      # (.venv-vllm), one table, with ratios

``--engine vllm`` must run where vLLM imports (``.venv-vllm``); ``--engine both`` runs each engine
in its own environment, one after the other, and prints one table. The checkpoints are built by
``.venv`` (the local extra's transformers) and read by both.

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


def decode_bytes_per_token(model_dir: Path, dtype_bytes: int | None = None) -> int:
    """Bytes of weights one decode step reads: everything but the vision tower and the (untied)
    input embedding, from the checkpoint's safetensors headers (AWQ layers at their packed size).
    ``dtype_bytes`` counts floating tensors at the engine's compute width instead of the file's."""
    import json
    import struct

    widths = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1}
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, info in header.items():
            if name == "__metadata__" or ".visual." in f".{name}" or "vision_tower" in name or "multi_modal_projector" in name:
                continue
            if "embed_tokens" in name:
                continue  # gathered (one row per token), not read whole; lm_head is untied here
            count = 1
            for dim in info["shape"]:
                count *= dim
            width = widths[info["dtype"]]
            if dtype_bytes and info["dtype"] in ("F32", "F16", "BF16"):
                width = dtype_bytes
            total += count * width
    return total


def checkpoints(size: str) -> dict[str, Path]:
    """The benchmark checkpoints, built once by ``.venv`` (whichever environment runs this): the
    tiny ones are the demo's and the tests' (``$AZION_AI_CACHE``), the full-size ones apart."""
    import json
    import subprocess

    main_python = ROOT / ".venv" / "bin" / "python"
    code = (
        "import json, sys; from azion_ai._local._tiny import default_cache_dir, ensure_tiny_checkpoints; "
        "full = sys.argv[1] == 'full'; "
        "d = ensure_tiny_checkpoints(default_cache_dir().parent / 'bench-full' if full else None, full_size=full); "
        "print(json.dumps({k: str(v) for k, v in d.items()}))"
    )
    out = subprocess.run([str(main_python), "-c", code, size], capture_output=True, text=True, check=True, cwd=str(ROOT)).stdout
    return {k: Path(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def run(
    size: str, device: str, prompt_tokens: int, new_tokens: int, concurrency: tuple[int, ...], rounds: int,
    model_ids: tuple[str, ...] = (QWEN, INTERNVL), engine: str = "transformers", **speed: Any,
) -> list[tuple[str, str, str]]:
    import torch

    from azion_ai import AI

    dirs = checkpoints(size)
    rows: list[tuple[str, str, str]] = []
    gpu_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in gpu_name), None)
    if engine == "vllm":
        speed = {"engine": "vllm", "engine_options": {"max_num_seqs": max(concurrency)}}
    with AI(backend="local", models={k: str(v) for k, v in dirs.items()}, device=device, **speed) as ai:
        for model_id in model_ids:
            ai.transport.load(model_id)  # type: ignore[attr-defined]
            engine_obj = ai.transport._engines[model_id]  # type: ignore[attr-defined]
            loaded = getattr(engine_obj, "loaded", None)  # the transformers engine's model
            kernel = loaded.quantized_layer if loaded is not None else getattr(engine_obj, "quantization", None)
            label = f"{model_id} [{engine}{', ' + kernel if kernel else ''}]"
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

            # plain generate() on the same model and prompt (the transformers engine only)
            eager = []
            for _ in range(rounds if loaded is not None else 0):
                conv = [{"role": "user", "content": [{"type": "text", "text": words}]}]
                text = loaded.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
                inputs = {k: v.to(loaded.device) for k, v in loaded.processor(text=[text], return_tensors="pt").items()}
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.inference_mode():
                    loaded.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.0, top_k=50, top_p=1.0, temperature=1.0)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                eager.append(new_tokens / (time.perf_counter() - t))

            # concurrent requests
            throughputs = []
            for many in concurrency:
                done: list[int] = []

                def one(model_id: str = model_id, payload: dict[str, Any] = payload, done: list[int] = done) -> None:
                    whole = {k: v for k, v in payload.items() if k != "stream_options"}
                    done.append(ai.run(model_id, {**whole, "stream": False}).usage.completion_tokens)  # type: ignore[union-attr]

                threads = [threading.Thread(target=one) for _ in range(many)]
                t = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                throughputs.append((many, sum(done) / (time.perf_counter() - t)))

            d = statistics.median(decode)
            rows.append((label, "batch-1 decode via ai.run (stream)", f"{d:,.1f} tok/s"))
            if eager:
                rows.append((label, "batch-1 decode via plain generate()", f"{statistics.median(eager):,.1f} tok/s"))
            rows.append((label, f"time to first token, {prompt_tokens}-token prompt", f"{statistics.median(ttft_text) * 1000:,.1f} ms"))
            rows.append((label, "time to first token, one 448x448 image", f"{ttft_image * 1000:,.1f} ms"))
            for many, throughput in throughputs:
                rows.append((label, f"{many} concurrent requests, total", f"{throughput:,.1f} tok/s"))
            compute_bytes = 2 if device.startswith("cuda") else None
            per_token = decode_bytes_per_token(dirs[model_id], compute_bytes)
            if bandwidth:
                ceiling = bandwidth / per_token
                rows.append((label, f"HBM ceiling ({per_token / 1e9:.2f} GB/token on {gpu_name})", f"{ceiling:,.0f} tok/s; reached {d / ceiling:.1%}"))
            else:
                rows.append((label, "weights read per decode step", f"{per_token / 1e6:,.3f} MB (no HBM figure for {gpu_name})"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--concurrency", default="8,32", help="comma-separated numbers of concurrent requests")
    parser.add_argument("--engine", choices=["transformers", "vllm", "both"], default="transformers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU, few tokens")
    parser.add_argument("--static-cache", action="store_true", help="the backend's static KV cache option")
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile of the decode step")
    parser.add_argument("--max-batch-size", type=int, default=1, help="batch waiting requests (the concurrent row)")
    parser.add_argument("--awq-kernel", default=None, help="comma-separated gptqmodel AWQ kernels: Qwen's rows for each")
    parser.add_argument("--no-fast-decode", action="store_true", help="lone requests through generate(), not the token step")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.device, args.prompt_tokens, args.new_tokens, args.concurrency, args.rounds = "tiny", "cpu", 16, 8, "2", 1
    if args.engine == "both":
        return both(argv or sys.argv[1:])
    concurrency = tuple(int(c) for c in str(args.concurrency).split(","))
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    speed = {"static_cache": args.static_cache, "compile": args.compile, "max_batch_size": args.max_batch_size, "fast_decode": not args.no_fast_decode}
    kernels = args.awq_kernel.split(",") if args.awq_kernel and args.engine == "transformers" else [None]
    rows = []
    for i, kernel in enumerate(kernels):
        model_ids = (QWEN, INTERNVL) if i == 0 else (QWEN,)  # InternVL3 is not quantized: once is enough
        options = {**speed, "awq_kernel": kernel} if args.engine == "transformers" else {}
        rows += run(args.size, args.device, args.prompt_tokens, args.new_tokens, concurrency, args.rounds, model_ids, args.engine, **options)
    if args.engine == "vllm":
        mode = "vLLM engine"
    else:
        mode = "compile" if args.compile else ("static cache" if args.static_cache else "eager")
        mode += ", generate()" if args.no_fast_decode else ", token step"
        mode += f", max_batch_size {args.max_batch_size}"
    print(f"| model | measure ({args.size} shapes, {args.device}, {mode}) | value |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def both(argv: list[str]) -> int:
    """Each engine in its own environment, then one table with vLLM / transformers ratios."""
    import subprocess
    import tempfile

    rest = [a for a in argv if a not in ("--engine", "both")]
    tables = {}
    for engine, python in (("transformers", ROOT / ".venv" / "bin" / "python"), ("vllm", ROOT / ".venv-vllm" / "bin" / "python")):
        # output to files, not pipes: vLLM's worker processes inherit the descriptors
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            code = subprocess.run([str(python), __file__, *rest, "--engine", engine], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=str(ROOT)).returncode
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if code != 0:
            print(stderr[-3000:], file=sys.stderr)
            return code
        table = [line for line in stdout.splitlines() if line.startswith("| ")]
        print("\n".join(table) + "\n")
        tables[engine] = {(row.split(" | ")[0].split(" [")[0].lstrip("| "), row.split(" | ")[1]): row.split(" | ")[2].rstrip(" |") for row in table[2:]}
    print("| model | measure | vLLM / transformers |\n| --- | --- | --- |")
    for (model, measure), value in tables["vllm"].items():
        other = tables["transformers"].get((model, measure))
        if other is None or "tok/s" not in value and " ms" not in value:
            continue
        a, b = float(value.split()[0].replace(",", "")), float(other.split()[0].replace(",", ""))
        ratio = a / b if "tok/s" in value else b / a  # > 1: vLLM is better (faster, or sooner)
        print(f"| {model} | {measure} | {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
