"""Demo build + loading: NF4 really quantizes the decoder only, local-only loading, profiles, device, provenance."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inference.chat import BoxConvention
from inference.model import ModelLoadError, load_chat_model, resolve_device
from inference.model.loading import HASH_SIDECAR, profile_for, weights_sha256
from inference.model.profiles import ProfileError, load_profiles, select_profile
from inference.model.quantization import quantized_module_names

VISION = {"qwen2_5_vl": ("model.visual",), "qwen2_vl": ("model.visual",),
          "llava": ("model.vision_tower", "model.multi_modal_projector")}


def _model_dir(family: str, request: pytest.FixtureRequest) -> Path:
    if family == "qwen2_vl":
        return request.getfixturevalue("qwen2_vl_demo_dir")
    return request.getfixturevalue("demo_model_dirs")[family]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "qwen2_vl"])
def test_nf4_quantizes_decoder_keeps_vision_and_lm_head(family: str, request: pytest.FixtureRequest) -> None:
    import bitsandbytes as bnb

    model_dir = _model_dir(family, request)
    loaded = load_chat_model(model_dir, quantization="nf4")
    names = quantized_module_names(loaded.model)
    assert names["linear4bit"], "no Linear4bit at all"
    assert all(n.startswith("model.language_model.") for n in names["linear4bit"])
    plain = names["linear"]
    assert "lm_head" in plain
    for prefix in VISION[family]:
        assert any(n.startswith(prefix) for n in plain), f"{prefix} has no plain Linear"
        assert not any(n.startswith(prefix) for n in names["linear4bit"])
    decoder = [n for n, m in loaded.model.named_modules()
               if n.startswith("model.language_model.") and isinstance(m, torch.nn.Linear)]
    assert decoder and all(n in names["linear4bit"] for n in decoder)
    weight = loaded.model.get_submodule(names["linear4bit"][0]).weight
    assert isinstance(weight, bnb.nn.Params4bit) and weight.quant_state.quant_type == "nf4"
    assert weight.quant_state.nested  # double quantization
    info = loaded.info
    assert (info.profile, info.quantization, info.device, info.demo_model) == (family, "nf4", "cpu", True)
    assert info.dtype == "bfloat16" and info.transformers_version and "demo" in info.model_name
    assert info.weights_sha256 == weights_sha256(model_dir)
    assert set(info.provenance_fields()) >= {"model_dir", "weights_sha256", "profile", "quantization", "demo_model"}


def test_quantize_vision_too_when_skip_list_says_so(qwen_demo_dir: Path) -> None:
    loaded = load_chat_model(qwen_demo_dir, quantization="nf4", skip_modules=["lm_head"])
    names = quantized_module_names(loaded.model)
    assert any(n.startswith("model.visual.") for n in names["linear4bit"])
    assert names["linear"] == ["lm_head"]


def test_fp4_int8_and_none(qwen_demo_dir: Path) -> None:
    fp4 = load_chat_model(qwen_demo_dir, quantization="fp4")
    w = fp4.model.get_submodule(quantized_module_names(fp4.model)["linear4bit"][0]).weight
    assert w.quant_state.quant_type == "fp4"
    int8 = quantized_module_names(load_chat_model(qwen_demo_dir, quantization="int8").model)
    assert int8["linear8bit"] and all(n.startswith("model.language_model.") for n in int8["linear8bit"])
    assert not int8["linear4bit"] and "lm_head" in int8["linear"]
    plain = load_chat_model(qwen_demo_dir, quantization="none", dtype="float32")
    names = quantized_module_names(plain.model)
    assert not names["linear4bit"] and plain.info.quantization == "none" and plain.info.dtype == "float32"
    with pytest.raises(ValueError, match="unknown quantization"):
        load_chat_model(qwen_demo_dir, quantization="int3")


def test_loads_only_from_a_local_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local"):
        load_chat_model("Qwen/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_chat_model(tmp_path)


def test_incomplete_directory_is_refused(qwen_demo_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(qwen_demo_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError):
        load_chat_model(broken, quantization="none")


def test_profile_selection_from_config_and_override(qwen_demo_dir: Path, qwen2_vl_demo_dir: Path,
                                                    tmp_path: Path) -> None:
    profiles = load_profiles()
    assert {"qwen2_5_vl", "qwen2_vl", "llava", "gemma3", "nv_reason_cxr"} <= set(profiles)
    assert select_profile({"model_type": "qwen2_vl"}).box_convention is BoxConvention.PER_MILLE
    assert select_profile({"model_type": "qwen2_5_vl"}).box_convention is BoxConvention.RESIZED_PIXELS
    assert select_profile({"model_type": "gemma3"}).name == "gemma3"
    assert profile_for(qwen2_vl_demo_dir).box_convention is BoxConvention.PER_MILLE
    assert select_profile({"model_type": "x", "architectures": ["LlavaForConditionalGeneration"]}).name == "llava"
    nv = select_profile({"model_type": "qwen2_5_vl"}, override="nv_reason_cxr")
    assert nv.answer_wrapper == "think_answer" and nv.system_prompt.startswith("You are a helpful radiology")
    with pytest.raises(ProfileError, match="no model profile"):
        select_profile({"model_type": "bert", "architectures": ["BertModel"]})
    with pytest.raises(ProfileError, match="unknown model profile"):
        select_profile({"model_type": "qwen2_5_vl"}, override="nope")
    assert profile_for(qwen_demo_dir).name == "qwen2_5_vl"
    copy = tmp_path / "nv"
    shutil.copytree(qwen_demo_dir, copy)
    marker = json.loads((copy / "cxr_node_model.json").read_text())
    (copy / "cxr_node_model.json").write_text(json.dumps({**marker, "profile": "nv_reason_cxr"}))
    loaded = load_chat_model(copy, quantization="none")
    assert loaded.info.profile == "nv_reason_cxr" and loaded.answer_wrapper == "think_answer"
    assert load_chat_model(copy, quantization="none", profile="qwen2_5_vl").answer_wrapper is None


def test_malformed_profile_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("profiles:\n  x:\n    box_convention: furlongs\n    skip_modules: [lm_head]\n")
    with pytest.raises(ProfileError, match="'x'"):
        load_profiles(bad)


def test_device_auto_picks_cpu_without_cuda() -> None:
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda")


def test_weights_hash_is_cached_and_follows_changes(llava_demo_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(llava_demo_dir, copy)
    first = weights_sha256(copy)
    assert (copy / HASH_SIDECAR).is_file()
    sidecar = json.loads((copy / HASH_SIDECAR).read_text())
    assert sidecar["sha256"] == first and "model.safetensors" in sidecar["files"]
    assert weights_sha256(copy) == first
    with (copy / "model.safetensors").open("ab") as fh:
        fh.write(b"\0")
    assert weights_sha256(copy) != first


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_cuda_path_nf4(family: str, demo_model_dirs: dict[str, Path]) -> None:
    from PIL import Image

    from inference.chat import Turn

    loaded = load_chat_model(demo_model_dirs[family], quantization="nf4", device="auto")
    assert loaded.info.device == "cuda"
    assert next(p for p in loaded.model.parameters()).device.type == "cuda"
    image = Image.new("RGB", (200, 160), (90, 90, 90))
    q1 = Turn("user", "Here is the current X-ray image: <image> . Which view?", (image,))
    g1 = loaded.answer([], q1, 6)
    g2 = loaded.answer([q1, Turn("assistant", g1.text)], Turn("user", "Any effusion?"), 6)
    assert g2.cached_tokens > 0 and g2.generated_tokens >= 1
