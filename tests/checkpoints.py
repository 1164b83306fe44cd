"""Checkpoints only the tests and benchmarks need, built from the tiny ones (azion_ai._local._tiny,
which the demo uses too): a LoRA adapter in peft's layout, and InternVL3 in its original
(``internvl_chat``) layout with remote-code files that leave a marker if anything runs them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from azion_ai._local._tiny import _write_json, qwen_tokenizer_template


def build_lora_adapter(model_id: str, model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 7, rank: int = 4) -> Path:
    """A random LoRA adapter (PEFT format) on the language model's q/v projections of a checkpoint."""
    import torch
    from peft import LoraConfig, get_peft_model

    from azion_ai._local._loading import load_model
    from azion_ai._models import get_model

    info = get_model(model_id)
    assert info.family is not None
    loaded = load_model(model_id, info.family, model_dir, "cpu")
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
        init_lora_weights=False,  # random A and B: the adapter visibly changes the output
    )
    peft_model = get_peft_model(loaded.model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    path = Path(out)
    peft_model.save_pretrained(str(path))
    return path


QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
REMOTE_CODE_MARKER = "remote-code-ran"


# InternVL3's original tensor names -> transformers' native ones, as transformers' conversion
# script (convert_internvl_weights_to_hf.py) publishes them (../shared/REFERENCE.md, "The real
# checkpoints' files"). Written here as data, independently of azion_ai's own table, so that a
# wrong entry in the loader cannot hide behind a test checkpoint built with the same mistake.
PUBLISHED_PREFIXES = [
    ("vision_model.", "model.vision_tower."),
    ("mlp1.0.", "model.multi_modal_projector.layer_norm."),
    ("mlp1.1.", "model.multi_modal_projector.linear_1."),
    ("mlp1.3.", "model.multi_modal_projector.linear_2."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
]
PUBLISHED_VISION_PARTS = [  # inside the vision tower, whole dotted segments, in this order
    ("layers", "layer"),
    ("class_embedding", "cls_token"),
    ("position_embedding", "position_embeddings"),
    ("patch_embedding", "patch_embeddings.projection"),
    ("ls1", "lambda_1"),
    ("ls2", "lambda_2"),
    ("attn.proj", "attention.projection_layer"),
    ("attn", "attention"),
    ("norm1", "layernorm_before"),
    ("norm2", "layernorm_after"),
]


def _segments(name: str, old: str, new: str) -> str:
    return re.sub(rf"(^|\.){re.escape(old)}(?=\.|$)", lambda m: m.group(1) + new, name)


def published_native_name(original: str) -> str:
    """transformers' native name for an original tensor name (not the fused qkv), by the published rules."""
    for old, new in PUBLISHED_PREFIXES:
        if original.startswith(old):
            rest = original[len(old):]
            if old == "vision_model.":
                for part_old, part_new in PUBLISHED_VISION_PARTS:
                    rest = _segments(rest, part_old, part_new)
            return new + rest
    raise KeyError(original)


def published_original_name(native: str) -> str:
    """The published rules read backwards (longest native segment first), checked by reading them forwards."""
    for old, new in PUBLISHED_PREFIXES:
        if native.startswith(new):
            rest = native[len(new):]
            if old == "vision_model.":
                for part_old, part_new in sorted(PUBLISHED_VISION_PARTS, key=lambda p: -len(p[1])):
                    rest = _segments(rest, part_new, part_old)
            original = old + rest
            assert published_native_name(original) == native, (native, original)
            return original
    raise KeyError(native)


_NATIVE_QKV = re.compile(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)$")


def native_state_dict(hf_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The -hf checkpoint's tensors under transformers' native names, as transformers loads them."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(hf_dir), dtype="auto")
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def build_internvl3_original(hf_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, swap_qk: bool = False) -> Path:
    """The tiny InternVL3 in InternVL's original layout (``internvl_chat``), built from the tiny
    ``-hf`` directory by the published conversion mapping read backwards (not the loader's table): the same weights, fused vision qkv,
    InternVL's config, the tokenizer with Qwen2.5's chat template (as the published
    InternVL3-1B-Instruct ships it), and remote-code files that leave a marker if anything runs
    them. ``swap_qk`` builds a broken twin (q and k swapped in the fused qkv) for the tests."""
    import torch
    from safetensors.torch import save_file

    src, dst = Path(hf_dir), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    hf = json.loads((src / "config.json").read_text())
    text, vision = hf["text_config"], hf["vision_config"]
    tile, patch = vision["image_size"][0], vision["patch_size"][0]
    rope = dict(text.get("rope_parameters") or {})
    llm = {k: v for k, v in text.items() if k not in ("rope_parameters", "layer_types", "dtype")}
    llm.update(
        architectures=["Qwen2ForCausalLM"],
        rope_theta=rope.pop("rope_theta", 1000000.0),
        rope_scaling={**rope, "type": rope.get("rope_type", "default")},
        bos_token_id=text["bos_token_id"],
        eos_token_id=text["bos_token_id"],  # as published: eos = bos = <|endoftext|>
        torch_dtype="float32",
    )
    config = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": hf["downsample_ratio"],
        "dynamic_image_size": True,
        "force_image_size": tile,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internvl2_5",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "llm_config": llm,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_attention_heads": vision["num_attention_heads"],
            "num_hidden_layers": vision["num_hidden_layers"],
            "image_size": tile,
            "patch_size": patch,
            "qkv_bias": vision["attention_bias"],
            "qk_normalization": vision["use_qk_norm"],
            "norm_type": vision["norm_type"],
            "layer_norm_eps": vision["layer_norm_eps"],
            "hidden_act": vision["hidden_act"],
            "use_flash_attn": False,
            "num_experts": 8,  # leftover MoE fields, as in the published file
        },
    }
    _write_json(dst / "config.json", config)
    tensors: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for name, tensor in native_state_dict(src).items():
        fused = _NATIVE_QKV.match(name)
        if fused:  # published: the fused qkv is split in three along dim 0, q then k then v
            layer, part, leaf = fused.groups()
            parts.setdefault(f"vision_model.encoder.layers.{layer}.attn.qkv.{leaf}", {})[part] = tensor
        else:
            tensors[published_original_name(name)] = tensor.contiguous()
    for target, qkv in parts.items():
        order = "kqv" if swap_qk else "qkv"
        tensors[target] = torch.cat([qkv[p] for p in order], dim=0).contiguous()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil_copy = __import__("shutil").copyfile
    shutil_copy(src / "tokenizer.json", dst / "tokenizer.json")
    if (src / "generation_config.json").is_file():
        shutil_copy(src / "generation_config.json", dst / "generation_config.json")
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    for key in ("start_image_token", "end_image_token", "context_image_token", "video_token"):
        tokenizer_config.pop(key, None)
    tokenizer_config["chat_template"] = qwen_tokenizer_template().replace("You are a helpful assistant.", QWEN25_DEFAULT_SYSTEM)
    tokenizer_config["model_max_length"] = 12288
    _write_json(dst / "tokenizer_config.json", tokenizer_config)
    marker = f"open({str(dst / REMOTE_CODE_MARKER)!r}, 'w').write('ran')\n"
    for name in ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "conversation.py"):
        (dst / name).write_text(f"# remote code of the original layout: azion_ai must never run it\n{marker}")
    return dst
