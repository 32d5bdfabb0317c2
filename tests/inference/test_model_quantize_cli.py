"""Pre-quantized checkpoints (round trip) and the `cxr-node model` commands."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.cli import main
from inference.chat import Turn
from inference.model import ModelLoadError, load_chat_model
from inference.model.loading import weights_sha256
from inference.model.quantization import quantized_module_names
from inference.model.quantize import quantize_checkpoint


def test_quantize_round_trip(qwen_demo_dir: Path, tmp_path: Path) -> None:
    dst = quantize_checkpoint(qwen_demo_dir, tmp_path / "q4")
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    marker = json.loads((dst / "cxr_node_model.json").read_text())
    assert marker["demo"] is True and marker["quantized_from"]["weights_sha256"] == weights_sha256(qwen_demo_dir)
    assert (dst / "model.safetensors").stat().st_size < (qwen_demo_dir / "model.safetensors").stat().st_size
    loaded = load_chat_model(dst, quantization="none")  # the checkpoint's own quantization wins
    names = quantized_module_names(loaded.model)
    assert names["linear4bit"] and all(n.startswith("model.language_model.") for n in names["linear4bit"])
    assert "lm_head" in names["linear"] and any(n.startswith("model.visual.") for n in names["linear"])
    assert loaded.info.quantization == "nf4" and loaded.info.demo_model
    fresh = load_chat_model(qwen_demo_dir, quantization="nf4")
    question = Turn("user", "Is there a pneumothorax?")
    assert loaded.answer([], question, 5).text == fresh.answer([], question, 5).text  # same NF4 weights
    with pytest.raises(ModelLoadError, match="already quantized"):
        quantize_checkpoint(dst, tmp_path / "again")
    with pytest.raises(FileExistsError):
        quantize_checkpoint(qwen_demo_dir, dst)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `cxr-node ARGS` in-process (the console script calls the same main)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_demo_quantize_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "model", "demo", str(tmp_path / "llava"), "--family", "llava")
    assert code == 0, err
    assert "UNTRAINED" in out and (tmp_path / "llava" / "cxr_node_model.json").is_file()
    code, out, err = _cli(capsys, "model", "quantize", str(tmp_path / "llava"), str(tmp_path / "llava4"),
                          "--quantize-vision")
    assert code == 0, err
    code, out, err = _cli(capsys, "model", "info", str(tmp_path / "llava4"))
    assert code == 0, err
    data = json.loads(out)
    assert (data["profile"], data["saved_quantization"], data["demo_model"]) == ("llava", "nf4", True)
    loaded = load_chat_model(tmp_path / "llava4")
    assert any(n.startswith("model.vision_tower.") for n in quantized_module_names(loaded.model)["linear4bit"])
    code, out, err = _cli(capsys, "model", "info", str(tmp_path / "nothing"))
    assert code == 2 and "local model directory" in err
    code, out, err = _cli(capsys, "model", "quantize", str(tmp_path / "llava"), str(tmp_path / "llava4"))
    assert code == 2 and "not empty" in err


def test_console_script_starts() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from dicomnode.cli import main; "
                           "sys.exit(main(['model', '--help']))"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "quantize" in proc.stdout
