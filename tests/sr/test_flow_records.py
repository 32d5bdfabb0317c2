"""Records produced by the real stage flow (inference.flow, driven by a scripted ChatModel test double) render into
valid result objects: the writer is built against hand-made records, this checks it against the engine's own."""
from __future__ import annotations

import pytest

from dicomnode.demo.synthetic import make_study, prior_spec
from inference.chat import BoxConvention, Generation, Turn
from inference.flow import run_flow
from inference.record import Presence, Provenance
from sr_writer import build_result_objects, validate
from tests.sr.conftest import small_spec

BOX = "<|ref|> region <|/ref|> <|box|>(20.0, 25.0), (60.0, 70.0)<|/box|>."


class Scripted:
    """Says yes to the checklist questions naming ``positives``, draws one box for every detection question."""

    answer_wrapper: str | None = None
    box_convention = BoxConvention.PERCENT

    def __init__(self, positives: tuple[str, ...]) -> None:
        self.positives = positives
        self.info = Provenance(model_dir="/models/scripted", model_name="scripted", weights_sha256="5" * 64,
                               profile="scripted", quantization="nf4", dtype="bfloat16", device="cpu",
                               demo_model=True, software_version="test")

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: object = None) -> Generation:
        text = question.text
        if "[detection]" in text:
            reply = BOX
        elif "evidence of" in text:
            reply = "Yes. Clearly seen." if any(p in text for p in self.positives) else "No."
        elif "Select the correct answer" in text:
            reply = "A."
        elif "Select all that apply" in text:
            reply = "A"
        else:
            reply = "Ο καρδιακός σκιαγραφικός δείκτης είναι φυσιολογικός. 心影正常。"
        return Generation(text=reply, prompt_tokens=10, cached_tokens=5, generated_tokens=5, seconds=0.001)


@pytest.mark.parametrize("with_prior", [False, True])
def test_flow_record_renders_into_valid_objects(with_prior: bool) -> None:
    spec = small_spec(views=("LATERAL", "PA"))
    current = make_study(spec)
    prior = make_study(prior_spec(spec)) if with_prior else []
    record = run_flow(Scripted(("pneumothorax", "pleural effusion")), current, prior)
    result = build_result_objects(record, current, prior)
    for ds in result.datasets:
        report = validate(ds)
        assert report.errors == [] and report.unexpected_warnings == [], report.output
    positives = [f for f in record.findings if f.presence is Presence.PRESENT]
    assert positives, "the scripted model reported positive findings"
    scoords = sum(1 for _ in _scoords(result.sr.ContentSequence))
    boxes = {id(b) for f in record.findings for b in f.boxes} | {
        id(b) for s in record.stages for q in s.questions for b in q.parsed.boxes}
    assert scoords >= len([b for f in positives for b in f.boxes]) and scoords <= len(boxes)
    assert len(result.pages) >= 1


def _scoords(items):
    for item in items:
        if item.ValueType == "SCOORD":
            yield item
        yield from _scoords(item.get("ContentSequence", []))
