"""Local decode speed against the hardware limit: one table, written down as it is measured.

    python3 benchmarks/gpu.py --out results/             # on a GPU: real shapes, default options
    python3 benchmarks/gpu.py --smoke                    # tiny shapes on CPU: runs, proves nothing
    python3 benchmarks/gpu.py --compile --max-batch-size 8 --out results/   # options under test
    python3 benchmarks/gpu.py --plot-from results/       # redraw the plot where matplotlib is
    .venv/bin/python benchmarks/gpu.py --engine both --smoke   # transformers (.venv) and vLLM
                                                               # (.venv-vllm), one table, with ratios

Any Python with torch and transformers runs it, with the checkout importable (it puts its own
root on ``sys.path``): a GPU machine's stock interpreter with ``PYTHONPATH=/tmp/site:$PWD`` (see
``scripts/gpu_check.sh``) or ``.venv/bin/python``. It uses the public API only (``AI(...)``,
``ai.transport.load``, ``ai.run``), so it measures whatever the engine is.

Rows, for each model: the copy bandwidth measured on the device and the model's ceiling (weight
bytes one decode step reads, from the safetensors headers, over that bandwidth); load time and
the first request after it (warm-up); batch-1 decode through ``ai.run`` (stream) and through a
bare ``model.generate()`` on the same weights loaded by transformers alone; time to first token
(a whole request with ``max_tokens=1``) for the text prompt and for one 448x448 image; 1, 8 and
32 concurrent requests (total tokens/s and the ratio to one); peak memory. Every row names the
options it ran with. ``--out DIR`` writes ``gpu-results.json`` and ``gpu-results.md`` after each
row, so a run that is killed still leaves what it measured, and ``gpu-results.png`` (tokens/s
against the ceiling) at the end when matplotlib imports; ``--deadline`` skips, and names, what
would not finish in time.

Full-size checkpoints have the real InternVL3-1B and Qwen2.5-VL-3B dimensions with random bf16
weights made on the device (seconds, cached under ``--checkpoints``). Qwen is its unquantized
twin unless gptqmodel imports (then the AWQ checkpoint, packed in code, as the published one);
``--qwen`` picks. Rows of the vocabulary past the small test tokenizer, and the special tokens,
get zero output weights, so greedy decoding never stops early nor leaves the tokenizer.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shlex
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
FULL_BUILD = "1"  # the full-size builders' version: a change rebuilds the cache


def log(message: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def image_uri(size: int = 448) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (40, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --- results, written as they come ---------------------------------------------------------


class Results:
    """Rows in the order measured; with ``out``, the JSON and markdown files are rewritten after
    every row (to a temporary name, then renamed) so a killed run leaves a readable table."""

    def __init__(self, out: Path | None, meta: dict[str, Any]) -> None:
        self.out = out
        self.meta = meta
        self.rows: list[dict[str, Any]] = []
        self.complete = False
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.write()

    def add(self, model: str, measure: str, value: float | None, unit: str, options: str, note: str = "") -> None:
        row = {"model": model, "measure": measure, "value": value, "unit": unit, "options": options, "note": note}
        self.rows.append(row)
        log(f"{model} | {measure} | {format_value(row)}")
        self.write()

    def value(self, model: str, measure: str) -> float | None:
        return next((r["value"] for r in self.rows if r["model"] == model and r["measure"] == measure), None)

    def table(self) -> str:
        lines = ["| model | measure | value | options |", "| --- | --- | --- | --- |"]
        for r in self.rows:
            lines.append(f"| {r['model']} | {r['measure']} | {format_value(r)} | {r['options']} |")
        return "\n".join(lines)

    def markdown(self) -> str:
        m = self.meta
        head = [
            f"Machine: {m.get('device_name')}; Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}.",
            f"Command: `{m.get('command')}` (started {m.get('started')}{'' if self.complete else '; INCOMPLETE: the run stopped before the end'}).",
            "",
        ]
        return "\n".join(head) + self.table() + "\n"

    def write(self) -> None:
        if self.out is None:
            return
        data = {"meta": self.meta, "complete": self.complete, "rows": self.rows}
        for name, text in (("gpu-results.json", json.dumps(data, indent=1)), ("gpu-results.md", self.markdown())):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.out / name)


def format_value(row: dict[str, Any]) -> str:
    value, unit = row["value"], row["unit"]
    if value is None:
        text = "not measured"
    elif unit == "ms":
        text = f"{value:,.1f} ms"
    elif unit == "s":
        text = f"{value:,.2f} s"
    elif unit in ("tok/s", "x"):
        text = f"{value:,.1f} {unit}" if unit == "tok/s" else f"{value:.2f}x"
    elif unit == "GB/s":
        text = f"{value:,.0f} GB/s"
    elif unit == "GB":
        text = f"{value:,.2f} GB"
    elif unit == "%":
        text = f"{value:.1f}%"
    else:
        text = f"{value:g} {unit}"
    return f"{text} ({row['note']})" if row["note"] else text


# --- the device: bandwidth, memory ---------------------------------------------------------


def copy_bandwidth(device: str) -> float:
    """Bytes per second a device-to-device copy moves (read + write), the decode step's limit."""
    import torch

    dev = torch.device(device)
    size = (1 << 30) if dev.type == "cuda" else (64 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    iters = 20 if dev.type == "cuda" else 5
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize(dev)
        seconds = start.elapsed_time(end) / 1000
    else:
        t = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src)
        seconds = time.perf_counter() - t
    del src, dst
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * size * iters / seconds


def decode_bytes_per_token(model_dir: Path, dtype_bytes: int | None = None) -> int:
    """Bytes of weights one decode step reads: the language model and the output head, not the
    vision tower nor the input embedding (one row per token is gathered), from the safetensors
    headers (AWQ layers at their packed size); a tied head counts the embedding once.
    ``dtype_bytes`` counts floating tensors at the engine's compute width instead of the file's."""
    import struct

    widths = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1}
    config = json.loads((Path(model_dir) / "config.json").read_text())
    tied = config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False))
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, info in header.items():
            if name == "__metadata__" or ".visual." in f".{name}" or "vision_tower" in name or "multi_modal_projector" in name:
                continue
            if "embed_tokens" in name and not tied:
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            width = widths[info["dtype"]]
            if dtype_bytes and info["dtype"] in ("F32", "F16", "BF16"):
                width = dtype_bytes
            total += count * width
    return total


def memory_peak(device: str) -> tuple[float, str]:
    """(GB, what was measured): the allocator's peak on CUDA, the process's peak RSS on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 1e9, "torch.cuda.max_memory_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "process peak RSS"


def reset_memory_peak(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(torch.device(device))


# --- checkpoints ---------------------------------------------------------------------------


def tiny_checkpoints(engine: str) -> dict[str, Path]:
    """The tiny checkpoints (the demo's and the tests', ``$AZION_AI_CACHE``). Under vLLM's
    environment they are built by ``.venv`` (the local extra's transformers) when it exists."""
    if engine == "vllm" and (ROOT / ".venv" / "bin" / "python").exists():
        import subprocess

        code = "import json; from azion_ai._local._tiny import ensure_tiny_checkpoints as e; print(json.dumps({k: str(v) for k, v in e().items()}))"
        out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True, cwd=str(ROOT)).stdout
        return {k: Path(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    from azion_ai._local._tiny import ensure_tiny_checkpoints

    return ensure_tiny_checkpoints()


def gptqmodel_imports() -> bool:
    import importlib.util

    return importlib.util.find_spec("gptqmodel") is not None


def _fill_(tensor: Any, name: str, gen: Any) -> Any:
    """Random bf16-friendly values in place: N(0, 0.02) matrices and biases; other vectors (norm
    weights, layer scales) keep their initial values, or ones where there are none (meta)."""
    if tensor.dim() >= 2 or name.endswith("bias"):
        tensor.normal_(0.0, 0.02, generator=gen)
    return tensor


def _zero_rows_(weight: Any, vocab: int, specials: list[int]) -> None:
    """Output rows past the tokenizer's ``vocab`` and at special tokens: zero logits there, while
    the random rows give some positive ones, so greedy decoding picks an ordinary token."""
    weight[vocab:] = 0
    weight[specials] = 0


def build_qwen_full_twin(out: Path, device: str) -> Path:
    """Qwen2.5-VL-3B unquantized (the AWQ checkpoint's twin) at the real shapes, in the published
    file set (``_tiny``'s writer: transformers-4 key names, tied embeddings), random bf16 weights
    made tensor by tensor on ``device`` from the shapes of a model built on ``meta``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from azion_ai._local import _tiny

    tok = _tiny._tokenizer(_tiny.QWEN_ADDED)
    config = _tiny._tiny_qwen_config(tok, 0, full=True) | {"torch_dtype": "bfloat16"}
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    specials = [tok.convert_tokens_to_ids(t) for t in _tiny.QWEN_SPECIALS + _tiny.QWEN_ADDED]
    gen = torch.Generator(device=device).manual_seed(0)
    tensors = {}
    for name, meta in model.state_dict().items():
        old = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if old == "lm_head.weight":
            continue  # tied to the embeddings
        t = _fill_(torch.ones(meta.shape, device=device, dtype=torch.float32), name, gen).to(torch.bfloat16)
        if old == "model.embed_tokens.weight":
            _zero_rows_(t, len(tok), specials)
        tensors[old] = t.cpu().contiguous()
        del t
    _tiny._write_qwen_files(out, tensors, config, tok)
    return out


def build_internvl_full(out: Path, device: str) -> Path:
    """InternVL3-1B at the real shapes: ``_tiny.build_internvl3(full_size=True)`` (its config and
    files) with the model made on ``device`` and its weights filled there, stored as bf16."""
    from unittest import mock

    import torch

    from azion_ai._local import _tiny

    gen = torch.Generator(device=device).manual_seed(1)

    def randomise(model: Any, std: float, seed: int) -> None:
        with torch.no_grad():
            model.to(torch.bfloat16)
            for name, p in model.named_parameters():
                _fill_(p, name, gen)

    def shrink(model: Any, token_ids: list[int]) -> None:
        # the tokenizer's added tokens come last: the largest id passed here ends its vocabulary
        with torch.no_grad():
            _zero_rows_(model.get_output_embeddings().weight, max(token_ids) + 1, token_ids)

    with torch.device(device), mock.patch.object(_tiny, "_randomise", randomise), mock.patch.object(_tiny, "_shrink_special_rows", shrink):
        _tiny.build_internvl3(out, full_size=True)
    return out


def full_checkpoints(root: Path, device: str, qwen: str) -> dict[str, Path]:
    """The full-size checkpoints, built once under ``root`` (a ``.built`` marker per directory)."""
    import shutil

    builders = {INTERNVL: ("internvl3-1b-bf16", build_internvl_full)}
    if qwen == "awq":
        from azion_ai._local._tiny import build_qwen25_vl_awq

        builders[QWEN] = ("qwen25-vl-3b-awq", lambda out, _dev: build_qwen25_vl_awq(out, full_size=True))
    else:
        builders[QWEN] = ("qwen25-vl-3b-bf16-twin", build_qwen_full_twin)
    dirs = {}
    for model_id, (name, build) in builders.items():
        directory = root / name
        marker = directory / ".built"
        if not (marker.exists() and marker.read_text() == FULL_BUILD):
            tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            started = time.perf_counter()
            log(f"building {name} (random weights at the real shapes) on {device}")
            build(tmp, device)
            (tmp / ".built").write_text(FULL_BUILD)
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
            log(f"built {name} in {time.perf_counter() - started:.1f} s")
        dirs[model_id] = directory
    return dirs


# --- measurements --------------------------------------------------------------------------


class Budget:
    """Wall-clock left before ``--deadline``; each measurement asks before it starts."""

    def __init__(self, seconds: float | None) -> None:
        self.end = time.perf_counter() + seconds if seconds else None

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.perf_counter()

    def allows(self, needed: float) -> bool:
        return needed < self.left()


def describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items()) if options else "defaults"


def prompt_payload(words: int, new_tokens: int, **extra: Any) -> dict[str, Any]:
    text = " ".join(["capital"] * words)
    return {"messages": [{"role": "user", "content": text}], "max_tokens": new_tokens, "temperature": 0, **extra}


def image_payload(**extra: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": image_uri(448)}}, {"type": "text", "text": "What is in this image?"}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 1, "temperature": 0, **extra}


def timed_stream(ai: Any, model_id: str, payload: dict[str, Any]) -> tuple[float, float, float, int]:
    """(whole request s, time to the first token s, decode tok/s after it, completion tokens)."""
    start = time.perf_counter()
    first = None
    tokens = 0
    for chunk in ai.run(model_id, {**payload, "stream": True, "stream_options": {"include_usage": True}}):
        if first is None and chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    rate = (tokens - 1) / (end - first) if tokens > 1 and end > first else float("nan")
    return end - start, first - start, rate, tokens


def concurrent_measure(many: int) -> str:
    return "1 request alone, total" if many == 1 else f"{many} concurrent requests, total"


def concurrent(ai: Any, model_id: str, payload: dict[str, Any], many: int) -> tuple[float, int, list[BaseException]]:
    """Total completion tokens/s of ``many`` whole requests started together."""
    done: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            done.append(ai.run(model_id, payload).usage.completion_tokens)
        except BaseException as exc:  # noqa: BLE001 - reported in the row
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(many)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.perf_counter() - t), sum(done), errors


def attempt(res: Results, label: str, measure: str, options: str, fn: Any) -> Any:
    """``fn()``, or None with a row saying how it failed: one failure costs its rows, not the run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the row reports it
        first = " ".join(str(exc).split())[:240]
        res.add(label, measure, None, "", options, f"failed: {type(exc).__name__}: {first}")
        return None


def bench_model(
    res: Results, model_id: str, label: str, directory: Path, device: str, ai_options: dict[str, Any],
    args: argparse.Namespace, budget: Budget, bandwidth: float | None,
) -> None:
    """One model's rows through the SDK, then the bare generate() rows; stops at the budget.
    Requests are greedy (temperature 0) and otherwise default: Qwen's keep the checkpoint's
    repetition_penalty 1.05, as a user's would."""
    from azion_ai import AI

    opts = f"device={device}, {describe(ai_options)}"
    width = 2 if device.startswith("cuda") else 4
    per_token = decode_bytes_per_token(directory, width)
    if bandwidth:
        res.add(label, "ceiling: weight bytes per token / copy bandwidth", bandwidth / per_token, "tok/s", f"{per_token / 1e6:,.1f} MB read per token at {width} bytes per float")
    shape = f"{args.prompt_tokens}-word prompt, {args.new_tokens} new tokens, greedy"
    text = prompt_payload(args.prompt_tokens, args.new_tokens)
    reset_memory_peak(device)
    with AI(backend="local", models={model_id: str(directory)}, device=device, **ai_options) as ai:
        t = time.perf_counter()
        if attempt(res, label, "load (ai.transport.load)", opts, lambda: ai.transport.load(model_id) or True) is None:
            return
        res.add(label, "load (ai.transport.load)", time.perf_counter() - t, "s", opts)
        first = attempt(res, label, "first request after load (warm-up included)", opts, lambda: timed_stream(ai, model_id, text))
        if first is None:
            res.add(label, "the other ai.run rows", None, "", opts, "skipped: the first request failed")
        else:
            res.add(label, "first request after load (warm-up included)", first[0], "s", f"{opts}; {shape}, stream", f"{first[3]} tokens")
            sdk_rows(res, ai, model_id, label, opts, shape, text, args, budget, bandwidth)
        peak, what = memory_peak(device)
        res.add(label, "peak memory", peak, "GB", opts, what)
    if args.engine == "transformers" and budget.allows(30):
        attempt(res, label, "batch-1 decode via bare model.generate()", "transformers alone", lambda: bare_generate(res, label, directory, device, args, budget, ai_options.get("awq_kernel")))


def sdk_rows(
    res: Results, ai: Any, model_id: str, label: str, opts: str, shape: str, text: dict[str, Any],
    args: argparse.Namespace, budget: Budget, bandwidth: float | None,
) -> None:
    """Batch-1 decode, time to first token and concurrency through ``ai.run``."""
    rounds: list[tuple[float, float, float, int]] = []
    for _ in range(args.rounds):
        if rounds and not budget.allows(rounds[-1][0] * 1.5):
            break
        got = attempt(res, label, "batch-1 decode via ai.run (stream)", opts, lambda: timed_stream(ai, model_id, text))
        if got is None:
            return
        rounds.append(got)
    steady = statistics.median(r[0] for r in rounds)
    res.add(label, "batch-1 decode via ai.run (stream)", statistics.median(r[2] for r in rounds), "tok/s", f"{opts}; {shape}, stream, median of {len(rounds)}", f"{statistics.median(r[3] for r in rounds):.0f} tokens, request {steady:.2f} s")
    ceiling = res.value(label, "ceiling: weight bytes per token / copy bandwidth")
    decoded = res.value(label, "batch-1 decode via ai.run (stream)")
    if bandwidth and ceiling and decoded is not None and decoded == decoded:
        res.add(label, "batch-1 decode via ai.run / ceiling", decoded / ceiling * 100, "%", opts)
    for name, payload in (("text prompt", prompt_payload(args.prompt_tokens, 1)), ("one 448x448 image", image_payload())):
        measure = f"time to first token, {name}"

        def ttft(payload: dict[str, Any] = payload) -> tuple[list[float], int]:
            ai.run(model_id, payload)  # the path's own warm-up (the image processor, the vision tower)
            times: list[float] = []
            prompt = 0
            for _ in range(max(args.rounds, 3)):
                if times and not budget.allows(times[-1] * 2):
                    break
                t = time.perf_counter()
                prompt = ai.run(model_id, payload).usage.prompt_tokens
                times.append(time.perf_counter() - t)
            return times, prompt

        got = attempt(res, label, measure, opts, ttft)
        if got is not None:
            res.add(label, measure, statistics.median(got[0]) * 1000, "ms", f"{opts}; whole request, max_tokens=1, median of {len(got[0])}", f"{got[1]}-token prompt")
    few = prompt_payload(args.prompt_tokens, args.concurrent_new_tokens)
    single = None
    for many in (1, *args.concurrency):
        worst = (steady * args.concurrent_new_tokens / max(args.new_tokens, 1)) * many  # if nothing batches
        if not budget.allows(worst * 1.2):
            res.add(label, concurrent_measure(many), None, "tok/s", opts, f"skipped: up to {worst:.0f} s needed, {budget.left():.0f} s left")
            continue

        def measure_many(many: int = many) -> tuple[float, int, list[BaseException]]:
            concurrent(ai, model_id, {**few, "max_tokens": 2}, many)  # warm-up at this size
            return concurrent(ai, model_id, few, many)

        got = attempt(res, label, concurrent_measure(many), opts, measure_many)
        if got is None:
            continue
        rate, tokens, errors = got
        note = f"{tokens} tokens in all" + (f"; {len(errors)} failed: {type(errors[0]).__name__}: {str(errors[0])[:120]}" if errors else "")
        res.add(label, concurrent_measure(many), rate, "tok/s", f"{opts}; {args.prompt_tokens}-word prompts, {args.concurrent_new_tokens} new tokens each", note)
        if many == 1:
            single = rate
        elif single:
            res.add(label, f"{many} concurrent requests / one", rate / single, "x", opts)


def bare_generate(res: Results, label: str, directory: Path, device: str, args: argparse.Namespace, budget: Budget, kernel: str | None) -> None:
    """The same weights loaded by transformers alone, decoding the same prompt with generate()."""
    import gc

    import torch

    rates, prompt, dtype = _bare_rates(directory, device, args, budget, kernel)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not rates:
        return
    res.add(label, "batch-1 decode via bare model.generate()", statistics.median(rates), "tok/s", f"transformers alone, {dtype}, greedy; median of {len(rates)}", f"{prompt}-token prompt")
    ours = res.value(label, "batch-1 decode via ai.run (stream)")
    if ours and ours == ours:
        res.add(label, "ai.run / bare generate()", ours / statistics.median(rates), "x", "batch-1 decode, same prompt")


def _bare_rates(directory: Path, device: str, args: argparse.Namespace, budget: Budget, kernel: str | None) -> tuple[list[float], int, str]:
    """Decode tokens/s of plain generate(): tokens after the first over the time they took."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
        GenerationConfig,
    )

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    config = AutoConfig.from_pretrained(str(directory))
    quant = getattr(config, "quantization_config", None)
    if quant is not None:  # AWQ as the engine loads it: vision tower and head unquantized, same kernel
        quant = dict(quant if isinstance(quant, dict) else quant.to_dict())
        quant["modules_to_not_convert"] = sorted({*(quant.get("modules_to_not_convert") or []), "visual", "model.visual", "lm_head"})
        quant["backend"] = kernel or ("auto" if device.startswith("cuda") else "torch_awq")
        config.quantization_config = quant
        dtype = torch.float16 if device.startswith("cuda") else dtype  # AWQ CUDA kernels take fp16
    processor = AutoProcessor.from_pretrained(str(directory))
    model = AutoModelForImageTextToText.from_pretrained(str(directory), config=config, dtype=dtype, device_map=device).eval()
    conv = [{"role": "user", "content": [{"type": "text", "text": " ".join(["capital"] * args.prompt_tokens)}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    inputs = {k: v.to(model.device) for k, v in processor(text=[text], return_tensors="pt").items()}
    pad = processor.tokenizer.pad_token_id

    class Clock:
        """A streamer for generate(): the time each new token reaches the host."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def rate(n: int) -> float:
        # explicit values: generate() fills unset ones from the checkpoint (Qwen: penalty 1.05)
        config = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=n, min_new_tokens=n, pad_token_id=pad)
        clock = Clock()
        with torch.inference_mode():
            model.generate(**inputs, generation_config=config, streamer=clock)
        tokens = clock.times[1:]  # the first put() is the prompt
        return (len(tokens) - 1) / (tokens[-1] - tokens[0]) if len(tokens) > 1 and tokens[-1] > tokens[0] else float("nan")

    rate(2)  # warm-up
    rates: list[float] = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        rates.append(rate(args.new_tokens))
        if not budget.allows((time.perf_counter() - t) * 1.5):
            break
    return rates, int(inputs["input_ids"].shape[1]), str(dtype).replace("torch.", "")


# --- the plot ------------------------------------------------------------------------------


def plot(out: Path) -> str:
    """Tokens/s against the ceiling, per model (log scale), from ``gpu-results.json``."""
    data = json.loads((out / "gpu-results.json").read_text())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "plot skipped: matplotlib is not importable here; elsewhere run "
            f"`pip install matplotlib && python benchmarks/gpu.py --plot-from {out}`"
        )
    wanted = [
        ("ceiling: weight bytes per token / copy bandwidth", "ceiling"),
        ("batch-1 decode via ai.run (stream)", "ai.run, batch 1"),
        ("batch-1 decode via bare model.generate()", "generate(), batch 1"),
    ]
    for row in data["rows"]:
        if row["measure"].endswith("concurrent requests, total") and row["value"]:
            key = (row["measure"], f"{row['measure'].split()[0]} concurrent, total")
            if key not in wanted:
                wanted.append(key)
    models = list(dict.fromkeys(r["model"] for r in data["rows"] if r["unit"] == "tok/s"))
    fig, ax = plt.subplots(figsize=(2 + 2.2 * len(models), 4.5))
    width = 0.8 / len(wanted)
    for i, (measure, name) in enumerate(wanted):
        values = [next((r["value"] or 0 for r in data["rows"] if r["model"] == m and r["measure"] == measure), 0) for m in models]
        ax.bar([j + i * width for j in range(len(models))], values, width, label=name)
    ax.set_xticks([j + width * (len(wanted) - 1) / 2 for j in range(len(models))], [m.replace(" [", "\n[") for m in models], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"Local decode against the bandwidth ceiling ({data['meta'].get('device_name')})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gpu-results.png", dpi=120)
    return f"plot written: {out / 'gpu-results.png'}"


# --- main ----------------------------------------------------------------------------------


def parse_ai_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--ai-option takes KEY=VALUE (VALUE as JSON, else a string), got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write gpu-results.json/.md (as measured) and .png here")
    parser.add_argument("--deadline", type=float, default=None, help="seconds from start; later rows are skipped and named (default 420 for --size full)")
    parser.add_argument("--checkpoints", type=Path, default=None, help="where full-size checkpoints are built and kept")
    parser.add_argument("--models", default="internvl,qwen", help="comma-separated: internvl, qwen")
    parser.add_argument("--qwen", choices=["auto", "awq", "bf16"], default="auto", help="Qwen2.5-VL as AWQ (needs gptqmodel) or its unquantized twin; auto: AWQ where gptqmodel imports")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="words in the text prompt (about one token each)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded in the batch-1 rows")
    parser.add_argument("--concurrent-new-tokens", type=int, default=64, help="tokens per request in the concurrent rows")
    parser.add_argument("--concurrency", default="8,32", help="comma-separated numbers of concurrent requests (1 is always measured)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", choices=["transformers", "vllm", "both"], default="transformers")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="AI(compile=True/False); unset: the engine's default")
    parser.add_argument("--max-batch-size", type=int, default=None, help="AI(max_batch_size=...); unset: the engine's default")
    parser.add_argument("--ai-option", type=parse_ai_option, action="append", default=[], metavar="KEY=VALUE", help="any other AI(...) option, VALUE as JSON")
    parser.add_argument("--awq-kernel", default=None, help="comma-separated gptqmodel AWQ kernels: Qwen's rows once per kernel")
    parser.add_argument("--static-cache", action="store_true", help="AI(static_cache=True), where the engine has it")
    parser.add_argument("--no-fast-decode", action="store_true", help="AI(fast_decode=False), where the engine has it")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU, few tokens")
    parser.add_argument("--plot-from", type=Path, default=None, help="only draw gpu-results.png from a results directory")
    args = parser.parse_args(argv)
    if args.plot_from:
        print(plot(args.plot_from))
        return 0
    if args.smoke:
        args.size, args.device, args.prompt_tokens, args.new_tokens, args.concurrent_new_tokens, args.concurrency, args.rounds = "tiny", "cpu", 16, 8, 4, "2", 1
    if args.engine == "both":
        return both(argv if argv is not None else sys.argv[1:])
    if args.deadline is None and args.size == "full":
        args.deadline = 420.0
    args.concurrency = tuple(int(c) for c in str(args.concurrency).split(",") if c.strip() and int(c) != 1)

    import torch
    import transformers

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    meta = {
        "device_name": device_name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": "python3 " + " ".join(shlex.quote(a) for a in [str(Path(__file__).relative_to(ROOT)) if Path(__file__).is_relative_to(ROOT) else __file__, *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    res = Results(args.out, meta)
    budget = Budget(args.deadline)

    options: dict[str, Any] = {}
    if args.engine == "vllm":
        options = {"engine": "vllm", "engine_options": {"max_num_seqs": max((1, *args.concurrency))}}
    else:
        if args.compile is not None:
            options["compile"] = args.compile
        if args.max_batch_size is not None:
            options["max_batch_size"] = args.max_batch_size
        if args.static_cache:
            options["static_cache"] = True
        if args.no_fast_decode:
            options["fast_decode"] = False
        options.update(dict(args.ai_option))

    qwen = args.qwen
    if qwen == "auto":
        qwen = "awq" if gptqmodel_imports() or args.engine == "vllm" else "bf16"
    started = time.perf_counter()
    if args.size == "tiny":
        dirs = tiny_checkpoints(args.engine)
        if qwen == "bf16":
            dirs[QWEN] = dirs[QWEN] / "reference"
    else:
        root = args.checkpoints or Path(os.environ.get("AZION_AI_CACHE") or Path.home() / ".cache") / "azion_ai" / "bench-full"
        dirs = full_checkpoints(root, args.device if args.device.startswith("cuda") else "cpu", qwen)
    res.add("all", "checkpoints ready (built or found)", time.perf_counter() - started, "s", f"{args.size} shapes; Qwen2.5-VL {'AWQ' if qwen == 'awq' else 'unquantized twin'}")

    bandwidth = copy_bandwidth(args.device)
    res.add("all", f"copy bandwidth on {device_name}", bandwidth / 1e9, "GB/s", "device-to-device copy, (read + write) / time")

    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    order = [mid for key, mid in (("internvl", INTERNVL), ("qwen", QWEN)) if key in wanted]
    kernels = [k for k in (args.awq_kernel or "").split(",") if k] if args.engine == "transformers" and qwen == "awq" else []
    runs = [(mid, None) for mid in order] + [(QWEN, k) for k in kernels[1:] if QWEN in order]
    if kernels and QWEN in order:
        runs = [(mid, kernels[0] if mid == QWEN else None) for mid in order] + runs[len(order):]
    for i, (model_id, kernel) in enumerate(runs):
        ai_options = {**options, "awq_kernel": kernel} if kernel else options
        flavour = args.engine + (", AWQ" if model_id == QWEN and qwen == "awq" else ", unquantized twin" if model_id == QWEN else "") + (f", awq_kernel={kernel}" if kernel else "")
        label = f"{model_id} [{flavour}]"
        share = Budget(budget.left() / (len(runs) - i) if budget.end is not None else None)
        if budget.end is not None and share.left() < 20:
            res.add(label, "all rows", None, "", describe(ai_options), f"skipped: {budget.left():.0f} s left of --deadline {args.deadline:.0f}")
            continue
        try:
            bench_model(res, model_id, label, dirs[model_id], args.device, ai_options, args, share, bandwidth)
        except TypeError as exc:
            if "unexpected keyword" in str(exc):
                print(f"gpu.py: this engine does not take an option given: {exc}; drop it", file=sys.stderr)
                return 2
            raise
    res.complete = True
    res.write()
    print(f"| model | measure ({args.size} shapes, {args.device}) | value | options |\n| --- | --- | --- | --- |")
    print("\n".join(res.table().splitlines()[2:]))
    if args.out is not None:
        print(plot(args.out), file=sys.stderr)
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
        cells = [[c.strip() for c in row.strip("| ").split(" | ")] for row in table[2:]]
        tables[engine] = {(c[0].split(" [")[0], c[1]): c[2].split()[:2] for c in cells}
    print("| model | measure | vLLM / transformers |\n| --- | --- | --- |")
    for (model, measure), value in tables["vllm"].items():
        other = tables["transformers"].get((model, measure))
        if other is None or len(value) < 2 or value[1] not in ("tok/s", "ms") or other[1] != value[1] or "ceiling" in measure:
            continue
        a, b = float(value[0].replace(",", "")), float(other[0].replace(",", ""))
        ratio = a / b if value[1] == "tok/s" else b / a  # > 1: vLLM is better (faster, or sooner)
        print(f"| {model} | {measure} | {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
