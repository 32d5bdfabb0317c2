"""``reasoning.parallel_within_stage``: what each question sees when a stage's independent questions are asked
together (scripted ChatModel: the answers are chosen by the test, so only the conversation differs)."""
from __future__ import annotations

from test_flow import BOOK, ScriptedModel, _study

from inference.chat import IMAGE_PLACEHOLDER, Turn
from inference.flow import run_flow
from inference.stages import DEFAULT_STAGES_PATH, parse_stages

POSITIVES = ["cardiomegaly", "pleural_effusion"]


def _calls_by_id(model: ScriptedModel, record) -> dict[str, tuple[list[Turn], Turn]]:
    """Each recorded question's (history, turn) as the model was asked it (one call per question)."""
    asked = {q.question: q.id for s in record.stages for q in s.questions}
    return {asked[question.text]: (history, question) for history, question, _ in model.calls}


def test_parallel_questions_share_the_stage_history_and_the_conversation_keeps_stage_order() -> None:
    current, prior = _study(prior=True)
    sequential, parallel = ScriptedModel(positives=POSITIVES), ScriptedModel(positives=POSITIVES)
    seq = run_flow(sequential, current, prior)
    par = run_flow(parallel, current, prior, parallel_within_stage=True)
    # the same questions in the same order; the scripted answers do not depend on history, so the same results
    assert [[(q.id, q.raw_answer) for q in s.questions] for s in par.stages] == \
        [[(q.id, q.raw_answer) for q in s.questions] for s in seq.stages]
    assert [(f.key, f.presence) for f in par.findings] == [(f.key, f.presence) for f in seq.findings]
    assert par.provenance.parallel_within_stage and not seq.provenance.parallel_within_stage
    calls = _calls_by_id(parallel, par)
    assert len(calls) == len(parallel.calls) == len(sequential.calls)

    def seen(qid: str) -> int:
        return len(calls[qid][0])

    # the images enter once, in a question asked alone; the rest of stage 1 sees only that answer
    assert calls["s1.view"][0] == [] and len(calls["s1.view"][1].images) == 2
    assert seen("s1.quality") == seen("s1.deficiencies") == 2
    # stage 2: the open question and all 18 presence questions after the same stage-1 history
    stage2 = [q.id for q in par.stage(2).questions]
    assert len(stage2) == 19 and {seen(q) for q in stage2} == {6}
    # stage 3 asks about the stage-2 positives, all after the whole of stage 2
    stage3 = [q.id for q in par.stage(3).questions]
    assert {seen(q) for q in stage3} == {6 + 2 * 19}
    # stage 5: the prior enters alone first, then the per-finding changes see it
    assert len(calls["s5.differences"][1].images) == 1
    base5 = seen("s5.differences")
    assert {seen(q.id) for q in par.stage(5).questions[1:]} == {base5 + 2}
    # later stages see every earlier turn, in stage order, exactly as the sequential conversation holds them
    last_history, _ = calls[par.stage(8).questions[0].id]
    seq_history = sequential.calls[[q.id for s in seq.stages for q in s.questions].index(
        par.stage(8).questions[0].id)][0]
    assert [(t.role, t.text) for t in last_history] == [(t.role, t.text) for t in seq_history]
    assert all(not q.images and IMAGE_PLACEHOLDER not in q.text
               for qid, (_, q) in calls.items() if qid not in ("s1.view", "s5.differences"))


def test_a_question_that_depends_on_presence_waits_for_the_presence_answers() -> None:
    # a stage book whose stage 2 ends with a question asked only when a finding is present: its condition comes
    # from the stage's own presence answers
    text = DEFAULT_STAGES_PATH.read_text(encoding="utf-8").replace(
        "        records: presence\n",
        "        records: presence\n      - id: s2.summary\n        text: Summarize the positive findings.\n"
        "        qtype: open\n        when: {min_positive_findings: 1}\n", 1)
    book = parse_stages(text)
    model = ScriptedModel(positives=POSITIVES)
    record = run_flow(model, _study()[0], stages=book, parallel_within_stage=True)
    ids = [q.id for q in record.stage(2).questions]
    assert ids[-1] == "s2.summary"
    calls = _calls_by_id(model, record)
    presence = [q for q in ids if q.startswith("s2.present")]
    assert len(presence) == len(BOOK.findings) and {len(calls[q][0]) for q in presence} == {6}
    # the summary sees every presence answer of its own stage
    assert len(calls["s2.summary"][0]) == 6 + 2 * (1 + len(presence))
    # without a positive finding it is not asked at all
    none = ScriptedModel()
    record = run_flow(none, _study()[0], stages=book, parallel_within_stage=True)
    assert "s2.summary" not in [q.id for q in record.stage(2).questions]


def test_a_failed_question_in_a_wave_fails_its_stage_only() -> None:
    model = ScriptedModel(positives=POSITIVES, fail_on="evidence of cardiomegaly")
    record = run_flow(model, _study()[0], parallel_within_stage=True)
    assert record.stage(2).status == "failed" and "s2.present:cardiomegaly" in record.stage(2).reason
    assert record.stage(7).status == "completed"
    last_history = model.calls[-1][0]
    assert not any("evidence of cardiomegaly" in t.text for t in last_history)
    assert sum("evidence of pleural effusion" in t.text for t in last_history) == 1
