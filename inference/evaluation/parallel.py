"""The accuracy cost of ``reasoning.parallel_within_stage``: the same studies asked sequentially and with each
stage's questions together (blind to each other's answers), scored side by side, with their answer agreement."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from inference.evaluation.dataset import EvalStudy
from inference.evaluation.predictions import StudyRun, parsed_answers
from inference.evaluation.quantization import Figure, agreement
from inference.evaluation.scoring import EvalScores, GroupMetrics, score_dataset

MODES = ("sequential", "parallel_within_stage")


@dataclass
class ModeComparison:
    scores: dict[str, EvalScores]  # by mode
    seconds_per_study: dict[str, float]
    agreement: dict[str, Figure]

    def cost(self) -> dict[str, Any]:
        """Parallel minus sequential: unified score and unparsed count, overall and per stage."""
        seq, par = (self.scores[m] for m in MODES)

        def delta(a: GroupMetrics, b: GroupMetrics) -> dict[str, Any]:
            score = None if a.score is None or b.score is None else b.score - a.score
            return {"score": score, "unparsed": b.unparsed - a.unparsed}

        return {"overall": delta(seq.overall, par.overall),
                "by_stage": {str(k): delta(seq.by_stage[k], par.by_stage[k])
                             for k in sorted(seq.by_stage) if k in par.by_stage}}

    def to_dict(self) -> dict[str, Any]:
        return {"modes": {m: {"seconds_per_study": self.seconds_per_study[m], **self.scores[m].to_dict()}
                          for m in MODES},
                "cost": self.cost(), "agreement": {k: v.to_dict() for k, v in self.agreement.items()}}


def compare_modes(studies: Sequence[EvalStudy], runs: Mapping[str, Mapping[str, StudyRun]]) -> ModeComparison:
    """Score both modes' runs (``runs[mode][study key]``) and how often their answers agree."""
    answers = {mode: parsed_answers(runs[mode]) for mode in MODES}
    return ModeComparison(
        scores={mode: score_dataset(studies, answers[mode]) for mode in MODES},
        seconds_per_study={mode: (sum(r.seconds for r in runs[mode].values()) / len(runs[mode])
                                  if runs[mode] else 0.0) for mode in MODES},
        agreement=agreement(studies, answers[MODES[0]], answers[MODES[1]]),
    )


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def cost_table(comparison: ModeComparison) -> Table:
    """Score and unparsed answers per group in both modes and the difference (percentage points)."""
    seq, par = (comparison.scores[m] for m in MODES)
    table = Table(title="Accuracy cost of parallel_within_stage (parallel - sequential)", box=box.SIMPLE_HEAD,
                  caption=f"score = mean item score in percent; s/study: sequential "
                          f"{comparison.seconds_per_study[MODES[0]]:.1f}, parallel "
                          f"{comparison.seconds_per_study[MODES[1]]:.1f}")
    for header in ("Group", "N", "Seq.", "Par.", "Δ pts", "Unp. seq", "Unp. par"):
        table.add_column(header, justify="left" if header == "Group" else "right", no_wrap=True)

    def row(name: str, a: GroupMetrics, b: GroupMetrics) -> None:
        diff = None if a.score is None or b.score is None else b.score - a.score
        table.add_row(name, str(a.count), _pct(a.score), _pct(b.score), _pct(diff, signed=True), str(a.unparsed),
                      str(b.unparsed))

    row("all", seq.overall, par.overall)
    table.add_section()
    for stage in sorted(seq.by_stage):
        if stage in par.by_stage:
            row(f"stage {stage}", seq.by_stage[stage], par.by_stage[stage])
    table.add_section()
    for qtype, group in seq.by_qtype.items():
        if qtype in par.by_qtype:
            row(qtype, group, par.by_qtype[qtype])
    return table


def print_comparison(comparison: ModeComparison, console: Console | None = None) -> None:
    console = console or Console()
    console.print(cost_table(comparison))
    agree = ", ".join(f"{k} {_pct(v.value)} % (n={v.count})" for k, v in comparison.agreement.items() if v.count)
    console.print(f"answer agreement, parallel vs sequential: {agree or '–'}")
