"""Tiny random-weight checkpoints of the two real architectures, built in code.

No model hub is reachable from the machines this project runs on, so the demo and the tests
build small checkpoints that have the real layout on disk: a byte-level BPE tokenizer trained
here with the models' special tokens, a processor with the real image processors and chat
templates, Qwen2.5-VL with its language-model layers packed into AWQ GEMM format (the vision
tower left in fp16, listed in ``modules_to_not_convert: ["visual"]`` exactly as the real
checkpoint does), and InternVL3 in the transformers-native ``-hf`` layout. They load through the
same code path as a user's real directory. Their text is noise: the weights are random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BUILD_VERSION = "5"

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
# InternVL's markers are special tokens in the published tokenizer (stripped when decoding).
INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>"]

QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. Paris is the capital of France, Berlin of Germany,
Madrid of Spain, Rome of Italy, Lisbon of Portugal and Vienna of Austria. What is in this image?
A cat sits on a red sofa next to a window. The weather in London is cloudy with light rain.
You are a helpful assistant with access to tools. Name the european capitals. Hello, world!
{"name": "get_weather", "arguments": {"location": "London"}} function call result answer.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000. Olá, você está bem? Ça va très bien, merci. 日本語 中文 😀
"""


_RETRIEVAL_CORPUS = """
What is deep learning? Deep learning is a subset of machine learning that uses neural networks with
many layers. Deep learning enables computers to learn from large amounts of data. The weather is
nice today. I like pizza. The food was delicious and the waiter was friendly. Retrieval ranks the
documents that answer a query: embed the passages, rerank the candidates, then answer.
"""


def _tokenizer(extra: list[str], named: dict[str, str] | None = None, specials: list[str] | None = None) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,  # type: ignore[arg-type]  # tuples: strings fail in tokenizers' PyMerges
        unk_token=None,  # type: ignore[arg-type]
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=named or {},
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS}, replace_extra_special_tokens=False)
    tok.add_tokens(extra, special_tokens=False)
    if specials:
        tok.add_tokens(specials, special_tokens=True)
    tok.model_max_length = 32768
    return tok


def _randomise(model: Any, std: float, seed: int) -> None:
    """N(0, std) weights: a larger spread than the usual 0.02 so greedy output varies by prompt.

    Biases, norms and layer scales get random values too (not zeros and ones), so a loader that
    drops or swaps one of them changes the output and a test notices."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            else:  # norm weights, layer scales: their init value, each entry jittered by ~20%
                p.mul_(1 + torch.randn(p.shape, generator=gen) * 0.2)


def _shrink_special_rows(model: Any, token_ids: list[int]) -> None:
    """Make special tokens rare choices so the tiny model rarely stops at once."""
    import torch

    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for tid in token_ids:
            emb[tid] *= 0.05
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            for tid in token_ids:
                head.weight[tid] *= 0.05


def pack_awq(weight: Any, group_size: int) -> tuple[Any, Any, Any, Any]:
    """Quantize a [out, in] weight to AWQ GEMM format; also return the dequantized weight.

    qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16 [in/g, out]; eight
    4-bit values per int32 in the order [0, 2, 4, 6, 1, 3, 5, 7].
    """
    import torch

    out_f, in_f = weight.shape
    w = weight.detach().float().t().contiguous()  # [in, out]
    groups = w.reshape(in_f // group_size, group_size, out_f)
    w_min = groups.amin(dim=1)
    w_max = groups.amax(dim=1)
    scales = ((w_max - w_min).clamp(min=1e-5) / 15).half()
    zeros = torch.clamp(torch.round(-w_min / scales.float()), 0, 15)
    q = torch.clamp(torch.round(groups / scales.float()[:, None, :]) + zeros[:, None, :], 0, 15)
    dequant = ((q - zeros[:, None, :]) * scales.float()[:, None, :]).reshape(in_f, out_f).t().contiguous()
    q = q.reshape(in_f, out_f).to(torch.int32)
    order = [0, 2, 4, 6, 1, 3, 5, 7]

    def pack(values: Any) -> Any:
        rows, cols = values.shape
        grouped = values.to(torch.int32).reshape(rows, cols // 8, 8)
        packed = torch.zeros(rows, cols // 8, dtype=torch.int32)
        for i, src in enumerate(order):
            packed |= grouped[:, :, src] << (4 * i)
        return packed

    return pack(q), pack(zeros.to(torch.int32)), scales, dequant


FULL_QWEN_TEXT = {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936, "mrope_section": [16, 24, 24]}
FULL_QWEN_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31]}
# The published preprocessor bounds (vLLM applies them; a 1920x1080 image is 2,691 tokens).
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _tiny_qwen_config(tok: Any, vocab_size: int, full: bool = False) -> dict[str, Any]:
    """The published config.json's fields; the text model at head_dim 32 (hidden 64, 2 heads,
    1 KV head): the smallest head size vLLM's CPU attention runs."""
    ids = tok.convert_tokens_to_ids
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
        "vision_token_id": ids("<|vision_pad|>"),
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "max_position_embeddings": 128000,
        "max_window_layers": 2,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "vision_config": {
            "depth": 2,
            "hidden_act": "silu",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "in_chans": 3,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
    }
    if full:  # the real Qwen2.5-VL-3B dimensions (REFERENCE.md), random weights
        text = dict(FULL_QWEN_TEXT)
        config["rope_scaling"] = {"type": "mrope", "mrope_section": text.pop("mrope_section")}
        config.update(text, max_window_layers=36)
        config["vision_config"].update(FULL_QWEN_VISION)
    return config


AWQ_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def qwen_tokenizer_template() -> str:
    """The chat template Qwen2.5-VL's tokenizer_config.json carries (Qwen2.5's, with the hermes
    tools section), as published."""
    return (Path(__file__).with_name("templates") / "qwen25_tokenizer.jinja").read_text(encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(out: Path, tok: Any, chat_template: str | None, model_max_length: int) -> None:
    """tokenizer.json plus a tokenizer_config.json in the published (transformers 4) shape."""
    tok.save_pretrained(str(out))
    for name in ("chat_template.jinja", "processor_config.json", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    if chat_template is not None:
        config["chat_template"] = chat_template
    config["model_max_length"] = model_max_length
    _write_json(config_file, config)


def _write_qwen_files(out: Path, tensors: dict[str, Any], config: dict[str, Any], tok: Any) -> None:
    """The published Qwen2.5-VL file set: config, generation_config, weights (transformers-4 key
    names), tokenizer (its template has the tools section), preprocessor_config.json with the
    real pixel bounds, and the processor's image-aware chat_template.json (no tools)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": [config["eos_token_id"], config["bos_token_id"]],
            "pad_token_id": config["pad_token_id"],
            "do_sample": True,
            "repetition_penalty": 1.05,
            "temperature": 0.1,
            "top_k": 1,
            "top_p": 0.001,
        },
    )
    _write_tokenizer(out, tok, qwen_tokenizer_template(), 131072)
    _write_json(
        out / "preprocessor_config.json",
        {
            "min_pixels": QWEN_MIN_PIXELS,
            "max_pixels": QWEN_MAX_PIXELS,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
    _write_json(out / "chat_template.json", {"chat_template": QWEN_CHAT_TEMPLATE})


def build_qwen25_vl_awq(
    path: str | os.PathLike[str], *, seed: int = 0, group_size: int | None = None, full_size: bool = False
) -> Path:
    """A Qwen2.5-VL-Instruct-AWQ directory: AWQ GEMM 4-bit LM layers, fp16 vision tower.

    Tiny by default; ``full_size=True`` gives the real 3B dimensions (for GPU speed work). The
    tiny one also gets ``reference/``: its unquantized twin, the same model with every AWQ layer
    dequantized, in float32 and the same published file set, so that greedy tokens can be
    compared exactly (with vLLM too) and loading the packed layers checked against it.
    """
    group_size = group_size or (128 if full_size else 32)
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(QWEN_ADDED)
    vocab_size = ((len(tok) + 63) // 64) * 64
    raw_config = _tiny_qwen_config(tok, vocab_size, full=full_size)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**raw_config)).eval()
    _randomise(model, 0.2, seed)
    _shrink_special_rows(model, [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS + QWEN_ADDED])

    tensors: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        # The published checkpoint predates transformers 5: its keys are model.layers.*,
        # visual.*; transformers maps them onto model.language_model.* / model.visual.*.
        old = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        if old == "lm_head.weight":
            continue  # tied to the embeddings
        module, _, leaf = old.rpartition(".")
        if leaf == "weight" and module.split(".")[-1] in AWQ_LINEARS and old.startswith("model.layers."):
            qweight, qzeros, scales, dequant = pack_awq(tensor, group_size)
            tensors[f"{module}.qweight"] = qweight
            tensors[f"{module}.qzeros"] = qzeros
            tensors[f"{module}.scales"] = scales
            reference[old] = dequant
        else:
            tensors[old] = tensor.half().contiguous()
            reference[old] = tensor.half().float().contiguous()
    awq_config = dict(raw_config)
    awq_config["quantization_config"] = {
        "bits": 4,
        "group_size": group_size,
        "modules_to_not_convert": ["visual"],
        "quant_method": "awq",
        "version": "gemm",
        "zero_point": True,
    }
    _write_qwen_files(out, tensors, awq_config, tok)
    if not full_size:
        _write_qwen_files(out / "reference", reference, raw_config | {"torch_dtype": "float32"}, tok)
    return out


def build_internvl3(path: str | os.PathLike[str], *, seed: int = 1, full_size: bool = False) -> Path:
    """An InternVL3 directory in transformers' native (``-hf``) layout (tiny, or the real 1B shape).

    As published: the text model's dynamic RoPE (factor 2.0), vision attention biases, an untied
    lm_head, InternVL's markers as special tokens, and the files of the ``-hf`` repositories."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tok = _tokenizer(QWEN_ADDED, named, specials=INTERNVL_SPECIALS)
    tile = 448 if full_size else 56  # 56-px tiles keep the tiny model's image tokens few
    patch = 14
    image_seq_length = int((tile // patch) ** 2 * 0.25)
    vocab_size = ((len(tok) + 63) // 64) * 64
    vision = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096} if full_size else {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    text = {"vocab_size": 151674, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2} if full_size else {"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    config = InternVLConfig(
        vision_config={
            **vision,
            "image_size": [tile, tile],
            "patch_size": [patch, patch],
            "use_mean_pooling": True,
            "attention_bias": True,
        },
        text_config={
            "model_type": "qwen2",
            **text,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
            "tie_word_embeddings": False,
            "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        },
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    _randomise(model, 0.2, seed)
    _shrink_special_rows(model, [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS + QWEN_ADDED + INTERNVL_SPECIALS])
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(str(out))
    _write_tokenizer(out, tok, None, 32768)
    _write_json(
        out / "preprocessor_config.json",
        {
            "crop_size": None,
            "crop_to_patches": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": IMAGENET_MEAN,
            "image_processor_type": "GotOcr2ImageProcessorFast",
            "image_std": IMAGENET_STD,
            "max_patches": 12,
            "min_patches": 1,
            "processor_class": "InternVLProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": tile, "width": tile},
        },
    )
    _write_json(out / "processor_config.json", {"image_seq_length": image_seq_length, "processor_class": "InternVLProcessor"})
    _write_json(out / "chat_template.json", {"chat_template": INTERNVL_CHAT_TEMPLATE})
    return out


QWEN3_EMBEDDING_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}


def build_qwen3_embedding(path: str | os.PathLike[str], *, seed: int = 2) -> Path:
    """A Qwen3-Embedding directory as Qwen/Qwen3-Embedding-4B publishes it, tiny.

    config.json names ``Qwen3ForCausalLM``, but the weights are the base model's (no ``model.``
    prefix, no lm_head), as sentence-transformers saves them; the tokenizer's post-processor
    appends ``<|endoftext|>`` to every text (the token the model pools); modules.json,
    1_Pooling/config.json (last-token pooling) and config_sentence_transformers.json (the query
    prompt) are the sentence-transformers files. The hidden size, 512, lets the page's smallest
    ``dimensions`` values (256, 512) be asked for and the larger ones be refused."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import processors
    from transformers import Qwen3Config, Qwen3Model

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(QWEN_ADDED + ["<think>", "</think>"])
    end = "<|endoftext|>"
    end_id = tok.convert_tokens_to_ids(end)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {end}:0", pair=f"$A:0 {end}:0 $B:1 {end}:1", special_tokens=[(end, end_id)]
    )
    vocab_size = ((len(tok) + 63) // 64) * 64
    hidden = 512
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=end_id,
        eos_token_id=end_id,
        attention_bias=False,
    )
    torch.manual_seed(seed)
    model = Qwen3Model(config).eval()
    _randomise(model, 0.2, seed)
    tensors = {name: t.contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    raw = {  # the published config.json's fields (transformers 4 names), at the tiny sizes
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": end_id, "eos_token_id": end_id, "head_dim": config.head_dim, "hidden_act": "silu",
        "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": config.intermediate_size,
        "max_position_embeddings": 40960, "max_window_layers": 2, "model_type": "qwen3",
        "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
        "torch_dtype": "float32", "use_cache": True, "use_sliding_window": False, "vocab_size": vocab_size,
    }
    _write_json(out / "config.json", raw)
    _write_tokenizer(out, tok, None, 131072)
    _write_json(out / "config_sentence_transformers.json", {"prompts": QWEN3_EMBEDDING_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    return out


_XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's ids 0-3, as XLM-R keeps them


def _xlmr_tokenizer() -> Any:
    """A Unigram tokenizer shaped like XLM-RoBERTa's tokenizer.json: metaspace pieces, <s>=0,
    <pad>=1, </s>=2, <unk>=3, <mask> last, and the pair template ``<s> A </s></s> B </s>``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import XLMRobertaTokenizer

    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    uni.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    uni.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=700, special_tokens=_XLMR_SPECIALS, unk_token="<unk>", show_progress=False)
    uni.train_from_iterator([_CORPUS + _RETRIEVAL_CORPUS] * 4, trainer=trainer)
    uni.add_special_tokens(["<mask>"])
    bos, eos = uni.token_to_id("<s>"), uni.token_to_id("</s>")
    uni.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return XLMRobertaTokenizer(
        tokenizer_object=uni, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )


def build_bge_reranker(path: str | os.PathLike[str], *, seed: int = 3) -> Path:
    """A bge-reranker-v2-m3 directory (BAAI/bge-reranker-v2-m3's files), tiny:
    ``XLMRobertaForSequenceClassification`` with one label (the relevance logit), XLM-R's 8,194
    positions (padding offset 2), one token type, and its tokenizer files."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=8194,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        id2label={0: "LABEL_0"},  # one label
        label2id={"LABEL_0": 0},
        architectures=["XLMRobertaForSequenceClassification"],
    )
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config).eval()
    _randomise(model, 0.2, seed)
    with torch.no_grad():  # relevance logits of order one, so scores spread over (0, 1)
        model.classifier.out_proj.weight.mul_(0.5)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    for name in ("chat_template.jinja",):
        (out / name).unlink(missing_ok=True)
    config_file = out / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8"))
    tok_config["model_max_length"] = 8192
    _write_json(config_file, tok_config)
    return out


def default_cache_dir() -> Path:
    root = os.environ.get("AZION_AI_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "azion_ai" / f"tiny-v{BUILD_VERSION}"


def ensure_tiny_checkpoints(cache_dir: str | os.PathLike[str] | None = None, *, full_size: bool = False) -> dict[str, Path]:
    """Build (once, then reuse) the checkpoints (tiny, or the real shapes of the two chat models);
    model id -> directory."""
    from .._models import BGE_RERANKER_V2_M3, INTERNVL3_1B, QWEN3_EMBEDDING_4B, QWEN25_VL_3B_AWQ
    from ._loading import import_torch

    import_torch()  # the local extra's check, and (AZION_AI_QUIET) torch's loggers quieted first

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    builders: dict[str, Any] = {
        QWEN25_VL_3B_AWQ: lambda out: build_qwen25_vl_awq(out, full_size=full_size),
        INTERNVL3_1B: lambda out: build_internvl3(out, full_size=full_size),
    }
    if not full_size:  # the retrieval models are tiny only
        builders[QWEN3_EMBEDDING_4B] = build_qwen3_embedding
        builders[BGE_RERANKER_V2_M3] = build_bge_reranker
    dirs = {model_id: root / model_id for model_id in builders}
    for model_id, directory in dirs.items():
        marker = directory / ".built"
        if marker.exists() and marker.read_text() == BUILD_VERSION:
            continue
        tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
        builders[model_id](tmp)
        (tmp / ".built").write_text(BUILD_VERSION)
        if directory.exists():
            import shutil

            shutil.rmtree(directory)
        tmp.rename(directory)
    return dirs
