"""Render evaluation scores: a rich table, a JSON document, and a stage-wise radar chart (as in the CXRTrek paper)."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from inference.evaluation.scoring import EvalScores, GroupMetrics

# Radar axis labels: the eight CXRTrek stages.
STAGE_LABELS: dict[int, str] = {
    1: "1 Quality & view",
    2: "2 Findings",
    3: "3 Attributes & detection",
    4: "4 Relationships",
    5: "5 Comparison",
    6: "6 Future trend",
    7: "7 Diagnosis advice",
    8: "8 Report",
}

_QTYPE_LABELS = {"yes_no": "yes/no", "single_choice": "single", "multi_choice": "multi"}

_COLUMNS: tuple[tuple[str, str], ...] = (
    ("yes_no_accuracy", "Y/N\nacc"),
    ("single_choice_accuracy", "One\nacc"),
    ("multi_choice_exact", "Multi\nEM"),
    ("multi_choice_f1", "Multi\nF1"),
    ("detection_mean_iou", "Box\nIoU"),
    ("detection_iou50", "IoU\n≥.5"),
    ("rouge_l", "Rouge\nL"),
    ("bleu", "BLEU"),
)


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return "100" if value >= 1.0 else f"{100 * value:.1f}"


def _row(table: Table, name: str, group: GroupMetrics) -> None:
    table.add_row(
        name,
        str(group.count),
        str(group.unparsed),
        _pct(group.score),
        *(_pct(group.metrics.get(key)) for key, _ in _COLUMNS),
    )


def scores_table(scores: EvalScores, title: str = "Evaluation") -> Table:
    """All groups (overall, per stage, per qtype, report text) in one table; values in percent."""
    table = Table(
        title=title,
        caption="percent; – none of that kind; Unp. = unparsed; score = mean item score",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
    )
    table.add_column("Group", style="bold", no_wrap=True)
    for header in ("N", "Unp.", "Score", *(h for _, h in _COLUMNS)):
        table.add_column(header, justify="right", no_wrap=True, min_width=5)
    _row(table, "all", scores.overall)
    table.add_section()
    for stage, group in sorted(scores.by_stage.items()):
        _row(table, f"stage {stage}", group)
    table.add_section()
    for qtype, group in scores.by_qtype.items():
        _row(table, _QTYPE_LABELS.get(qtype, qtype), group)
    if scores.report:
        table.add_section()
        _row(table, "report text", scores.report)
    return table


def print_scores(scores: EvalScores, title: str = "Evaluation", console: Console | None = None) -> None:
    (console or Console()).print(scores_table(scores, title))


def scores_document(scores: EvalScores, **meta: Any) -> dict[str, Any]:
    """The ``--json`` document: ``meta`` keys first, then overall / by_stage / by_qtype / report groups."""
    return {**meta, "unparsed": scores.overall.unparsed, **scores.to_dict()}


def write_json(path: str | Path, document: Mapping[str, Any]) -> None:
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_radar(path: str | Path, series: Mapping[str, Mapping[int, float]], title: str = "Stage scores") -> None:
    """A radar chart PNG with one axis per CXRTrek stage and one polygon per series (stage -> score in [0, 1]).

    Stages without items in any series are drawn at 0 and labelled "n/a".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.projections.polar import PolarAxes

    stages = list(STAGE_LABELS)
    present = {s for values in series.values() for s in values}
    labels = [STAGE_LABELS[s] + ("" if s in present else " (n/a)") for s in stages]
    angles = [2 * math.pi * i / len(stages) for i in range(len(stages))]
    fig = plt.figure(figsize=(7.2, 6.8), dpi=100)
    try:
        ax = fig.add_subplot(polar=True)
        assert isinstance(ax, PolarAxes)  # add_subplot is typed as returning plain Axes
        ax.set_theta_offset(math.pi / 2)
        ax.set_theta_direction(-1)
        ax.set_xticks(angles)
        ax.set_xticklabels(labels, fontsize=8)
        ax.tick_params(axis="x", pad=10)
        for label, angle in zip(ax.get_xticklabels(), angles, strict=False):
            x = math.sin(angle)  # clockwise from the top: right half has x > 0
            label.set_horizontalalignment("left" if x > 0.1 else "right" if x < -0.1 else "center")
        ax.set_ylim(0, 1)
        ax.set_yticks([0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_yticklabels(["20", "40", "60", "80", "100"], fontsize=7)
        for name, values in series.items():
            points = [float(values.get(s, 0.0)) for s in stages]
            ax.plot(angles + angles[:1], points + points[:1], linewidth=1.5, label=name)
            ax.fill(angles + angles[:1], points + points[:1], alpha=0.15)
        ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
        ax.set_title(title, pad=36)
        fig.tight_layout()
        fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.3)
    finally:
        plt.close(fig)
