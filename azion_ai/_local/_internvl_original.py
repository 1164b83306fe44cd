"""InternVL3 in its original layout (``internvl_chat``), loaded with no remote code.

Azion serves ``opengvlab-internvl3-1b-instruct`` from ``OpenGVLab/InternVL3-1B-Instruct``, which
is published only in InternVL's own layout: ``InternVLChatModel`` with its modelling code in the
repository, meant for ``trust_remote_code``. Nothing from the model directory is executed here.
Its config is mapped to transformers' native ``InternVLConfig``, its weights renamed (the fused
vision ``qkv`` split into q/k/v), its tokenizer files copied and an image processor written from
its config, into a cache directory keyed by the source files (the user's directory is only read).
The first load converts (a few seconds for 1B: one pass over the weights); later loads reuse it.

The prompt stays what vLLM renders for these files: the tokenizer's own chat template (Qwen2.5's,
with its default system line) and images in front of the text, because the layout ships no
processor template. ``chat_template="internvl2_5"`` or ``"internvl-hf"`` picks another.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .._exceptions import ModelLoadError

CONVERTER_VERSION = "1"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")
_IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# One table, read both ways: original name <-> native name. {n} a layer number, {w} weight/bias,
# {qk} q_norm/k_norm, {fc} fc1/fc2, {rest} the language model's own names (unchanged). The fused
# vision qkv is the one entry that is not one-to-one (split in three / joined from q, k, v).
_NAMES = [
    ("vision_model.embeddings.class_embedding", "vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.patch_embedding.{w}", "vision_tower.embeddings.patch_embeddings.projection.{w}"),
    ("vision_model.embeddings.position_embedding", "vision_tower.embeddings.position_embeddings"),
    ("vision_model.encoder.layers.{n}.attn.proj.{w}", "vision_tower.encoder.layer.{n}.attention.projection_layer.{w}"),
    ("vision_model.encoder.layers.{n}.attn.{qk}.{w}", "vision_tower.encoder.layer.{n}.attention.{qk}.{w}"),
    ("vision_model.encoder.layers.{n}.ls1", "vision_tower.encoder.layer.{n}.lambda_1"),
    ("vision_model.encoder.layers.{n}.ls2", "vision_tower.encoder.layer.{n}.lambda_2"),
    ("vision_model.encoder.layers.{n}.mlp.{fc}.{w}", "vision_tower.encoder.layer.{n}.mlp.{fc}.{w}"),
    ("vision_model.encoder.layers.{n}.norm1.{w}", "vision_tower.encoder.layer.{n}.layernorm_before.{w}"),
    ("vision_model.encoder.layers.{n}.norm2.{w}", "vision_tower.encoder.layer.{n}.layernorm_after.{w}"),
    ("mlp1.0.{w}", "multi_modal_projector.layer_norm.{w}"),
    ("mlp1.1.{w}", "multi_modal_projector.linear_1.{w}"),
    ("mlp1.3.{w}", "multi_modal_projector.linear_2.{w}"),
    ("language_model.{rest}", "language_model.{rest}"),
]
_SLOTS = {"n": r"\d+", "w": "weight|bias", "qk": "q_norm|k_norm", "fc": "fc1|fc2", "rest": r"(?:model\.|lm_head\.).+"}
_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_SPLIT = re.compile(r"^vision_tower\.encoder\.layer\.(\d+)\.attention\.[qkv]_proj\.(weight|bias)$")


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("^" + "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for i, p in enumerate(parts)) + "$")


@functools.cache
def _tables() -> tuple[list[tuple[re.Pattern[str], str]], list[tuple[re.Pattern[str], str]]]:
    """(forward, backward): compiled on first use, not at import (mutation testing reaches it)."""
    forward = [(_pattern(original), native) for original, native in _NAMES]
    backward = [(_pattern(native), original) for original, native in _NAMES]
    return forward, backward


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        match = pattern.match(name)
        if match:
            return target.format(**match.groupdict())
    return None


def native_names(name: str) -> list[str]:
    """The native tensor name(s) for an original one (three for a fused qkv); [] if unknown."""
    match = _QKV.match(name)
    if match:
        layer, leaf = match.groups()
        return [f"vision_tower.encoder.layer.{layer}.attention.{p}_proj.{leaf}" for p in "qkv"]
    renamed = _rename(name, _tables()[0])
    return [renamed] if renamed else []


def original_name(native: str) -> str:
    """The inverse of :func:`native_names` for one tensor (q/k/v name the fused qkv)."""
    match = _SPLIT.match(native)
    if match:
        return f"vision_model.encoder.layers.{match.group(1)}.attn.qkv.{match.group(2)}"
    renamed = _rename(native, _tables()[1])
    if renamed is None:
        raise KeyError(native)
    return renamed


# -- config ---------------------------------------------------------------------------------------


def _required(config: Mapping[str, Any], key: str, where: Path, section: str = "") -> Any:
    if key not in config:
        raise ModelLoadError(f"{where}: {section + '.' if section else ''}{key} is missing; cannot map this InternVL config")
    return config[key]


def native_config(original: Mapping[str, Any], where: Path, image_token_id: int, eos_token_id: int) -> dict[str, Any]:
    """``InternVLConfig`` fields for an ``internvl_chat`` config.json; a field we cannot map is a
    ModelLoadError naming it."""
    llm = dict(_required(original, "llm_config", where))
    vision = dict(_required(original, "vision_config", where))
    arch = (llm.get("architectures") or ["Qwen2ForCausalLM"])[0]
    if arch != "Qwen2ForCausalLM" or llm.get("model_type", "qwen2") != "qwen2":
        raise ModelLoadError(f"{where}: llm_config is {arch} ({llm.get('model_type')}); only InternVL3's Qwen2 language model is supported")
    checks = {
        "ps_version": ("v2", original.get("ps_version", "v2")),
        "use_backbone_lora": (0, original.get("use_backbone_lora", 0)),
        "use_llm_lora": (0, original.get("use_llm_lora", 0)),
        "use_thumbnail": (True, original.get("use_thumbnail", True)),
    }
    for key, (wanted, got) in checks.items():
        if got != wanted:
            raise ModelLoadError(f"{where}: {key} is {got!r}; only {wanted!r} can be mapped to transformers' InternVL")
    image_size = int(original.get("force_image_size") or vision.get("image_size") or 448)
    patch = int(_required(vision, "patch_size", where, "vision_config"))
    downsample = float(original.get("downsample_ratio", 0.5))
    text = {k: v for k, v in llm.items() if k not in ("architectures", "auto_map", "_name_or_path", "transformers_version")}
    text.update(model_type="qwen2", eos_token_id=eos_token_id)
    if "rope_scaling" in text and "rope_parameters" not in text:
        scaling = dict(text.pop("rope_scaling") or {})
        if scaling:
            scaling.setdefault("rope_type", scaling.pop("type", "default"))
            scaling["rope_theta"] = text.get("rope_theta", 1000000.0)
            text["rope_parameters"] = scaling
    native_vision = {
        "model_type": "internvl_vision",
        "hidden_size": _required(vision, "hidden_size", where, "vision_config"),
        "intermediate_size": _required(vision, "intermediate_size", where, "vision_config"),
        "num_attention_heads": _required(vision, "num_attention_heads", where, "vision_config"),
        "num_hidden_layers": _required(vision, "num_hidden_layers", where, "vision_config"),
        "image_size": [image_size, image_size],
        "patch_size": [patch, patch],
        "attention_bias": bool(vision.get("qkv_bias", True)),
        "use_qk_norm": bool(vision.get("qk_normalization", False)),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "hidden_act": vision.get("hidden_act", "gelu"),
        "norm_type": vision.get("norm_type", "layer_norm"),
        "use_mean_pooling": True,
    }
    return {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "text_config": text,
        "vision_config": native_vision,
        "downsample_ratio": downsample,
        "vision_feature_layer": int(original.get("select_layer", -1)),
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "image_token_id": image_token_id,
        "image_seq_length": int((image_size // patch) ** 2 * downsample**2),
        "tie_word_embeddings": bool(original.get("tie_word_embeddings", False)),
        "torch_dtype": original.get("torch_dtype", llm.get("torch_dtype", "bfloat16")),
    }


def _expected_tensors(config: Mapping[str, Any]) -> list[str]:
    """The original tensors a checkpoint of this config must hold."""
    vision = config["vision_config"]
    names = ["vision_model.embeddings.class_embedding", "vision_model.embeddings.position_embedding", "vision_model.embeddings.patch_embedding.weight"]
    for i in range(int(vision["num_hidden_layers"])):
        prefix = f"vision_model.encoder.layers.{i}."
        names += [prefix + n for n in ("attn.qkv.weight", "attn.proj.weight", "ls1", "ls2", "mlp.fc1.weight", "mlp.fc2.weight", "norm1.weight", "norm2.weight")]
    names += ["mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight", "language_model.model.embed_tokens.weight", "language_model.model.norm.weight"]
    for i in range(int(config["llm_config"]["num_hidden_layers"])):
        prefix = f"language_model.model.layers.{i}."
        names += [prefix + n for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")]
    if not config.get("tie_word_embeddings", False):
        names.append("language_model.lm_head.weight")
    return names


# -- files ----------------------------------------------------------------------------------------


def _weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (src / s).is_file()]
        if missing:
            raise ModelLoadError(f"{str(src)!r} is incomplete: missing weight shard(s) {', '.join(missing)}")
        return [src / s for s in shards]
    single = src / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelLoadError(f"{str(src)!r} has no safetensors weights (model.safetensors or its index)")


def cache_key(src: Path) -> str:
    """Keyed by the source files: names, sizes and modification times of all, and the content of
    the small ones (configs, tokenizer), plus the converter's version."""
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if stat.st_size < 8 * 1024 * 1024:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def default_cache_root() -> Path:
    root = os.environ.get("AZION_AI_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "azion_ai" / "converted"


def _tensors(files: list[Path]) -> Iterator[tuple[str, Any, Path]]:
    """Every tensor of the checkpoint, one at a time (name, tensor, file)."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, handle.get_tensor(name), file


def convert(src: Path, cache_root: Path | None = None) -> Path:
    """The native (``-hf``) layout of an original-layout directory, converted once into the cache."""
    from safetensors.torch import save_file

    config_file = src / "config.json"
    original = json.loads(config_file.read_text(encoding="utf-8"))
    out = (cache_root or default_cache_root()) / f"internvl-{cache_key(src)}"
    if (out / ".complete").is_file():
        return out
    tokenizer_config_file = src / "tokenizer_config.json"
    if not tokenizer_config_file.is_file() or not ((src / "tokenizer.json").is_file() or (src / "vocab.json").is_file()):
        raise ModelLoadError(f"{str(src)!r} has no tokenizer (tokenizer_config.json with tokenizer.json or vocab.json + merges.txt)")
    files = _weight_files(src)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in _TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        tokenizer_config = json.loads(tokenizer_config_file.read_text(encoding="utf-8"))
        tokenizer_config.pop("auto_map", None)
        tokenizer_config.update(_IMAGE_TOKENS)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tmp))
        ids: dict[str, int] = {}
        for token in ("<IMG_CONTEXT>", "<img>", "</img>", "<|im_end|>"):
            found = tokenizer.convert_tokens_to_ids(token)
            if isinstance(found, int) and found != tokenizer.unk_token_id:
                ids[token] = found
        unknown = [t for t in ("<IMG_CONTEXT>", "<img>", "</img>", "<|im_end|>") if t not in ids]
        if unknown:
            raise ModelLoadError(f"{tokenizer_config_file}: the tokenizer lacks {', '.join(unknown)}")
        config = native_config(original, config_file, ids["<IMG_CONTEXT>"], ids["<|im_end|>"])

        tensors: dict[str, Any] = {}
        seen: dict[str, Path] = {}
        hidden = int(original["vision_config"]["hidden_size"])
        for name, tensor, file in _tensors(files):
            targets = native_names(name)
            if not targets:
                raise ModelLoadError(f"{file}: tensor {name!r} has no place in InternVL3 (an InternVL variant this loader does not know?)")
            seen[name] = file
            if len(targets) == 3:
                if tensor.shape[0] != 3 * hidden:
                    raise ModelLoadError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}; a fused qkv needs {3 * hidden} rows")
                for target, part in zip(targets, tensor.chunk(3, dim=0), strict=True):
                    tensors[target] = part.contiguous()
            else:
                tensors[targets[0]] = tensor.contiguous()
        missing = [n for n in _expected_tensors(original) if n not in seen]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(f"{str(src)!r}: the weights lack {shown}")
        embed = tensors["language_model.model.embed_tokens.weight"]
        vocab = int(original["llm_config"]["vocab_size"])
        if tuple(embed.shape) != (vocab, int(original["llm_config"]["hidden_size"])):
            raise ModelLoadError(f"{seen['language_model.model.embed_tokens.weight']}: embed_tokens has shape {tuple(embed.shape)}, config.json says {(vocab, original['llm_config']['hidden_size'])}")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        generation = src / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, tmp / "generation_config.json")
        size = config["vision_config"]["image_size"][0]
        (tmp / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "GotOcr2ImageProcessorFast",
            "processor_class": "InternVLProcessor",
            "crop_to_patches": bool(original.get("dynamic_image_size", True)),
            "min_patches": int(original.get("min_dynamic_patch", 1)),
            "max_patches": int(original.get("max_dynamic_patch", 12)),
            "size": {"height": size, "width": size},
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
            "rescale_factor": 1 / 255, "resample": 3,
            "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
        }, indent=2), encoding="utf-8")
        (tmp / "processor_config.json").write_text(json.dumps({"image_seq_length": config["image_seq_length"], "processor_class": "InternVLProcessor"}), encoding="utf-8")
        (tmp / "SOURCE").write_text(f"converted by azion_ai from {src}\n", encoding="utf-8")
        (tmp / ".complete").write_text(CONVERTER_VERSION)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
