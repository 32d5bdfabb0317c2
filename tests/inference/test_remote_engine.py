"""The openai backend against a real vLLM CPU engine (the session's ``vllm_engine``, tests/inference/engine_fixtures.py,
started once from the venv scripts/vllm_venv.sh builds): a study reasoned end to end, token-id parity with the
transformers backend, and constrained choices through ``structured_outputs``. The engine serves the head-size-32
demo model (CPU attention needs >= 32)."""
from __future__ import annotations

from pathlib import Path

import pytest
from engine_fixtures import ENGINE_TEST_TIMEOUT
from PIL import Image

from inference.chat import Turn
from inference.constraints import constraint_for
from inference.parsing import parse_answer
from inference.record import QType

pytestmark = pytest.mark.timeout(ENGINE_TEST_TIMEOUT)  # the first engine test waits for the engine to start


@pytest.fixture(scope="module")
def vllm_url(vllm_engine) -> str:
    return vllm_engine.url


@pytest.fixture(scope="module")
def remote(vllm_url: str):
    from inference.model.remote import connect

    return connect(vllm_url, max_pixels=168 * 168, min_pixels=56 * 56)


def test_study_through_the_engine(remote, vllm_url: str) -> None:
    from dicomnode.demo.synthetic import StudySpec, make_study
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
        assert [remote.model_image_size(image)] == [local.model_image_size(image)] == list(ours.model_image_sizes)
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


def test_parallel_within_stage_goes_to_the_engine_together_and_matches_the_local_backend(
        remote, engine_model_dir: Path) -> None:
    """The engine gets a stage's questions at once; the transformers backend asks them one after the other after
    the same history: with the same weights both give the same answers (unconstrained: pure decoding parity)."""
    from dicomnode.demo.synthetic import StudySpec, make_study
    from inference.flow import run_flow
    from inference.model import load_chat_model

    study = make_study(StudySpec(views=("PA",), rows=256, columns=208))
    remote.peak_in_flight = 0
    theirs = run_flow(remote, study, max_new_tokens=6, parallel_within_stage=True, constrain=False)
    assert remote.peak_in_flight > 1 and theirs.provenance.parallel_within_stage
    local = load_chat_model(engine_model_dir, quantization="none", dtype="float32")
    ours = run_flow(local, study, max_new_tokens=6, parallel_within_stage=True, constrain=False)
    answers = [[(q.id, q.raw_answer) for q in s.questions] for s in ours.stages]
    assert [[(q.id, q.raw_answer) for q in s.questions] for s in theirs.stages] == answers
    assert theirs.provenance.cached_tokens > 0  # the wave's shared history came from the engine's prefix cache


def test_two_studies_in_flight_keep_their_own_conversations(remote) -> None:
    """processing.workers > 1 with the openai backend: studies share the engine, each conversation in order."""
    from concurrent.futures import ThreadPoolExecutor

    from dicomnode.demo.synthetic import StudySpec, make_study
    from inference.flow import run_flow

    studies = [make_study(StudySpec(views=("PA",), rows=256, columns=208, seed=seed)) for seed in (1, 2)]
    remote.peak_in_flight = 0
    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda s: run_flow(remote, s, max_new_tokens=6), studies))
    assert remote.peak_in_flight == 2
    for study, record in zip(studies, records, strict=False):
        assert record.study_instance_uid == study[0].StudyInstanceUID
        closed = [q for s in record.stages for q in s.questions if q.qtype != QType.OPEN]
        assert closed and all(q.parsed.ok for q in closed)
        assert not any(s.status == "failed" for s in record.stages)


def test_the_venv_script_and_the_engine_helper_agree_on_version_and_place(monkeypatch, tmp_path: Path) -> None:
    """bootstrap builds the venv where the tests and benchmarks look for it (outside the checkout)."""
    import re

    from tests.vllm_engine import ROOT, VLLM_VERSION, vllm_venv

    script = (ROOT / "scripts" / "vllm_venv.sh").read_text()
    assert re.search(rf"^VERSION={re.escape(VLLM_VERSION)}$", script, flags=re.M)
    assert "scripts/vllm_venv.sh" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    monkeypatch.delenv("CXR_VLLM_VENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert vllm_venv() == tmp_path / "cxr-node" / f"vllm-venv-{VLLM_VERSION}"
    monkeypatch.setenv("CXR_VLLM_VENV", str(tmp_path / "elsewhere"))
    assert vllm_venv() == tmp_path / "elsewhere"


def test_batch_run_through_the_engine(vllm_url: str, tmp_path: Path) -> None:
    """``cxr-node run --engine URL``: the batch command reasons a folder through the engine (no local model)."""
    import subprocess
    import sys

    import pydicom

    from dicomnode.demo.synthetic import StudySpec, write_study

    write_study(tmp_path / "in", StudySpec(views=("PA",), rows=256, columns=208))
    out = tmp_path / "out"
    cli = "import sys; from dicomnode.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", cli, "run", str(tmp_path / "in"), "--engine", vllm_url,
                           "--out", str(out), "--max-new-tokens", "8"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 studies reasoned (DEMO model" in done.stdout
    [sr_path] = out.glob("*/sr.dcm")
    record = (sr_path.parent / "record.json").read_text()
    assert vllm_url in record  # provenance names the engine
    assert pydicom.dcmread(sr_path).Modality == "SR"


def test_choice_scores_agree_with_the_transformers_backend(remote, engine_model_dir: Path) -> None:
    """The same model behind both backends: every choice's probability within 1e-4, the same chosen answers and
    the same tokens (the yes/no justification is decoded freely after the chosen head on both)."""
    from inference.model import load_chat_model

    local = load_chat_model(engine_model_dir, quantization="none", dtype="float32", cache="prefix")
    remote.return_token_ids = True
    image = Image.new("L", (300, 360), 70)
    first = Turn("user", "Here is the current X-ray image: <image> . Which view is the X-ray image?", (image,))
    history = [first, Turn("assistant", "PA view.")]
    asked = [(Turn("user", "Is there any evidence of pneumothorax in the main study X-ray?"), QType.YES_NO, []),
             (Turn("user", "What is the severity? [ A. Mild; B. Moderate; C. Severe ]."), QType.SINGLE_CHOICE,
              ["Mild", "Moderate", "Severe"]),
             (Turn("user", "Is there any evidence of cardiomegaly in the main study X-ray?"), QType.YES_NO, [])]
    for question, qtype, options in asked:
        constraint = constraint_for(qtype, options)
        ours = local.answer(history, question, 10, constraint)
        theirs = remote.answer(history, question, 10, constraint)
        assert set(ours.choice_probabilities) == set(theirs.choice_probabilities) == set(constraint.scored)
        for choice in constraint.scored:
            assert abs(ours.choice_probabilities[choice] - theirs.choice_probabilities[choice]) < 1e-4
        assert abs(sum(theirs.choice_probabilities.values()) - 1.0) < 1e-4
        assert theirs.text == ours.text and theirs.token_ids == ours.token_ids
        history += [question, Turn("assistant", ours.text)]


def test_a_study_has_the_same_probabilities_of_presence_on_both_backends(remote, engine_model_dir: Path) -> None:
    import yaml

    from dicomnode.demo.synthetic import StudySpec, make_study
    from inference.flow import run_flow
    from inference.model import load_chat_model
    from inference.stages import DEFAULT_STAGES_PATH, parse_stages

    # Stages 1-2 without the multi-choice question: greedy decoding under a grammar may end differently on the two
    # backends at the budget (the local decoder ends a complete answer there), which would part the histories.
    data = yaml.safe_load(DEFAULT_STAGES_PATH.read_text(encoding="utf-8"))
    data["stages"] = [s for s in data["stages"] if s["number"] <= 2]
    data["stages"][0]["questions"] = [q for q in data["stages"][0]["questions"] if q["qtype"] == "open"]
    book = parse_stages(yaml.safe_dump(data, sort_keys=False))
    study = make_study(StudySpec(views=("PA",), rows=256, columns=208, seed=5))
    theirs = run_flow(remote, study, stages=book, max_new_tokens=6, thresholds={"pneumothorax": 0.5})
    local = load_chat_model(engine_model_dir, quantization="none", dtype="float32")
    ours = run_flow(local, study, stages=book, max_new_tokens=6, thresholds={"pneumothorax": 0.5})
    assert len(ours.findings) == len(theirs.findings) == 18
    for mine, engine in zip(ours.findings, theirs.findings, strict=True):
        assert mine.probability is not None and engine.probability is not None
        assert abs(mine.probability - engine.probability) < 1e-4, mine.key
        assert (mine.presence, mine.threshold) == (engine.presence, engine.threshold)
    assert theirs.findings[8].threshold == 0.5  # pneumothorax: decided by its operating point
    scored = [q for s in theirs.stages for q in s.questions if q.choice_probabilities]
    assert scored and all(q.answer_probability is not None for q in scored)
