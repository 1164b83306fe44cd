"""InternVL3 in its original layout (``internvl_chat``, as Azion's page links it), loaded with no
remote code, answering exactly as its ``-hf`` twin wherever the two layouts' prompts agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import INTERNVL_ID, png_data_uri, require

import azion_ai
from azion_ai import AI

pytestmark = pytest.mark.local
torch = require("torch")

IMAGE = png_data_uri((200, 30, 30), size=(100, 80))
AGREEING = [  # a system message given, images before text: both layouts render the same prompt
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name the european capitals"}], "max_tokens": 12, "temperature": 0},
    {
        "messages": [
            {"role": "system", "content": "You describe images."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}, {"type": "text", "text": "What is in this image?"}]},
        ],
        "max_tokens": 12,
        "temperature": 0,
    },
    {
        "messages": [
            {"role": "system", "content": "Compare."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri((10, 200, 30), size=(600, 200))}}, {"type": "text", "text": "A wide one"}]},
        ],
        "max_tokens": 8,
        "temperature": 0,
    },
]


def _tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def original(tiny_dirs, tmp_path_factory):
    from checkpoints import build_internvl3_original

    return build_internvl3_original(tiny_dirs[INTERNVL_ID], tmp_path_factory.mktemp("orig") / "InternVL3-1B-Instruct")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("azion-cache")
    before = os.environ.get("AZION_AI_CACHE")
    os.environ["AZION_AI_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("AZION_AI_CACHE", None)
    else:
        os.environ["AZION_AI_CACHE"] = before


def _answers(path: Path, payloads, **options):
    with AI(backend="local", models={INTERNVL_ID: str(path)}, device="cpu", **options) as ai:
        return [ai.run(INTERNVL_ID, {**p, "logprobs": True, "top_logprobs": 5}).model_dump(include={"choices", "usage"}) for p in payloads]


def _texts(answers):
    """Text, usage, and every step's log-probabilities (so a small change in the weights shows)."""
    return [
        (
            a["choices"][0]["message"]["content"],
            a["usage"]["prompt_tokens"],
            a["usage"]["completion_tokens"],
            [(e["logprob"], [t["logprob"] for t in e["top_logprobs"]]) for e in a["choices"][0]["logprobs"]["content"]],
        )
        for a in answers
    ]


def test_original_layout_answers_exactly_as_its_hf_twin(tiny_dirs, original, cache):
    digest = _tree_digest(original)
    ours = _texts(_answers(original, AGREEING))
    assert ours == _texts(_answers(tiny_dirs[INTERNVL_ID], AGREEING))
    assert _tree_digest(original) == digest  # the user's directory is only read
    assert not (original / "remote-code-ran").exists()  # no file from the model directory ran
    converted = [p for p in cache.rglob("config.json")]
    assert len(converted) == 1 and json.loads(converted[0].read_text())["model_type"] == "internvl"


def test_every_tensor_lands_where_the_published_mapping_puts_it(tiny_dirs, original, cache):
    """Loaded from the original layout (built with transformers' published names, not the
    loader's table), every parameter equals the -hf twin's as transformers loads it."""
    from checkpoints import native_state_dict, published_native_name

    # the published rules themselves, spelled out for the entries easiest to mix up
    assert published_native_name("vision_model.encoder.layers.3.ls1") == "model.vision_tower.encoder.layer.3.lambda_1"
    assert published_native_name("vision_model.encoder.layers.3.ls2") == "model.vision_tower.encoder.layer.3.lambda_2"
    assert published_native_name("vision_model.encoder.layers.0.norm1.bias") == "model.vision_tower.encoder.layer.0.layernorm_before.bias"
    assert published_native_name("vision_model.encoder.layers.0.attn.proj.weight") == "model.vision_tower.encoder.layer.0.attention.projection_layer.weight"
    assert published_native_name("mlp1.3.weight") == "model.multi_modal_projector.linear_2.weight"
    assert published_native_name("language_model.lm_head.weight") == "lm_head.weight"
    expected = native_state_dict(tiny_dirs[INTERNVL_ID])
    with AI(backend="local", models={INTERNVL_ID: str(original)}, device="cpu") as ai:
        ai.transport.load(INTERNVL_ID)
        loaded = {k: v.detach() for k, v in ai.transport._engines[INTERNVL_ID].loaded.model.state_dict().items()}
    assert sorted(loaded) == sorted(expected)
    differing = [name for name in expected if not torch.equal(loaded[name].to(expected[name].dtype), expected[name])]
    assert differing == []
    layer = "model.vision_tower.encoder.layer.0."
    assert not torch.equal(expected[layer + "lambda_1"], expected[layer + "lambda_2"])  # a swap would show


def test_the_conversion_is_cached_by_the_source_files(original, cache):
    from azion_ai._local._internvl_original import cache_key, convert

    first = convert(original, cache / "converted")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert convert(original, cache / "converted") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    key = cache_key(original)
    (original / "generation_config.json").write_text((original / "generation_config.json").read_text() + " ")
    try:
        assert cache_key(original) != key  # a changed source file is a new conversion
    finally:
        (original / "generation_config.json").write_text((original / "generation_config.json").read_text()[:-1])


def test_the_default_prompt_is_what_vllm_renders_for_these_files(tiny_dirs, original, cache):
    """No system message: the original tokenizer's template (Qwen2.5's) adds its default system
    line, and images go in front of the text; the -hf template does neither."""
    from azion_ai._local._chat import render_prompt

    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]}]}
    with AI(backend="local", models={INTERNVL_ID: str(original)}, device="cpu") as ai:
        ai.transport.load(INTERNVL_ID)
        loaded = ai.transport._engines[INTERNVL_ID].loaded
        prompt, _ = render_prompt(loaded.tokenizer, loaded.templates, payload["messages"], None, loaded.image_placeholder)
        assert prompt == (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n<IMG_CONTEXT>\nWhat?<|im_end|>\n<|im_start|>assistant\n"
        )
    with AI(backend="local", models={INTERNVL_ID: str(tiny_dirs[INTERNVL_ID])}, device="cpu") as ai:
        ai.transport.load(INTERNVL_ID)
        loaded = ai.transport._engines[INTERNVL_ID].loaded
        prompt, _ = render_prompt(loaded.tokenizer, loaded.templates, payload["messages"], None, loaded.image_placeholder)
        assert prompt == "<|im_start|>user\nWhat?<IMG_CONTEXT>\n<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", ["internvl-hf", "internvl2_5"])
def test_named_templates_override_the_default(tiny_dirs, original, cache, name):
    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]}], "max_tokens": 6, "temperature": 0}
    ours = _texts(_answers(original, [payload], chat_template=name))
    if name == "internvl-hf":  # the -hf template on the original layout: exactly the -hf twin
        assert ours == _texts(_answers(tiny_dirs[INTERNVL_ID], [payload]))
    else:  # InternVL's own conversation: its own system line
        assert ours != _texts(_answers(original, [payload]))
        with AI(backend="local", models={INTERNVL_ID: str(original)}, device="cpu", chat_template=name) as ai:
            ai.transport.load(INTERNVL_ID)
            assert "书生·万象" in ai.transport.chat_template


def test_a_swapped_q_and_k_would_be_noticed(tiny_dirs, tmp_path, cache):
    """The tiny checkpoint is sensitive: loading q and k the wrong way round changes the answers."""
    from checkpoints import build_internvl3_original

    broken = build_internvl3_original(tiny_dirs[INTERNVL_ID], tmp_path / "broken", swap_qk=True)
    assert _texts(_answers(broken, AGREEING[1:2])) != _texts(_answers(tiny_dirs[INTERNVL_ID], AGREEING[1:2]))


def test_a_dropped_layer_scale_would_be_noticed(tiny_dirs, tmp_path, cache):
    from safetensors.torch import load_file, save_file

    from checkpoints import build_internvl3_original

    changed = build_internvl3_original(tiny_dirs[INTERNVL_ID], tmp_path / "ls")
    tensors = load_file(str(changed / "model.safetensors"))
    tensors["vision_model.encoder.layers.0.ls1"] = torch.ones_like(tensors["vision_model.encoder.layers.0.ls1"])
    save_file(tensors, str(changed / "model.safetensors"))
    assert _texts(_answers(changed, AGREEING[1:2])) != _texts(_answers(tiny_dirs[INTERNVL_ID], AGREEING[1:2]))


# -- every error names the file and the tensor or field ------------------------------------------


def _broken_copy(original: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(original, where)
    return where


def _load_error(path: Path) -> str:
    with AI(backend="local", models={INTERNVL_ID: str(path)}, device="cpu") as ai, pytest.raises(azion_ai.ModelLoadError) as caught:
        ai.transport.load(INTERNVL_ID)
    return str(caught.value)


def test_a_missing_tensor_is_named(original, tmp_path, cache):
    from safetensors.torch import load_file, save_file

    path = _broken_copy(original, tmp_path / "missing")
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["vision_model.encoder.layers.1.attn.qkv.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    assert "vision_model.encoder.layers.1.attn.qkv.weight" in _load_error(path)


def test_a_mis_shaped_qkv_is_named(original, tmp_path, cache):
    from safetensors.torch import load_file, save_file

    path = _broken_copy(original, tmp_path / "shape")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["vision_model.encoder.layers.0.attn.qkv.weight"] = tensors["vision_model.encoder.layers.0.attn.qkv.weight"][:-2]
    save_file(tensors, str(path / "model.safetensors"))
    message = _load_error(path)
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in message and "model.safetensors" in message


def test_a_mis_shaped_language_tensor_fails_the_load(original, tmp_path, cache):
    """Caught by the loader's own check on what transformers loaded: nothing half-loads."""
    from safetensors.torch import load_file, save_file

    path = _broken_copy(original, tmp_path / "lm")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["language_model.model.layers.0.mlp.up_proj.weight"] = tensors["language_model.model.layers.0.mlp.up_proj.weight"][:, :-1].contiguous()
    save_file(tensors, str(path / "model.safetensors"))
    assert "up_proj" in _load_error(path)


def test_an_unknown_tensor_is_named(original, tmp_path, cache):
    from safetensors.torch import load_file, save_file

    path = _broken_copy(original, tmp_path / "unknown")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["vision_model.extra_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(path / "model.safetensors"))
    assert "vision_model.extra_head.weight" in _load_error(path)


@pytest.mark.parametrize(("field", "value"), [("ps_version", "v1"), ("use_llm_lora", 16)])
def test_a_config_field_that_cannot_be_mapped_is_named(original, tmp_path, cache, field, value):
    path = _broken_copy(original, tmp_path / field)
    config = json.loads((path / "config.json").read_text())
    config[field] = value
    (path / "config.json").write_text(json.dumps(config))
    message = _load_error(path)
    assert field in message and "config.json" in message


def test_a_missing_tokenizer_is_named(original, tmp_path, cache):
    path = _broken_copy(original, tmp_path / "notok")
    (path / "tokenizer.json").unlink()
    assert "tokenizer" in _load_error(path)


def test_an_hf_layout_missing_a_tensor_fails_the_load_by_name(tiny_dirs, tmp_path):
    """The same guard for the native layout: transformers would fill the gap with random values."""
    from safetensors.torch import load_file, save_file

    path = _broken_copy(tiny_dirs[INTERNVL_ID], tmp_path / "hf-missing")
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["multi_modal_projector.linear_2.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    assert "linear_2" in _load_error(path)
