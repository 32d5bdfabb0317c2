"""The openai backend against a real vLLM CPU engine (``.cache/vllm-venv``, built by scripts/vllm_venv.sh from
scripts/bootstrap.sh): a study reasoned end to end, token-id parity with the transformers backend, and constrained
choices through ``structured_outputs``. The engine serves the head-size-32 demo model (CPU attention needs >= 32)."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from dicomnode.peers.ports import free_port
from inference.chat import Turn
from inference.constraints import constraint_for
from inference.parsing import parse_answer
from inference.record import QType

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = Path(os.environ.get("CXR_VLLM_VENV", ROOT / ".cache" / "vllm-venv")) / "bin" / "python"
START_TIMEOUT = 900  # seconds; ~42 s on an idle 2-core machine, much longer under load

pytestmark = [pytest.mark.timeout(1800),
              pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no vLLM venv: run scripts/vllm_venv.sh")]


# An engine already running (started with this file's arguments on a demo model built with size="engine"):
# CXR_VLLM_URL and CXR_VLLM_MODEL_DIR reuse it instead of starting one (saves minutes while developing).
EXTERNAL_URL = os.environ.get("CXR_VLLM_URL")
EXTERNAL_DIR = os.environ.get("CXR_VLLM_MODEL_DIR")


@pytest.fixture(scope="module")
def engine_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inference.model.demo import build_demo_model

    if EXTERNAL_URL and EXTERNAL_DIR:
        return Path(EXTERNAL_DIR)
    return build_demo_model(tmp_path_factory.mktemp("engine_model") / "demo", size="engine", seed=0)


@pytest.fixture(scope="module")
def vllm_url(engine_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    if EXTERNAL_URL and EXTERNAL_DIR:
        yield EXTERNAL_URL
        return
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": ""}
    cmd = [str(VENV_PYTHON), str(ROOT / "scripts" / "vllm_server.py"), "--model", str(engine_model_dir),
           "--enforce-eager", "--max-model-len", "4096", "--dtype", "float32", "--host", "127.0.0.1",
           "--port", str(port), "--seed", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as r:
                    if json.loads(r.read())["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not start in {START_TIMEOUT} s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def remote(vllm_url: str):
    from inference.model.remote import connect

    return connect(vllm_url, max_pixels=168 * 168, min_pixels=56 * 56)


def test_study_through_the_engine(remote, vllm_url: str) -> None:
    from dicomnode.synthetic import StudySpec, make_study
    from inference.flow import run_flow

    assert remote.info.engine_version and remote.info.demo_model  # the served directory carries the demo marker
    record = run_flow(remote, make_study(StudySpec(views=("PA",), rows=256, columns=208)), max_new_tokens=12)
    assert record.provenance.engine_url == vllm_url and record.provenance.model_name == remote.name
    assert record.provenance.engine_version == remote.info.engine_version and record.provenance.demo_model
    questions = [q for s in record.stages for q in s.questions]
    closed = [q for q in questions if q.qtype != QType.OPEN]
    assert closed and all(q.parsed.ok for q in closed), [(q.id, q.raw_answer, q.parsed.error) for q in closed
                                                          if not q.parsed.ok]
    assert not any(s.status == "failed" for s in record.stages)
    assert record.provenance.generated_tokens > 0


def test_token_parity_with_transformers_backend(remote, engine_model_dir: Path) -> None:
    from inference.model import load_chat_model

    local = load_chat_model(engine_model_dir, quantization="none", dtype="float32", cache="none")
    remote.return_token_ids = True
    image = Image.new("L", (300, 360), 70)
    first = Turn("user", "Here is the current X-ray image: <image> . Which view is the X-ray image?", (image,))
    history: list[Turn] = []
    for question in (first, Turn("user", "Describe the lungs.")):
        ours = local.answer(history, question, 16)
        theirs = remote.answer(history, question, 16)
        assert remote.last_response["prompt_token_ids"] == local.last_prompt_ids  # same prompt, image tokens too
        assert theirs.token_ids == ours.token_ids and theirs.text == ours.text
        assert theirs.model_image_sizes == ours.model_image_sizes
        history += [question, Turn("assistant", ours.text)]


def test_constrained_choices_via_structured_outputs(remote) -> None:
    image = Image.new("L", (300, 360), 70)
    first = Turn("user", "Here is the current X-ray image: <image> . Which view is the X-ray image?", (image,))
    history = [first, Turn("assistant", "PA view.")]
    options = ["Lines.", "Tubes.", "Nothing."]
    single = constraint_for(QType.SINGLE_CHOICE, options)
    answer = remote.answer(history, Turn("user", "Which is seen? [ A. Lines; B. Tubes; C. Nothing ]."), 24, single)
    assert answer.text in single.choices
    yes_no = constraint_for(QType.YES_NO)
    answer = remote.answer(history, Turn("user", "Is there a pneumothorax?"), 12, yes_no)
    assert parse_answer(answer.text, QType.YES_NO).ok, answer.text
    multi = constraint_for(QType.MULTI_CHOICE, ["1. Diaphragm.", "2. Lungs."])
    answer = remote.answer(history, Turn("user", "Where? [ 1. Diaphragm; 2. Lungs ]."), 24, multi)
    assert parse_answer(answer.text, QType.MULTI_CHOICE, ["1. Diaphragm.", "2. Lungs."]).ok, answer.text
