"""Loading a model directory: checks that name the missing file or wrong field, then transformers.

Qwen2.5-VL-AWQ loads its 4-bit layers through gptqmodel (the only AWQ path in transformers 5).
The published checkpoint says ``modules_to_not_convert: ["visual"]``, but transformers 5 keeps
the vision tower at ``model.visual``: left as it is, the vision layers are swapped for AWQ layers
with no weights and image logits come out NaN. The config is corrected here before loading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import MissingDependencyError, ModelLoadError
from ._chat import ChatTemplates
from ._families import FAMILIES, Family

log = logging.getLogger("azion_ai")

# gptqmodel's kernels for GEMM-packed AWQ checkpoints that transformers lets a config choose.
# None picks per device: the exact pure-torch kernel on CPU, gptqmodel's own choice on CUDA.
AWQ_KERNELS = ("auto", "marlin", "machete", "exllama_v2", "gemm", "gemm_triton", "torch_awq", "torch_fused_awq")

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _quiet() -> bool:
    return os.environ.get("AZION_AI_QUIET") == "1"


def _quiet_stdout() -> Any:
    """With AZION_AI_QUIET=1 (the command line, the demo): what third parties print while they
    load goes nowhere; otherwise nothing changes."""
    import contextlib
    import io

    if not _quiet():
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(io.StringIO())


def import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "the local backend needs the 'local' extra: pip install 'azion-ai[local]' "
            f"(missing: {exc.name})"
        ) from None
    if _quiet():  # torch sets its loggers' levels when imported: quiet them after that
        logging.getLogger("torch").setLevel(logging.ERROR)
    return torch


@dataclass(kw_only=True)
class Checkpoint:
    """A model directory's prompt side: its processor (tokenizer, image processor) and the facts
    every engine needs to render prompts and shape answers. No weights are loaded for it."""

    model_id: str
    family: str
    path: Path
    """The directory engines load (for InternVL's original layout: the converted copy)."""
    config: dict[str, Any]
    processor: Any
    eos_token_ids: list[int]
    pad_token_id: int
    vocab_size: int
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    """The checkpoint's non-default generation_config.json values (vLLM's "auto" defaults)."""
    templates: ChatTemplates = field(default_factory=lambda: ChatTemplates(None, None))
    image_placeholder: str = ""
    """What stands for one image in a prompt rendered from a template that does not place images."""

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def adapter(self) -> Family:
        """The family's adapter: what differs between Qwen2.5-VL and InternVL."""
        return FAMILIES[self.family]

    @property
    def quantization(self) -> str | None:
        """The checkpoint's own quantization method ("awq"), None when it is full precision."""
        quant = self.config.get("quantization_config") or {}
        return str(quant["quant_method"]) if quant.get("quant_method") else None

    @property
    def max_position_embeddings(self) -> int | None:
        text = self.config.get("text_config") or self.config.get("llm_config") or self.config
        value = text.get("max_position_embeddings") or self.config.get("max_position_embeddings")
        return int(value) if value else None


@dataclass(kw_only=True)
class LoadedModel(Checkpoint):
    """A checkpoint with its weights loaded by transformers (the transformers engine)."""

    model: Any
    device: Any
    dtype: Any
    quantized_layer: str | None = None
    """The class of the AWQ layers gptqmodel picked (e.g. "AwqTorchLinear"), for benchmarks and
    logs; the ``awq_kernel`` option is the kernel asked for."""


def pick_device(device: str) -> tuple[Any, Any]:
    """(torch.device, dtype) for "cuda", "cpu" or "auto"."""
    torch = import_torch()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device='cuda' was asked for, but torch sees no CUDA device; use device='cpu' or 'auto'")
    dev = torch.device(device)
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    return dev, dtype


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not path.exists():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is not a directory")
    if not config_file.is_file():
        raise ModelLoadError(f"{str(path)!r} has no config.json: is it a model directory?")
    try:
        config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from None
    return config


def check_directory(path: Path, family: str) -> dict[str, Any]:
    """Fail early, naming the file or field, rather than deep inside transformers."""
    config = _read_config(path)
    model_type = config.get("model_type")
    if model_type not in FAMILIES[family].model_types:
        raise ModelLoadError(
            f"{path / 'config.json'}: model_type is {model_type!r}, but this model needs "
            f"{' or '.join(map(repr, FAMILIES[family].model_types))}"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(f"{str(path)!r} has no weights ({' / '.join(_WEIGHT_FILES[:2])})")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelLoadError(f"{str(path)!r} is incomplete: missing weight shard(s) {', '.join(missing)}")
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        raise ModelLoadError(f"{str(path)!r} has no tokenizer (tokenizer.json)")
    if not any((path / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")):
        raise ModelLoadError(f"{str(path)!r} has no image processor config (preprocessor_config.json)")
    quant = config.get("quantization_config")
    if quant and quant.get("quant_method") not in ("awq", None):
        raise ModelLoadError(
            f"{path / 'config.json'}: quantization_config.quant_method {quant.get('quant_method')!r} is not "
            "supported here (AWQ or unquantized)"
        )
    return config


def load_checkpoint(model_id: str, family: str, path: str | os.PathLike[str]) -> Checkpoint:
    """Check a model directory and read its prompt side (no weights): InternVL's original layout
    is converted first (read only; the result is cached)."""
    import_torch()
    from transformers import AutoConfig, AutoProcessor

    directory = Path(path).expanduser()
    source = directory
    original = FAMILIES[family].original_layout
    if original is not None and _read_config(directory).get("model_type") == original:
        from ._internvl_original import convert

        directory = convert(directory)
        log.info("%s: original InternVL layout converted to %s", source, directory)
    raw = check_directory(directory, family)
    try:
        config = AutoConfig.from_pretrained(str(directory))
        processor = AutoProcessor.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load {model_id!r} from {str(directory)!r}: {exc}") from None
    gen = read_generation_config(directory, config)
    text = config.get_text_config()
    eos = gen.eos_token_id if gen.eos_token_id is not None else text.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end not in eos_ids:
        eos_ids.append(im_end)
    pad = gen.pad_token_id if gen.pad_token_id is not None else processor.tokenizer.pad_token_id
    return Checkpoint(
        model_id=model_id,
        family=family,
        path=directory,
        config=raw,
        processor=processor,
        eos_token_ids=eos_ids,
        pad_token_id=pad if pad is not None else eos_ids[0],
        vocab_size=int(text.vocab_size),
        generation_defaults=_sampling_defaults(gen),
        templates=ChatTemplates(
            processor=getattr(processor, "chat_template", None), tokenizer=getattr(processor.tokenizer, "chat_template", None)
        ),
        image_placeholder=FAMILIES[family].image_placeholder,
    )


def load_model(
    model_id: str, family: str, path: str | os.PathLike[str], device: str, awq_kernel: str | None = None
) -> LoadedModel:
    """The checkpoint and its weights, loaded by transformers on ``device``."""
    checkpoint = load_checkpoint(model_id, family, path)
    torch = import_torch()
    from transformers import AutoConfig

    directory = checkpoint.path
    dev, dtype = pick_device(device)
    config = AutoConfig.from_pretrained(str(directory))
    kwargs: dict[str, Any] = {"config": config}
    if checkpoint.quantization == "awq":
        try:
            with _quiet_stdout():  # gptqmodel prints a banner when imported
                import gptqmodel  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "this checkpoint is AWQ-quantized, which transformers loads only through gptqmodel: "
                "pip install 'azion-ai[local]'"
            ) from None
        qc = config.quantization_config
        qc = qc if isinstance(qc, dict) else qc.to_dict()
        skip = list(qc.get("modules_to_not_convert") or [])
        for name in ("visual", "model.visual", "lm_head"):
            if name not in skip:
                skip.append(name)
        qc["modules_to_not_convert"] = skip
        # On CPU the default is the exact pure-torch kernel (~1e-3 of a dequantized reference);
        # it works on every CPU, where gptqmodel's own choice may need AVX-512.
        qc["backend"] = awq_kernel or ("torch_awq" if dev.type == "cpu" else "auto")
        if dev.type == "cuda":
            dtype = torch.float16  # AWQ CUDA kernels take fp16 activations
        config.quantization_config = qc
    import transformers

    model_cls: Any = getattr(transformers, checkpoint.adapter.model_class)
    if _quiet():
        transformers.utils.logging.disable_progress_bar()
        logging.getLogger("logbar").setLevel(logging.ERROR)
    try:
        # mis-shaped tensors are reported (below, by name) rather than raised from deep inside
        model, info = model_cls.from_pretrained(
            str(directory), dtype=dtype, device_map=str(dev), output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if awq_kernel and checkpoint.quantization == "awq":
            raise ModelLoadError(
                f"could not load {model_id!r} with awq_kernel={awq_kernel!r} on {dev.type}: {exc}. "
                f"On CPU use 'torch_awq' or 'torch_fused_awq'; on CUDA one of {', '.join(AWQ_KERNELS)}"
            ) from None
        raise ModelLoadError(f"could not load {model_id!r} from {str(directory)!r}: {exc}") from None
    # Nothing half-loads: a tensor the model needs and the checkpoint lacks (or has in another
    # shape) would otherwise start from random values.
    missing = [k for k in info.get("missing_keys", ()) if not (k == "lm_head.weight" and config.get_text_config().tie_word_embeddings)]
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())]
    if missing or mismatched:
        problems = [f"missing {', '.join(sorted(missing)[:5])}" if missing else "", f"mis-shaped {', '.join(mismatched[:5])}" if mismatched else ""]
        raise ModelLoadError(f"{str(Path(path).expanduser())!r}: the weights do not fit the model ({'; '.join(p for p in problems if p)})")
    model.eval()
    kernel = next((type(m).__name__ for m in model.modules() if type(m).__module__.startswith("gptqmodel")), None)
    gen = model.generation_config
    # Sampling is resolved per request (payload, then the checkpoint's defaults, as vLLM does);
    # generate() must not fill unset fields from the checkpoint's file behind our back.
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
        setattr(gen, name, None)
    gen.do_sample = False
    log.info(
        "loaded %s from %s on %s (%s%s)", model_id, directory, dev, str(dtype).replace("torch.", ""),
        f", AWQ kernel {kernel}" if kernel else "",
    )
    fields = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(Checkpoint)}
    return LoadedModel(**fields, model=model, device=dev, dtype=dtype, quantized_layer=kernel)


def generation_defaults(directory: Path, config: Any) -> dict[str, Any]:
    """The sampling defaults vLLM takes from a checkpoint (``generation_config="auto"``): each of
    temperature, top_p, top_k, min_p, the penalties and max_new_tokens that generation_config.json
    sets to a non-default value, each on its own (``do_sample`` is ignored)."""
    return _sampling_defaults(read_generation_config(directory, config))


def read_generation_config(directory: Path, config: Any) -> Any:
    """generation_config.json (or, without one, what the model config implies)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(directory))
    except OSError:
        return GenerationConfig.from_model_config(config)
    except ValueError as exc:
        raise ModelLoadError(f"{directory / 'generation_config.json'} is not a valid generation config: {exc}") from None


def _sampling_defaults(gen: Any) -> dict[str, Any]:
    diff = gen.to_diff_dict()
    keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "max_new_tokens")
    return {k: diff[k] for k in keys if diff.get(k) is not None}
