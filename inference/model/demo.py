"""Build an untrained random-weight vision-language model fully offline (tests, demo, benchmarks).

A byte-level BPE tokenizer is trained on a small built-in corpus, PIL image processors are configured, a small
config is instantiated with random weights and everything is saved with ``save_pretrained``. A marker file
(``cxr_node_model.json``, ``"demo": true``) tells the loader, and through it every output, that this is an
untrained demo model whose answers are meaningless.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

MARKER_FILE = "cxr_node_model.json"
DEMO_MODEL_NAME = "cxr-node demo (untrained)"

Family = Literal["qwen2_5_vl", "qwen2_vl", "llava"]
Size = Literal["tiny", "medium", "qwen2_5_vl_3b_shape"]
FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen2_vl", "llava")
SIZES: tuple[str, ...] = ("tiny", "engine", "medium", "qwen2_5_vl_3b_shape")

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}SYSTEM: {% elif message['role'] == 'user' %}"
    "USER: {% else %}ASSISTANT: {% endif %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Text decoder / vision encoder shapes per size. "qwen2_5_vl_3b_shape" is the real Qwen2.5-VL-3B (3.755 B params).
QWEN_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, inter=128, mrope=[2, 3, 3],
                 v_depth=2, v_hidden=32, v_heads=2, v_inter=64, fullatt=[1], window=56,
                 max_pixels=168 * 168, tie=False, vocab_size=None, init=0.2),
    # "tiny" with head size 32: vLLM's CPU attention takes head sizes 32..512 only (16 kills the engine)
    "engine": dict(vocab=512, hidden=64, layers=2, heads=2, kv_heads=1, inter=128, mrope=[4, 6, 6],
                   v_depth=2, v_hidden=32, v_heads=2, v_inter=64, fullatt=[1], window=56,
                   max_pixels=168 * 168, tie=False, vocab_size=None, init=0.2),
    "medium": dict(vocab=2048, hidden=512, layers=12, heads=8, kv_heads=2, inter=1536, mrope=[8, 12, 12],
                   v_depth=8, v_hidden=256, v_heads=4, v_inter=1024, fullatt=[3, 7], window=112,
                   max_pixels=448 * 448, tie=False, vocab_size=None, init=0.02),
    "qwen2_5_vl_3b_shape": dict(vocab=2048, hidden=2048, layers=36, heads=16, kv_heads=2, inter=11008,
                                mrope=[16, 24, 24], v_depth=32, v_hidden=1280, v_heads=16, v_inter=3420,
                                fullatt=[7, 15, 23, 31], window=112, max_pixels=448 * 448, tie=True,
                                vocab_size=151936, init=0.02),
}
LLAVA_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, inter=128,
                 v_hidden=32, v_layers=2, v_heads=2, v_inter=64, image_size=56, init=0.2),
    "medium": dict(vocab=2048, hidden=512, layers=12, heads=8, kv_heads=2, inter=1536,
                   v_hidden=256, v_layers=8, v_heads=4, v_inter=1024, image_size=224, init=0.02),
}


def _corpus() -> list[str]:
    text = resources.files("inference.model").joinpath("demo_corpus.yaml").read_text(encoding="utf-8")
    return [str(line) for line in yaml.safe_load(text)["lines"]]


def build_tokenizer(special: list[str], vocab_size: int, **kwargs: Any) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus (deterministic, a second or less)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus() * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _token_ids(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> dict[str, int]:
    """Each token's id (``convert_tokens_to_ids`` of a list is a list; its annotation does not say so)."""
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert isinstance(ids, list)
    return dict(zip(tokens, ids, strict=True))


def _qwen(out: Path, size: str, seed: int, qwen2: bool = False) -> dict[str, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from inference.model.processors import Qwen2_5_VLImageOnlyProcessor, Qwen2VLImageOnlyProcessor

    s = QWEN_SIZES[size]
    tokenizer = build_tokenizer(QWEN_SPECIAL, s["vocab"], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = _token_ids(tokenizer, QWEN_SPECIAL)
    vocab_size = s["vocab_size"] or len(tokenizer)
    text_cfg = dict(vocab_size=vocab_size, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                    num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], intermediate_size=s["inter"],
                    max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                     "mrope_section": s["mrope"]},
                    bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                    tie_word_embeddings=s["tie"], initializer_range=s["init"])
    vision_cfg = dict(initializer_range=s["init"], depth=s["v_depth"], hidden_size=s["v_hidden"],
                      num_heads=s["v_heads"],
                      intermediate_size=s["v_inter"], out_hidden_size=s["hidden"], patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=s["window"],
                      fullatt_block_indexes=s["fullatt"])
    config_cls: type[Qwen2_5_VLConfig | Qwen2VLConfig] = Qwen2_5_VLConfig
    model_cls: type[Qwen2_5_VLForConditionalGeneration | Qwen2VLForConditionalGeneration]
    model_cls = Qwen2_5_VLForConditionalGeneration
    processor_cls: type[Qwen2_5_VLImageOnlyProcessor | Qwen2VLImageOnlyProcessor] = Qwen2_5_VLImageOnlyProcessor
    if qwen2:  # Qwen2-VL: a ViT with embed_dim / mlp_ratio instead of the windowed SwiGLU tower
        vision_cfg = dict(initializer_range=s["init"], depth=s["v_depth"], embed_dim=s["v_hidden"],
                          num_heads=s["v_heads"], mlp_ratio=4, hidden_size=s["hidden"], patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2)
        config_cls, model_cls, processor_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageOnlyProcessor
    # PreTrainedConfig keeps keyword arguments its dataclass signature does not list (config.json has them)
    config = config_cls(text_config=text_cfg, vision_config=vision_cfg, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=s["tie"],
                        initializer_range=s["init"])  # type: ignore[call-arg]
    torch.manual_seed(seed)
    # The 3B shape is built directly in bf16 (7 GB) rather than fp32 (15 GB) then converted.
    dtype = torch.bfloat16 if size == "qwen2_5_vl_3b_shape" else torch.float32
    model = model_cls._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=s["max_pixels"],
                                               size={"shortest_edge": 56 * 56, "longest_edge": s["max_pixels"]})
    processor = processor_cls(image_processor, tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # the stock class name: machines with torchvision (GPU deployments) load the stock processor
    _set_processor_class(out, "Qwen2VLProcessor" if qwen2 else "Qwen2_5_VLProcessor")
    return {"parameters": sum(p.numel() for p in model.parameters())}


def _set_processor_class(out: Path, name: str) -> None:
    path = out / "processor_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["processor_class"] = name
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _llava(out: Path, size: str, seed: int) -> dict[str, Any]:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if size not in LLAVA_SIZES:
        raise ValueError(f"llava demo sizes: {', '.join(LLAVA_SIZES)}")
    s = LLAVA_SIZES[size]
    tokenizer = build_tokenizer(LLAVA_SPECIAL, s["vocab"], unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>")
    # a settable property; mypy sees it read-only because transformers defines its setter apart from the getter
    tokenizer.add_bos_token = False  # type: ignore[misc]
    ids = _token_ids(tokenizer, LLAVA_SPECIAL)
    text_cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                           num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                           intermediate_size=s["inter"], max_position_embeddings=8192, bos_token_id=ids["<s>"],
                           eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"], initializer_range=s["init"])
    vision_cfg = CLIPVisionConfig(hidden_size=s["v_hidden"], num_hidden_layers=s["v_layers"],
                                  num_attention_heads=s["v_heads"], intermediate_size=s["v_inter"],
                                  image_size=s["image_size"], patch_size=14, projection_dim=s["v_hidden"],
                                  initializer_range=s["init"])
    config = LlavaConfig(vision_config=vision_cfg, text_config=text_cfg, image_token_index=ids["<image>"],
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu",
                         initializer_range=s["init"])  # type: ignore[call-arg]  # kept as for the Qwen config
    torch.manual_seed(seed)
    # transformers wraps ``to`` with functools.wraps(Module.to), which typeshed types as taking ``self`` first
    model = LlavaForConditionalGeneration(config).to(torch.float32)  # type: ignore[arg-type]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    px = s["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def build_demo_model(out_dir: str | Path, family: str = "qwen2_5_vl", size: str = "tiny", seed: int = 0) -> Path:
    """Build and save an untrained demo VLM of ``family`` and ``size`` into ``out_dir``; return the directory."""
    if family not in FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family == "llava":
        info = _llava(out, size, seed)
    else:
        info = _qwen(out, size, seed, qwen2=family == "qwen2_vl")
    marker = {"demo": True, "name": DEMO_MODEL_NAME, "version": f"{family}-{size}-seed{seed}", "family": family,
              "size": size, "seed": seed, "parameters": info["parameters"],
              "note": "untrained random weights; every answer is meaningless"}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out
