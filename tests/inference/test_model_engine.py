"""The engine: prefix KV-cache answers equal a full recompute (fp32), token accounting, image safety, sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.chat import BoxConvention, ChatModel, Generation, Turn
from inference.model import load_chat_model
from inference.model.engine import LoadedModel

QUESTIONS = [
    "Which view is the X-ray image? Here is the current X-ray image: <image> .",
    "Is there any evidence of pathology in the X-ray image? Answer with yes or no only.",
    "Is there pleural effusion? A. No; B. Yes.",
    "Reference X-ray: <image> . What changed compared to the previous study?",
    "Generate the impression section of the report.",
]


def _image(seed: int, size: tuple[int, int] = (200, 160)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0])) * 255).astype("uint8")).convert("RGB")


def _conversation(model: LoadedModel, images: list[Image.Image], max_new: int = 6
                  ) -> list[tuple[Generation, torch.Tensor]]:
    history: list[Turn] = []
    results = []
    pending = list(images)
    for text in QUESTIONS:
        turn_images = tuple(pending.pop(0) for _ in range(text.count("<image>")))
        question = Turn("user", text, turn_images)
        gen = model.answer(history, question, max_new)
        assert model.last_prompt_logits is not None
        results.append((gen, model.last_prompt_logits.clone()))
        history += [question, Turn("assistant", gen.text)]
    return results


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "qwen2_vl"])
def test_prefix_cache_equals_full_recompute_fp32(family: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue("qwen2_vl_demo_dir") if family == "qwen2_vl" else \
        request.getfixturevalue("demo_model_dirs")[family]
    images = [_image(1), _image(2)]
    cached_model = load_chat_model(model_dir, quantization="none", dtype="float32", cache="prefix")
    naive_model = load_chat_model(model_dir, quantization="none", dtype="float32", cache="none")
    assert cached_model.info.profile == family
    as_protocol: ChatModel = cached_model  # LoadedModel satisfies the contract (checked by type checkers)
    assert as_protocol.box_convention in BoxConvention
    cached = _conversation(cached_model, images)
    naive = _conversation(naive_model, images)
    for (c, c_logits), (n, n_logits) in zip(cached, naive, strict=False):
        assert c.text == n.text
        assert torch.allclose(c_logits, n_logits, atol=1e-4, rtol=1e-4), float((c_logits - n_logits).abs().max())
        assert n.cached_tokens == 0
        assert c.prompt_tokens + c.cached_tokens == n.prompt_tokens  # same prompt, split into reused + computed
        assert c.generated_tokens == n.generated_tokens >= 1
    assert cached[0][0].cached_tokens == 0
    assert all(c.cached_tokens > 0 for c, _ in cached[1:])
    computed = sum(c.prompt_tokens for c, _ in cached)
    assert computed < sum(n.prompt_tokens for n, _ in naive) / 2
    # the model is input-sensitive, so equal logits above are not vacuous
    assert not torch.allclose(cached[0][1], cached[1][1], atol=1e-3)


def test_nf4_cached_conversation_runs_and_accounts(qwen_demo_dir: Path) -> None:
    model = load_chat_model(qwen_demo_dir, quantization="nf4", cache="prefix")
    results = _conversation(model, [_image(3), _image(4)])
    assert [g.cached_tokens > 0 for g, _ in results] == [False, True, True, True, True]
    sizes = results[-1][0].model_image_sizes
    assert len(sizes) == 2 and all(w % 28 == 0 and h % 28 == 0 for w, h in sizes)
    # known before the model is asked: the box grammar of a question that brings its image in is bounded by it
    assert tuple(model.model_image_size(img) for img in (_image(3), _image(4))) == sizes
    assert model.box_convention is BoxConvention.RESIZED_PIXELS and model.answer_wrapper is None


def test_different_image_same_size_is_not_reused(qwen_demo_dir: Path) -> None:
    cached = load_chat_model(qwen_demo_dir, quantization="none", dtype="float32")
    naive = load_chat_model(qwen_demo_dir, quantization="none", dtype="float32", cache="none")
    q = QUESTIONS[0]
    cached.answer([], Turn("user", q, (_image(5),)), 3)
    other = Turn("user", q, (_image(6),))  # same size, so the same token ids: only pixels differ
    g = cached.answer([], other, 3)
    ref = naive.answer([], other, 3)
    (w, h), = g.model_image_sizes
    image_tokens = w * h // (28 * 28)
    assert g.cached_tokens > 0 and g.cached_tokens + g.prompt_tokens == ref.prompt_tokens
    assert g.prompt_tokens > image_tokens  # the text before the image is reused, the whole image recomputed
    assert g.text == ref.text
    assert torch.allclose(cached.last_prompt_logits, naive.last_prompt_logits, atol=1e-4)


def test_new_study_and_edited_history_reuse_only_the_common_prefix(llava_demo_dir: Path) -> None:
    model = load_chat_model(llava_demo_dir, quantization="none", dtype="float32")
    naive = load_chat_model(llava_demo_dir, quantization="none", dtype="float32", cache="none")
    q1 = Turn("user", QUESTIONS[0], (_image(7),))
    g1 = model.answer([], q1, 4)
    edited = [q1, Turn("assistant", "Postero-anterior view.")]  # not what the model said
    g2 = model.answer(edited, Turn("user", QUESTIONS[1]), 4)
    ref = naive.answer(edited, Turn("user", QUESTIONS[1]), 4)
    assert g2.text == ref.text and g2.cached_tokens + g2.prompt_tokens == ref.prompt_tokens
    assert g1.cached_tokens == 0 and g2.cached_tokens > 0
    model.reset_cache()
    assert model.answer(edited, Turn("user", QUESTIONS[1]), 4).cached_tokens == 0


def test_special_tokens_in_text_cannot_inject_images(demo_model_dirs: dict[str, Path]) -> None:
    for family, token in (("qwen2_5_vl", "<|image_pad|>"), ("llava", "<image>")):
        model = load_chat_model(demo_model_dirs[family], quantization="none", dtype="float32")
        q1 = Turn("user", QUESTIONS[0], (_image(8),))
        history = [q1, Turn("assistant", f"odd {token} answer <|im_end|></s>")]
        g = model.answer(history, Turn("user", "Anything else?"), 3)
        assert g.generated_tokens >= 1


def test_bad_turns_are_refused(qwen_demo_dir: Path) -> None:
    model = load_chat_model(qwen_demo_dir, quantization="none", dtype="float32")
    with pytest.raises(ValueError, match="placeholders"):
        model.answer([], Turn("user", "<image> and <image>", (_image(9),)), 3)
    with pytest.raises(ValueError, match="user turn"):
        model.answer([], Turn("assistant", "hi"), 3)
    g = model.answer([], Turn("user", "No placeholder here.", (_image(9),)), 2)  # image placed before the text
    assert len(g.model_image_sizes) == 1
