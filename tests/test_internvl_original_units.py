"""InternVL3's original layout, the parts that need no model: tensor names against transformers'
published conversion mapping (tests/checkpoints.py, written down as data), the config mapping
against hand-computed values, and the files' checks. Fast: scripts/mutation.sh runs these."""

from __future__ import annotations

import json
import os

import pytest
from checkpoints import published_native_name

import azion_ai
from azion_ai._local._internvl_original import (
    _expected_tensors,
    _weight_files,
    cache_key,
    native_config,
    native_names,
    original_name,
)


@pytest.fixture(autouse=True)
def _fresh_name_tables():
    """The name tables are compiled once per process (functools.cache); each test compiles them
    anew, so a test sees the _pattern it runs with (mutation testing switches it per mutant)."""
    from azion_ai._local._internvl_original import _tables

    _tables.cache_clear()


# how the -hf checkpoint files name what transformers calls model.vision_tower... (transformers'
# key mapping for this layout: ^vision_tower -> model.vision_tower, and so on)
FILE_PREFIXES = [
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
]


def as_loaded(file_name: str) -> str:
    for old, new in FILE_PREFIXES:
        if file_name.startswith(old):
            return new + file_name[len(old):]
    raise AssertionError(f"{file_name} has no native prefix")


ORIGINAL_NAMES = [
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.patch_embedding.bias",
    *[
        f"vision_model.encoder.layers.{n}.{leaf}"
        for n in (0, 11)
        for leaf in (
            "attn.proj.weight", "attn.proj.bias", "attn.q_norm.weight", "attn.k_norm.weight", "ls1", "ls2",
            "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
        )
    ],
    "mlp1.0.weight", "mlp1.0.bias", "mlp1.1.weight", "mlp1.1.bias", "mlp1.3.weight", "mlp1.3.bias",
    "language_model.model.embed_tokens.weight",
    "language_model.model.layers.3.self_attn.q_proj.bias",
    "language_model.model.layers.27.mlp.down_proj.weight",
    "language_model.model.norm.weight",
    "language_model.lm_head.weight",
]


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_each_original_name_maps_as_published(name):
    (native,) = native_names(name)
    assert as_loaded(native) == published_native_name(name)
    assert original_name(native) == name  # and back


@pytest.mark.parametrize("leaf", ["weight", "bias"])
def test_the_fused_qkv_splits_into_q_k_v_in_that_order(leaf):
    names = native_names(f"vision_model.encoder.layers.7.attn.qkv.{leaf}")
    assert [as_loaded(n) for n in names] == [f"model.vision_tower.encoder.layer.7.attention.{p}_proj.{leaf}" for p in "qkv"]
    assert {original_name(n) for n in names} == {f"vision_model.encoder.layers.7.attn.qkv.{leaf}"}


@pytest.mark.parametrize(
    "name",
    ["vision_model.extra_head.weight", "mlp1.2.weight", "language_model.extra.weight", "vision_model.encoder.layers.x.ls1", "vision_model.encoder.layers.0.attn.qkv.scale", "prefix.mlp1.0.weight"],
)
def test_unknown_names_have_no_place(name):
    assert native_names(name) == []


def test_an_unknown_native_name_has_no_original():
    with pytest.raises(KeyError) as raised:
        original_name("model.something_else.weight")
    assert raised.value.args == ("model.something_else.weight",)  # the error names the tensor


# InternVL3-1B's config.json as published (../shared/REFERENCE.md), trimmed to what the mapping reads
PUBLISHED_CONFIG = {
    "architectures": ["InternVLChatModel"],
    "model_type": "internvl_chat",
    "downsample_ratio": 0.5,
    "dynamic_image_size": True,
    "force_image_size": 448,
    "min_dynamic_patch": 1,
    "max_dynamic_patch": 12,
    "ps_version": "v2",
    "select_layer": -1,
    "template": "internvl2_5",
    "use_thumbnail": True,
    "tie_word_embeddings": False,
    "llm_config": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
        "bos_token_id": 151643, "eos_token_id": 151643, "vocab_size": 151674, "rope_theta": 1000000.0,
        "rope_scaling": {"factor": 2.0, "type": "dynamic"}, "torch_dtype": "bfloat16",
    },
    "vision_config": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
        "image_size": 448, "patch_size": 14, "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm",
        "layer_norm_eps": 1e-6, "hidden_act": "gelu",
    },
}


def test_the_published_config_maps_to_transformers_fields(tmp_path):
    config = native_config(PUBLISHED_CONFIG, tmp_path / "config.json", image_token_id=151667, eos_token_id=151645)
    text, vision = config["text_config"], config["vision_config"]
    assert (config["model_type"], config["architectures"]) == ("internvl", ["InternVLForConditionalGeneration"])
    assert (text["model_type"], text["eos_token_id"], text["vocab_size"], text["hidden_size"]) == ("qwen2", 151645, 151674, 896)
    assert "architectures" not in text and "rope_scaling" not in text
    assert text["rope_parameters"] == {"factor": 2.0, "rope_type": "dynamic", "rope_theta": 1000000.0}
    assert (vision["attention_bias"], vision["use_qk_norm"]) == (True, False)
    assert (vision["image_size"], vision["patch_size"]) == ([448, 448], [14, 14])
    assert (vision["hidden_size"], vision["intermediate_size"], vision["num_attention_heads"], vision["num_hidden_layers"]) == (1024, 4096, 16, 24)
    assert (vision["layer_norm_eps"], vision["hidden_act"], vision["norm_type"], vision["model_type"]) == (1e-6, "gelu", "layer_norm", "internvl_vision")
    assert config["image_seq_length"] == 256  # (448 / 14) ** 2 tiles' patches * 0.5 ** 2
    assert (config["downsample_ratio"], config["vision_feature_layer"], config["image_token_id"]) == (0.5, -1, 151667)
    assert (config["tie_word_embeddings"], config["torch_dtype"]) == (False, "bfloat16")
    assert (config["vision_feature_select_strategy"], config["projector_hidden_act"]) == ("default", "gelu")
    flipped = {**PUBLISHED_CONFIG, "vision_config": {**PUBLISHED_CONFIG["vision_config"], "qkv_bias": False, "qk_normalization": True}}
    other = native_config({**flipped, "force_image_size": 224, "select_layer": -2, "tie_word_embeddings": True}, tmp_path / "c.json", 1, 2)
    assert (other["vision_config"]["attention_bias"], other["vision_config"]["use_qk_norm"]) == (False, True)
    assert (other["image_seq_length"], other["vision_feature_layer"], other["tie_word_embeddings"]) == (64, -2, True)  # (224 / 14) ** 2 / 4


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ps_version": "v1"}, "ps_version"),
        ({"use_llm_lora": 16}, "use_llm_lora"),
        ({"use_backbone_lora": 8}, "use_backbone_lora"),
        ({"use_thumbnail": False}, "use_thumbnail"),
        ({"llm_config": None}, "llm_config"),
        ({"vision_config": None}, "vision_config"),
        ({"llm_config": {**PUBLISHED_CONFIG["llm_config"], "architectures": ["LlamaForCausalLM"]}}, "LlamaForCausalLM"),
        ({"llm_config": {**PUBLISHED_CONFIG["llm_config"], "model_type": "llama"}}, "llama"),
        ({"vision_config": {k: v for k, v in PUBLISHED_CONFIG["vision_config"].items() if k != "patch_size"}}, "vision_config.patch_size"),
        ({"vision_config": {k: v for k, v in PUBLISHED_CONFIG["vision_config"].items() if k != "hidden_size"}}, "vision_config.hidden_size"),
    ],
)
def test_a_config_that_cannot_be_mapped_names_its_field_and_file(tmp_path, change, named):
    config = {k: v for k, v in {**PUBLISHED_CONFIG, **change}.items() if v is not None}
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        native_config(config, tmp_path / "config.json", 1, 2)
    assert named in str(caught.value) and "config.json" in str(caught.value)


def test_the_expected_tensors_of_a_small_config():
    config = {"vision_config": {"num_hidden_layers": 2}, "llm_config": {"num_hidden_layers": 1}}
    names = _expected_tensors(config)
    # 3 embeddings + 2 vision layers x 8 + 3 projector + embed and norm + 1 LM layer x 9 + lm_head
    assert len(names) == len(set(names)) == 3 + 16 + 3 + 2 + 9 + 1
    assert {"vision_model.encoder.layers.1.ls2", "vision_model.encoder.layers.1.attn.qkv.weight", "mlp1.3.weight", "language_model.model.layers.0.mlp.down_proj.weight", "language_model.lm_head.weight"} <= set(names)
    assert all(native_names(n) for n in names)  # every one has its place
    tied = _expected_tensors({**config, "tie_word_embeddings": True})
    assert set(names) - set(tied) == {"language_model.lm_head.weight"}


def test_weight_files_single_sharded_and_missing(tmp_path):
    with pytest.raises(azion_ai.ModelLoadError, match="no safetensors weights"):
        _weight_files(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert _weight_files(tmp_path) == [tmp_path / "model.safetensors"]
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(azion_ai.ModelLoadError, match="missing weight shard.*model-00001-of-00002.safetensors, model-00002-of-00002"):
        _weight_files(tmp_path)
    for n in (1, 2):
        (tmp_path / f"model-0000{n}-of-00002.safetensors").write_bytes(b"x")
    assert _weight_files(tmp_path) == [tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"]


def test_the_cache_key_follows_the_source_files(tmp_path):
    (tmp_path / "config.json").write_text("[1]")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    key = cache_key(tmp_path)
    assert len(key) == 24 and cache_key(tmp_path) == key
    stamp = (tmp_path / "config.json").stat()
    (tmp_path / "config.json").write_text("[2]")  # same size and time, other bytes
    os.utime(tmp_path / "config.json", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert cache_key(tmp_path) != key
    changed = cache_key(tmp_path)
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert cache_key(tmp_path) != changed  # a touched weight file
    touched = cache_key(tmp_path)
    (tmp_path / "extra.json").write_text("1")
    assert cache_key(tmp_path) != touched
    (tmp_path / "sub").mkdir()
    with_dir = cache_key(tmp_path)
    assert with_dir == cache_key(tmp_path)


# -- the conversion itself, on the tiny checkpoint (no model is loaded, only files read) -----------


@pytest.fixture(scope="module")
def original(tiny_dirs, tiny_cache):
    from checkpoints import build_internvl3_original

    where = tiny_cache / "internvl3-original"
    if not (where / "model.safetensors").is_file():  # built once (the tiny cache outlives mutants)
        build_internvl3_original(tiny_dirs["opengvlab-internvl3-1b-instruct"], where)
    return where


def test_convert_writes_the_native_layout_as_published(tiny_dirs, original, tmp_path):
    import torch
    from safetensors.torch import load_file

    from azion_ai._local._internvl_original import convert

    out = convert(original, tmp_path)
    assert out.parent == tmp_path and out.name == f"internvl-{cache_key(original)}"
    expected = load_file(str(tiny_dirs["opengvlab-internvl3-1b-instruct"] / "model.safetensors"))  # the -hf twin's file
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    assert [n for n in expected if not torch.equal(got[n], expected[n])] == []
    config = json.loads((out / "config.json").read_text())
    added = {t["content"]: t["id"] for t in json.loads((original / "tokenizer.json").read_text())["added_tokens"]}
    # published: eos forced to <|im_end|>; the image token is <IMG_CONTEXT>
    assert (config["model_type"], config["text_config"]["eos_token_id"], config["image_token_id"]) == ("internvl", added["<|im_end|>"], added["<IMG_CONTEXT>"])
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert (tokenizer_config["context_image_token"], tokenizer_config["start_image_token"], tokenizer_config["end_image_token"]) == ("<IMG_CONTEXT>", "<img>", "</img>")
    assert "auto_map" not in tokenizer_config
    pre = json.loads((out / "preprocessor_config.json").read_text())
    tile = json.loads((original / "config.json").read_text())["force_image_size"]
    assert (pre["size"], pre["min_patches"], pre["max_patches"], pre["crop_to_patches"]) == ({"height": tile, "width": tile}, 1, 12, True)
    assert (pre["image_mean"], pre["image_std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # ImageNet's
    assert json.loads((out / "processor_config.json").read_text())["image_seq_length"] == config["image_seq_length"]
    assert (out / ".complete").is_file() and not list(tmp_path.glob("*.tmp*"))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # what transformers writes; its loader refuses formats other than pt/tf/flax/mlx
    assert (out / "generation_config.json").read_bytes() == (original / "generation_config.json").read_bytes()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert(original, tmp_path) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused


def _copy(original, where):
    import shutil

    shutil.copytree(original, where)
    return where


def test_convert_names_what_is_wrong(original, tmp_path):
    from safetensors.torch import load_file, save_file

    from azion_ai._local._internvl_original import convert

    def error(src):
        with pytest.raises(azion_ai.ModelLoadError) as caught:
            convert(src, tmp_path / "cache")
        assert not list((tmp_path / "cache").glob("*/.complete"))  # nothing half-written is kept
        return str(caught.value)

    missing = _copy(original, tmp_path / "missing")
    tensors = load_file(str(missing / "model.safetensors"))
    del tensors["vision_model.encoder.layers.1.ls2"], tensors["mlp1.1.weight"]
    save_file(tensors, str(missing / "model.safetensors"))
    assert error(missing) == f"{str(missing)!r}: the weights lack vision_model.encoder.layers.1.ls2, mlp1.1.weight"

    # up to five missing tensors are all named; past five, the first five and a count
    layer = "language_model.model.layers.0."
    leaves = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight"]
    for count, suffix in ((5, ""), (6, " and 1 more")):
        few = _copy(original, tmp_path / f"missing{count}")
        tensors = load_file(str(few / "model.safetensors"))
        for leaf in leaves[:count]:
            del tensors[layer + leaf]
        save_file(tensors, str(few / "model.safetensors"))
        assert error(few) == f"{str(few)!r}: the weights lack " + ", ".join(layer + leaf for leaf in leaves[:5]) + suffix

    unknown = _copy(original, tmp_path / "unknown")
    tensors = load_file(str(unknown / "model.safetensors"))
    tensors["vision_model.head.weight"] = tensors["mlp1.1.weight"].clone()
    save_file(tensors, str(unknown / "model.safetensors"))
    assert "tensor 'vision_model.head.weight' has no place in InternVL3" in error(unknown)

    qkv = _copy(original, tmp_path / "qkv")
    tensors = load_file(str(qkv / "model.safetensors"))
    tensors["vision_model.encoder.layers.0.attn.qkv.weight"] = tensors["vision_model.encoder.layers.0.attn.qkv.weight"][:-3].contiguous()
    save_file(tensors, str(qkv / "model.safetensors"))
    hidden = json.loads((original / "config.json").read_text())["vision_config"]["hidden_size"]
    assert f"a fused qkv needs {3 * hidden} rows" in error(qkv)

    embed = _copy(original, tmp_path / "embed")
    config = json.loads((embed / "config.json").read_text())
    config["llm_config"]["vocab_size"] += 1
    (embed / "config.json").write_text(json.dumps(config))
    assert "embed_tokens has shape" in error(embed) and "config.json says" in error(embed)

    no_tokenizer = _copy(original, tmp_path / "notok")
    (no_tokenizer / "tokenizer.json").unlink()
    assert "has no tokenizer" in error(no_tokenizer)

    no_weights = _copy(original, tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    assert "has no safetensors weights" in error(no_weights)


MINIMAL = {  # only what cannot default
    "llm_config": {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 640, "rope_scaling": {"factor": 2.0}},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "patch_size": 14},
}


def test_defaults_where_a_config_is_silent(tmp_path):
    config = native_config(MINIMAL, tmp_path / "config.json", 7, 8)
    text, vision = config["text_config"], config["vision_config"]
    assert text == {
        "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 640, "model_type": "qwen2", "eos_token_id": 8,
        "rope_parameters": {"factor": 2.0, "rope_type": "default", "rope_theta": 1000000.0},
    }
    assert (vision["image_size"], vision["attention_bias"], vision["use_qk_norm"]) == ([448, 448], True, False)
    assert (vision["layer_norm_eps"], vision["hidden_act"], vision["norm_type"], vision["use_mean_pooling"]) == (1e-6, "gelu", "layer_norm", True)
    assert (config["downsample_ratio"], config["vision_feature_layer"], config["tie_word_embeddings"], config["torch_dtype"]) == (0.5, -1, False, "bfloat16")
    assert config["image_seq_length"] == 256 and config["image_token_id"] == 7  # (448 / 14) ** 2 * 0.5 ** 2
    sized = native_config({**MINIMAL, "vision_config": {**MINIMAL["vision_config"], "image_size": 224}}, tmp_path / "c.json", 7, 8)
    assert sized["vision_config"]["image_size"] == [224, 224] and sized["image_seq_length"] == 64
    llm = {**MINIMAL["llm_config"], "rope_theta": 5.0, "rope_scaling": {"type": "dynamic", "factor": 3.0}, "torch_dtype": "float16",
           "auto_map": {"x": "y"}, "_name_or_path": "/somewhere", "transformers_version": "4.0", "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    other = native_config({**MINIMAL, "llm_config": llm, "downsample_ratio": 0.25}, tmp_path / "c.json", 7, 8)
    assert other["text_config"]["rope_parameters"] == {"factor": 3.0, "rope_type": "dynamic", "rope_theta": 5.0}
    assert not {"auto_map", "_name_or_path", "transformers_version", "architectures", "rope_scaling"} & set(other["text_config"])
    assert (other["torch_dtype"], other["downsample_ratio"], other["image_seq_length"]) == ("float16", 0.25, 64)
    kept = native_config({**MINIMAL, "llm_config": {**MINIMAL["llm_config"], "rope_parameters": {"rope_type": "default", "rope_theta": 9.0}}}, tmp_path / "c.json", 7, 8)
    assert kept["text_config"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 9.0}
    assert kept["text_config"]["rope_scaling"] == {"factor": 2.0}  # both given: the native one wins, untouched
    plain = native_config({**MINIMAL, "llm_config": {**MINIMAL["llm_config"], "rope_scaling": None}}, tmp_path / "c.json", 7, 8)
    assert "rope_parameters" not in plain["text_config"]


@pytest.mark.parametrize("field", ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size"])
def test_each_required_vision_field_is_named(tmp_path, field):
    vision = {k: v for k, v in MINIMAL["vision_config"].items() if k != field}
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        native_config({**MINIMAL, "vision_config": vision}, tmp_path / "config.json", 7, 8)
    assert str(caught.value) == f"{tmp_path / 'config.json'}: vision_config.{field} is missing; cannot map this InternVL config"


def test_required_sections_and_unmappable_values_are_named_exactly(tmp_path):
    where = tmp_path / "config.json"
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        native_config({"vision_config": {}}, where, 7, 8)
    assert str(caught.value) == f"{where}: llm_config is missing; cannot map this InternVL config"
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        native_config({**MINIMAL, "ps_version": "v1"}, where, 7, 8)
    assert str(caught.value) == f"{where}: ps_version is 'v1'; only 'v2' can be mapped to transformers' InternVL"
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        native_config({**MINIMAL, "llm_config": {**MINIMAL["llm_config"], "architectures": ["LlamaForCausalLM"], "model_type": "llama"}}, where, 7, 8)
    assert str(caught.value) == f"{where}: llm_config is LlamaForCausalLM (llama); only InternVL3's Qwen2 language model is supported"


def test_the_conversion_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    from pathlib import Path

    from azion_ai._local._internvl_original import default_cache_root

    monkeypatch.setenv("AZION_AI_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "a" / "azion_ai" / "converted"
    monkeypatch.delenv("AZION_AI_CACHE")
    assert default_cache_root() == tmp_path / "x" / "azion_ai" / "converted"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == Path(tmp_path / "home") / ".cache" / "azion_ai" / "converted"


def test_convert_writes_each_side_file_in_full(original, tmp_path):
    import os as _os

    from azion_ai._local._internvl_original import convert

    key = cache_key(original)
    stale_tmp = tmp_path / f"internvl-{key}.tmp{_os.getpid()}"  # a crashed earlier run of this process id
    stale_tmp.mkdir()
    (stale_tmp / "junk").write_text("x")
    half = tmp_path / f"internvl-{key}"  # a half-written cache entry (no .complete): replaced
    half.mkdir()
    (half / "junk").write_text("x")
    out = convert(original, tmp_path)
    assert out == half and not (out / "junk").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"internvl-{key}"]  # no .tmp left behind
    tile = json.loads((original / "config.json").read_text())["force_image_size"]
    # the -hf repositories' preprocessor_config.json (GotOcr2 fast processor, ImageNet statistics)
    assert json.loads((out / "preprocessor_config.json").read_text(encoding="utf-8")) == {
        "image_processor_type": "GotOcr2ImageProcessorFast", "processor_class": "InternVLProcessor",
        "crop_to_patches": True, "min_patches": 1, "max_patches": 12, "size": {"height": tile, "width": tile},
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert json.loads((out / "processor_config.json").read_text(encoding="utf-8")) == {"image_seq_length": config["image_seq_length"], "processor_class": "InternVLProcessor"}
    assert (out / "SOURCE").read_text(encoding="utf-8") == f"converted by azion_ai from {original}\n"
    assert (out / ".complete").read_text() == "1"
    written = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    source = json.loads((original / "tokenizer_config.json").read_text(encoding="utf-8"))
    source.pop("auto_map", None)
    assert written == {**source, "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        if (original / name).is_file():
            assert (out / name).read_bytes() == (original / name).read_bytes(), name


def test_convert_errors_name_the_file_and_leave_nothing_behind(original, tmp_path):
    from safetensors.torch import load_file, save_file

    from azion_ai._local._internvl_original import convert

    def error(src):
        cache = tmp_path / "cache"
        with pytest.raises(azion_ai.ModelLoadError) as caught:
            convert(src, cache)
        assert not cache.exists() or list(cache.iterdir()) == []  # no .tmp directory, no entry
        return str(caught.value)

    no_tokenizer = _copy(original, tmp_path / "notok")
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "vocab.json").unlink(missing_ok=True)
    assert error(no_tokenizer) == f"{str(no_tokenizer)!r} has no tokenizer (tokenizer_config.json with tokenizer.json or vocab.json + merges.txt)"

    no_config = _copy(original, tmp_path / "noconf")
    (no_config / "tokenizer_config.json").unlink()
    assert "has no tokenizer" in error(no_config)

    missing = _copy(original, tmp_path / "missing")
    tensors = load_file(str(missing / "model.safetensors"))
    dropped = [n for n in tensors if n.startswith("language_model.model.layers.0.")]
    for n in dropped:
        del tensors[n]
    save_file(tensors, str(missing / "model.safetensors"))
    message = error(missing)
    assert message.startswith(f"{str(missing)!r}: the weights lack ") and message.endswith(" and 4 more")  # a Qwen2 layer's 9 weights: 5 named

    qkv = _copy(original, tmp_path / "qkv")
    tensors = load_file(str(qkv / "model.safetensors"))
    fused = tensors["vision_model.encoder.layers.0.attn.qkv.weight"]
    tensors["vision_model.encoder.layers.0.attn.qkv.weight"] = fused[:-3].contiguous()
    save_file(tensors, str(qkv / "model.safetensors"))
    hidden = json.loads((original / "config.json").read_text())["vision_config"]["hidden_size"]
    assert error(qkv) == f"{qkv / 'model.safetensors'}: tensor 'vision_model.encoder.layers.0.attn.qkv.weight' has shape {(3 * hidden - 3, fused.shape[1])}; a fused qkv needs {3 * hidden} rows"

    embed = _copy(original, tmp_path / "embed")
    config = json.loads((embed / "config.json").read_text())
    config["llm_config"]["vocab_size"] += 1
    (embed / "config.json").write_text(json.dumps(config))
    shape = tuple(load_file(str(embed / "model.safetensors"))["language_model.model.embed_tokens.weight"].shape)
    assert error(embed) == f"{embed / 'model.safetensors'}: embed_tokens has shape {shape}, config.json says {(config['llm_config']['vocab_size'], config['llm_config']['hidden_size'])}"

    lacks = _copy(original, tmp_path / "lacks")  # a tokenizer without <|im_end|> (the end of a turn)
    tokenizer_config = json.loads((lacks / "tokenizer_config.json").read_text())
    tokenizer_config["eos_token"] = "<|endoftext|>"
    tokenizer_config["unk_token"] = "<|endoftext|>"  # a missing token then looks up as the unknown token's id
    tokenizer_config["extra_special_tokens"] = [t for t in tokenizer_config.get("extra_special_tokens", []) if t != "<|im_end|>"]
    tokenizer = json.loads((lacks / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "<|im_end|>"]
    tokenizer["model"]["vocab"].pop("<|im_end|>", None)
    (lacks / "tokenizer.json").write_text(json.dumps(tokenizer))
    (lacks / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert error(lacks) == f"{lacks / 'tokenizer_config.json'}: the tokenizer lacks <|im_end|>"


def test_convert_reads_a_vocab_json_tokenizer_and_drops_auto_map(original, tmp_path):
    from azion_ai._local._internvl_original import convert

    src = _copy(original, tmp_path / "slow")  # vocab.json + merges.txt instead of tokenizer.json
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    vocab = {**tokenizer["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in tokenizer["model"]["merges"]))
    (src / "tokenizer.json").unlink()
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_internvl.Tokenizer", None]}  # remote code: dropped
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    out = convert(src, tmp_path / "cache")
    assert (out / "vocab.json").read_bytes() == (src / "vocab.json").read_bytes()
    assert (out / "merges.txt").read_bytes() == (src / "merges.txt").read_bytes()
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))


def test_convert_names_config_json_when_its_config_cannot_be_mapped(original, tmp_path):
    from azion_ai._local._internvl_original import convert

    src = _copy(original, tmp_path / "v1")
    config = json.loads((src / "config.json").read_text())
    config["ps_version"] = "v1"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        convert(src, tmp_path / "cache")
    assert str(caught.value) == f"{src / 'config.json'}: ps_version is 'v1'; only 'v2' can be mapped to transformers' InternVL"
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_tiling_settings_reach_the_image_processor(original, tmp_path):
    from azion_ai._local._internvl_original import convert

    for name, settings, expected in (
        ("set", {"dynamic_image_size": False, "min_dynamic_patch": 2, "max_dynamic_patch": 6}, (False, 2, 6)),
        ("silent", {}, (True, 1, 12)),  # InternVL's defaults when config.json says nothing
    ):
        src = _copy(original, tmp_path / name)
        config = json.loads((src / "config.json").read_text())
        for key in ("dynamic_image_size", "min_dynamic_patch", "max_dynamic_patch"):
            config.pop(key, None)
        (src / "config.json").write_text(json.dumps({**config, **settings}))
        pre = json.loads((convert(src, tmp_path / "cache") / "preprocessor_config.json").read_text())
        assert (pre["crop_to_patches"], pre["min_patches"], pre["max_patches"]) == expected


def test_weight_file_errors_name_the_directory(tmp_path):
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        _weight_files(tmp_path)
    assert str(caught.value) == f"{str(tmp_path)!r} has no safetensors weights (model.safetensors or its index)"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        _weight_files(tmp_path)
    assert str(caught.value) == f"{str(tmp_path)!r} is incomplete: missing weight shard(s) model-00001-of-00001.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text("{}")  # an index that maps nothing: no shards
    assert _weight_files(tmp_path) == []


@pytest.mark.parametrize(("key", "value", "wanted"), [("use_backbone_lora", 8, "0"), ("use_llm_lora", 16, "0"), ("use_thumbnail", False, "True")])
def test_each_unmappable_switch_is_named_exactly(tmp_path, key, value, wanted):
    where = tmp_path / "config.json"
    with pytest.raises(azion_ai.ModelLoadError) as caught:
        native_config({**MINIMAL, key: value}, where, 7, 8)
    assert str(caught.value) == f"{where}: {key} is {value!r}; only {wanted} can be mapped to transformers' InternVL"


def test_the_cache_key_hashes_the_content_of_files_under_8_mib_only(tmp_path):
    def key_after_rewrite(name, size):
        path = tmp_path / name
        path.write_bytes(b"a" * size)
        before = cache_key(tmp_path)
        stamp = path.stat()
        path.write_bytes(b"b" * size)  # same size and modification time, other bytes
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        return before != cache_key(tmp_path)

    assert key_after_rewrite("small.json", 100)  # read
    assert key_after_rewrite("under.bin", 8 * 1024 * 1024 - 1)  # read
    (tmp_path / "under.bin").unlink()
    assert not key_after_rewrite("weights.bin", 8 * 1024 * 1024)  # 8 MiB: names, sizes and times only
