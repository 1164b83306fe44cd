"""The ``azion-ai`` command: run, models, validate, serve, demo.

Errors print one clear line (exit status 1) unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._exceptions import AzionAIError, ValidationError
from ._local._loading import AWQ_KERNELS
from ._models import get_model, list_models

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _image_url(ref: str) -> str:
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    path = Path(ref).expanduser()
    if not path.is_file():
        raise AzionAIError(f"--image {ref!r}: no such file (give a path, an http(s) URL or a data: URI)")
    media = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{media};base64," + base64.b64encode(path.read_bytes()).decode()


def _read_json(ref: str) -> Any:
    try:
        text = sys.stdin.read() if ref == "-" else Path(ref).read_text(encoding="utf-8")
    except OSError as exc:
        raise AzionAIError(f"cannot read {ref!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise AzionAIError(f"{ref!r} is not valid JSON: {exc}") from None


def _payload(args: argparse.Namespace, kind: str = "chat") -> dict[str, Any]:
    if args.json:
        payload = _read_json(args.json)
        if not isinstance(payload, dict):
            raise AzionAIError(f"{args.json!r} must hold a JSON object")
        if kind != "chat":
            return payload
    elif kind == "embeddings":
        if args.prompt is None:
            raise AzionAIError("give the text to embed, or a payload with --json FILE")
        return {"input": args.prompt, "encoding_format": "float"}
    elif kind == "rerank":
        if args.prompt is None or not args.document:
            raise AzionAIError("give a query and at least one --document TEXT (or a payload with --json FILE)")
        return {"query": args.prompt, "documents": list(args.document)}
    else:
        if args.prompt is None:
            raise AzionAIError("give a prompt, or a payload with --json FILE")
        messages: list[dict[str, Any]] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        if args.image:
            content: Any = [{"type": "text", "text": args.prompt}] + [
                {"type": "image_url", "image_url": {"url": _image_url(ref)}} for ref in args.image
            ]
        else:
            content = args.prompt
        messages.append({"role": "user", "content": content})
        payload = {"messages": messages}
    if args.max_tokens is not None:
        payload["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        payload["temperature"] = args.temperature
    if args.stream is not None:
        payload["stream"] = args.stream
    elif "stream" not in payload:
        payload["stream"] = True
    return payload


def _client(args: argparse.Namespace) -> Any:
    from ._client import AI

    if args.backend == "local" or args.model_path:
        models = {args.model: args.model_path} if args.model_path else None
        return AI(backend="local", models=models, device=args.device)
    return AI(base_url=args.base_url)


def cmd_run(args: argparse.Namespace) -> int:
    model = get_model(args.model)
    payload = _payload(args, model.kind)
    raw = bool(args.json) or args.jsonl
    with _client(args) as ai:
        result = ai.run(args.model, payload)
        if model.kind != "chat":
            print(result.model_dump_json() if raw else _summary(result))
        elif payload.get("stream"):
            with result as stream:
                for chunk in stream:
                    if raw:
                        print(chunk.model_dump_json(), flush=True)
                    else:
                        for choice in chunk.choices:
                            if choice.index == 0 and choice.delta.content:
                                print(choice.delta.content, end="", flush=True)
                            for call in choice.delta.tool_calls or ():
                                fn = call.function
                                print(f"\n[tool call] {fn.name if fn else ''}({fn.arguments if fn else ''})", flush=True)
            if not raw:
                print()
        elif raw:
            print(result.model_dump_json())
        else:
            message = result.choices[0].message
            print(message.content or "")
            for call in message.tool_calls:
                print(f"[tool call] {call.function.name}({call.function.arguments})")
    return EXIT_OK


def _summary(result: Any) -> str:
    """Embeddings, rerank and score results as short text (--jsonl prints them whole)."""
    if hasattr(result, "results"):  # rerank
        return "\n".join(f"{r.relevance_score:.4f}  [{r.index}] {r.document.text if r.document else ''}" for r in result.results)
    if hasattr(result, "data") and result.data and hasattr(result.data[0], "score"):
        return "\n".join(f"{s.score:.4f}  [{s.index}]" for s in result.data)
    lines = []
    for item in result.data:
        vector = item.embedding
        shown = ", ".join(f"{v:.4f}" for v in vector[:4]) if isinstance(vector, list) else vector[:24]
        lines.append(f"[{item.index}] {len(vector)} dimensions: [{shown}, ...]")
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    rows = [("MODEL", "KIND", "CONTEXT", "TOOLS", "LORA", "INPUTS", "LOCAL", "HUGGING FACE")]
    for m in list_models():
        local = "yes" if (m.family and m.kind == "chat") or m.kind in ("embeddings", "rerank") else "no"
        name = m.id + (f" (also {', '.join(m.aliases)})" if m.aliases else "")
        rows.append((name, m.kind, f"{m.context_length:,}", "yes" if m.tool_calling else "no", "yes" if m.lora else "no", "+".join(m.input_modalities), local, m.hf_repo))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from ._validation import validate_payload

    payload = _read_json(args.payload)
    model = get_model(args.model)
    try:
        validate_payload(model, payload)
    except ValidationError as exc:
        for issue in exc.issues:
            print(f"{args.payload}: {issue}")
        print(f"{len(exc.issues)} problem(s) for {model.id}", file=sys.stderr)
        return EXIT_FAIL
    print(f"{args.payload}: valid for {model.id}")
    return EXIT_OK


def _parse_models(specs: Sequence[str]) -> dict[str, str]:
    models = {}
    for spec in specs:
        model_id, sep, directory = spec.partition("=")
        if not sep or not directory:
            raise AzionAIError(f"--model {spec!r}: expected ID=DIR")
        get_model(model_id)
        models[model_id] = directory
    return models


def cmd_serve(args: argparse.Namespace) -> int:
    from ._server import serve

    models = _parse_models(args.model)
    if not models:
        raise AzionAIError("give at least one --model ID=DIR")
    api_key = args.api_key or os.environ.get("AZION_AI_SERVER_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it", file=sys.stderr)
    speed = {"static_cache": args.static_cache, "compile": args.compile, "max_batch_size": args.max_batch_size}
    if args.awq_kernel:
        speed["awq_kernel"] = args.awq_kernel
    if args.chat_template:
        speed["chat_template"] = args.chat_template
    if args.max_model_len:
        speed["max_model_len"] = args.max_model_len
    if args.disable_any_whitespace:
        speed["any_whitespace"] = False
    if args.tool_strict_level:
        speed["tool_strict_level"] = args.tool_strict_level
    speed.update(_engine_choice(args))
    _show_progress()
    serve(models, host=args.host, port=args.port, device=args.device, api_key=api_key, **speed)
    return EXIT_OK


def _show_progress() -> None:
    """What the server is doing while it loads (weights, compiling, warming up) on stderr, one
    line each, even when other logging is quieted."""
    import logging

    progress = logging.getLogger("azion_ai.progress")
    progress.setLevel(logging.INFO)
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("azion-ai: %(message)s"))
        progress.addHandler(handler)
        progress.propagate = False


def _engine_choice(args: argparse.Namespace) -> dict[str, Any]:
    """``engine`` and ``engine_options`` from --engine, vLLM's own flags and --engine-option."""
    options: dict[str, Any] = {}
    for flag in ("tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization", "max_num_seqs", "dtype", "quantization"):
        value = getattr(args, flag, None)
        if value is not None:
            options[flag] = value
    if getattr(args, "enforce_eager", False):
        options["enforce_eager"] = True
    for item in getattr(args, "engine_option", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--engine-option {item!r}: write KEY=VALUE (VALUE as JSON, or a plain string)")
        try:
            options[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            options[key.replace("-", "_")] = raw
    engine = getattr(args, "engine", "transformers")
    if options and engine != "vllm":
        raise ValueError("vLLM's engine options (--tensor-parallel-size, --engine-option, ...) need --engine vllm")
    return {"engine": engine, "engine_options": options} if engine == "vllm" else {}


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import main as demo_main

    return demo_main(cache_dir=args.cache_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="azion-ai", description="Azion's edge AI models from Python: run, validate, serve.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (and third-party logs)")
    parser.add_argument("--verbose", action="store_true", help="show third-party logs, warnings and progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a model on a prompt (streams the answer)")
    run.add_argument("model")
    run.add_argument("prompt", nargs="?")
    run.add_argument("--image", action="append", metavar="PATH_OR_URL", help="add an image (repeatable)")
    run.add_argument("--system", metavar="TEXT")
    run.add_argument("--document", action="append", metavar="TEXT", help="a document to rank (rerank models; repeatable)")
    run.add_argument("--json", metavar="FILE", help="the whole payload as JSON ('-' for stdin); prints raw JSON lines")
    run.add_argument("--jsonl", action="store_true", help="print the raw response / chunks as JSON lines")
    run.add_argument("--stream", dest="stream", action="store_true", default=None)
    run.add_argument("--no-stream", dest="stream", action="store_false")
    run.add_argument("--backend", choices=["remote", "local"], default=None)
    run.add_argument("--base-url", help="OpenAI-compatible endpoint (default: $AZION_AI_BASE_URL)")
    run.add_argument("--model-path", metavar="DIR", help="weights directory (implies --backend local)")
    run.add_argument("--device", default="auto", help="cuda, cpu or auto (local backend)")
    run.add_argument("--max-tokens", type=int)
    run.add_argument("--temperature", type=float)
    run.set_defaults(func=cmd_run)

    models = sub.add_parser("models", help="list the models and their capabilities")
    models.set_defaults(func=cmd_models)

    validate = sub.add_parser("validate", help="check a payload file against a model's schema (exit 0/1)")
    validate.add_argument("payload", help="JSON file ('-' for stdin)")
    validate.add_argument("--model", required=True)
    validate.set_defaults(func=cmd_validate)

    serve = sub.add_parser("serve", help="an OpenAI-compatible server for local weights")
    serve.add_argument("--model", action="append", default=[], metavar="ID=DIR", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require this bearer key (default: $AZION_AI_SERVER_KEY)")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--static-cache", action="store_true", help="static KV cache")
    serve.add_argument("--compile", action="store_true", help="static cache + torch.compile (CUDA graphs on GPU)")
    serve.add_argument("--max-batch-size", type=int, default=None, metavar="N", help="decode up to N rows together (default 8)")
    serve.add_argument("--awq-kernel", choices=AWQ_KERNELS, help="gptqmodel kernel for AWQ layers")
    serve.add_argument("--chat-template", metavar="FILE", help="chat template for every request (as vLLM's --chat-template)")
    serve.add_argument("--max-model-len", type=int, metavar="N", help="context length, prompt + output (as vLLM's)")
    serve.add_argument("--disable-any-whitespace", action="store_true", help="structured output (JSON) without free whitespace")
    serve.add_argument("--tool-strict-level", choices=["auto", "function", "parameter"], help="how far tool calls are constrained (as vLLM's)")
    serve.add_argument("--engine", choices=["transformers", "vllm"], default="transformers", help="what runs the weights (vllm: vLLM's engine in-process)")
    vllm = serve.add_argument_group("vLLM engine (--engine vllm)", "vLLM's own engine arguments, passed through")
    vllm.add_argument("--tensor-parallel-size", type=int, metavar="N", help="shard each model over N GPUs")
    vllm.add_argument("--pipeline-parallel-size", type=int, metavar="N")
    vllm.add_argument("--gpu-memory-utilization", type=float, metavar="F", help="share of GPU memory vLLM may take (0-1)")
    vllm.add_argument("--max-num-seqs", type=int, metavar="N", help="requests batched together at most")
    vllm.add_argument("--dtype", help="auto, float16, bfloat16, float32")
    vllm.add_argument("--quantization", help="override the checkpoint's own quantization method")
    vllm.add_argument("--enforce-eager", action="store_true", default=False, help="no CUDA graphs")
    vllm.add_argument("--engine-option", action="append", metavar="KEY=VALUE", help="any other vLLM engine argument (VALUE as JSON); repeatable")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the end-to-end tour: local backend, server and remote transport")
    demo.add_argument("--cache-dir", default=None, help="where the tiny demo checkpoints are built")
    demo.set_defaults(func=cmd_demo)
    return parser


QUIET_ENV = "AZION_AI_QUIET"
_NOISY = ("torch", "transformers", "gptqmodel", "logbar", "accelerate", "peft", "httpx", "azion_ai")


def quiet_third_parties() -> None:
    """Our output only: torch, transformers, gptqmodel (its banner too) and httpx logging,
    warnings and progress bars are silenced for the command line and the demo; ``--verbose`` or
    ``--debug`` keeps them. The local backend reads AZION_AI_QUIET when it loads a model."""
    import logging
    import warnings

    os.environ[QUIET_ENV] = "1"
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("TORCH_CPP_LOG_LEVEL", "ERROR"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and not (args.verbose or args.debug):  # the real command line, not a caller's main([...])
        quiet_third_parties()
    if getattr(args, "backend", None) == "local" and args.model_path is None and not os.environ.get("AZION_AI_MODELS_DIR"):
        parser.error("--backend local needs --model-path DIR or AZION_AI_MODELS_DIR")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (AzionAIError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"azion-ai: error: {str(exc).strip()}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
