"""Render evaluation scores: rich tables, a JSON document, a stage-wise radar chart (as in the CXRTrek paper), the
per-finding and calibration tables with a reliability / ROC plot (PNG), and all of it as one HTML page."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from inference.evaluation.findings import POOLED, ChecklistItem, FindingMetrics
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


# -- per finding (inference.evaluation.findings) ------------------------------------------------------------------
def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _point(threshold: float | None) -> str:
    return "answer" if threshold is None else f"{threshold:.4g}"


FINDING_COLUMNS: tuple[str, ...] = ("Finding", "N", "Pos", "Unp.", "Scored", "Point", "AUROC", "Sens", "Spec",
                                    "Unc.", "ECE")


def finding_rows(rows: Sequence[FindingMetrics]) -> list[list[str]]:
    """The per-finding table's cells (rich table and HTML)."""
    return [[m.finding, str(m.count), str(m.positives), str(m.unparsed), str(m.scored),
             "per finding" if m.finding == POOLED else _point(m.threshold), _num(m.auroc), _num(m.sensitivity),
             _num(m.specificity), str(m.uncertain), _num(m.ece, 3)] for m in rows]


FINDING_CAPTION = ("Point: the operating point (answer = the model's own answer); Sens/Spec of the presence "
                   "recorded there (uncertain and unparsed count as absent); Scored: items with the model's "
                   "probability (the rest rank by their yes/no); ECE over scored items")


def findings_table(rows: Sequence[FindingMetrics], title: str = "Per finding (checklist yes/no)") -> Table:
    table = Table(title=title, caption=FINDING_CAPTION, box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, header in enumerate(FINDING_COLUMNS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True, style="bold" if i == 0 else "")
    cells = finding_rows(rows)
    for n, row in enumerate(cells):
        if n == len(cells) - 1 and rows[-1].finding == POOLED:
            table.add_section()
        table.add_row(*row)
    return table


def calibration_rows(pooled: FindingMetrics) -> list[list[str]]:
    return [[f"{b.lower:.1f}-{b.upper:.1f}", str(b.count), _num(b.mean_probability, 3), _num(b.observed, 3)]
            for b in pooled.bins]


def calibration_table(pooled: FindingMetrics) -> Table:
    table = Table(title=f"Calibration, all scored checklist items (ECE {_num(pooled.ece, 3)})",
                  caption="bins of the probability of presence: mean probability against the fraction present",
                  box=box.SIMPLE_HEAD)
    for header in ("Bin", "N", "Mean p", "Observed"):
        table.add_column(header, justify="right")
    for row in calibration_rows(pooled):
        table.add_row(*row)
    return table


def print_findings(rows: Sequence[FindingMetrics], console: Console | None = None) -> None:
    """Both tables, at least 112 columns wide (finding names are long; a pipe's default of 80 would cut them)."""
    console = console or Console()
    if console.width < 112:
        console = Console(file=console.file, width=112, no_color=console.no_color)
    console.print(findings_table(rows))
    if rows and rows[-1].finding == POOLED and rows[-1].scored:
        console.print(calibration_table(rows[-1]))


def write_calibration_png(path: str | Path, rows: Sequence[FindingMetrics], items: Sequence[ChecklistItem],
                          title: str = "Checklist: calibration and ROC") -> None:
    """Reliability diagram of the pooled scored items (bars: observed fraction present per bin; the diagonal is
    perfect calibration; counts above the bars) beside the ROC curve of each finding with both classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = rows[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5), dpi=100)
    try:
        centres = [(b.lower + b.upper) / 2 for b in pooled.bins]
        width = pooled.bins[0].upper - pooled.bins[0].lower if pooled.bins else 0.1
        left.bar(centres, [b.observed or 0.0 for b in pooled.bins], width=width * 0.9, color="#4c72b0",
                 label="observed fraction present")
        left.plot([b.mean_probability for b in pooled.bins if b.count],
                  [b.observed for b in pooled.bins if b.count], "o", color="#dd8452", label="mean probability")
        for centre, b in zip(centres, pooled.bins, strict=True):
            if b.count:
                left.annotate(str(b.count), (centre, (b.observed or 0.0) + 0.02), ha="center", fontsize=7)
        left.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        left.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="probability of presence", ylabel="fraction present",
                 title=f"Reliability (ECE {_num(pooled.ece, 3)}, {pooled.scored} scored)")
        left.legend(fontsize=8, loc="upper left")
        for m in rows[:-1]:
            own = [(i.gold, i.score) for i in items if i.finding == m.finding and i.score is not None]
            if m.auroc is None or not own:
                continue
            xs, ys = roc_points([y for y, _ in own], [s for _, s in own if s is not None])
            right.plot(xs, ys, linewidth=1.2, label=f"{m.finding} ({m.auroc:.2f})")
        pooled_ranked = [(i.gold, i.score) for i in items if i.score is not None]
        if pooled.auroc is not None:
            xs, ys = roc_points([y for y, _ in pooled_ranked], [s for _, s in pooled_ranked if s is not None])
            right.plot(xs, ys, color="black", linewidth=2, label=f"all ({pooled.auroc:.2f})")
        right.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        right.set(xlim=(0, 1), ylim=(0, 1), xlabel="1 - specificity", ylabel="sensitivity", title="ROC per finding")
        if right.get_legend_handles_labels()[0]:
            right.legend(fontsize=7, loc="lower right")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def roc_points(labels: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) of every threshold, from (0, 0) to (1, 1)."""
    positives = sum(labels) or 1
    negatives = (len(labels) - sum(labels)) or 1
    xs, ys = [0.0], [0.0]
    for threshold in sorted(set(scores), reverse=True):
        xs.append(sum(1 for y, s in zip(labels, scores, strict=True) if not y and s >= threshold) / negatives)
        ys.append(sum(1 for y, s in zip(labels, scores, strict=True) if y and s >= threshold) / positives)
    xs.append(1.0)
    ys.append(1.0)
    return xs, ys


def write_html(path: str | Path, scores: EvalScores, rows: Sequence[FindingMetrics], items: Sequence[ChecklistItem],
               meta: Mapping[str, Any]) -> None:
    """One self-contained HTML page: the run, the stage / question-type scores, the per-finding table, the
    calibration table and the calibration / ROC plot (embedded PNG)."""
    import base64
    import html
    import tempfile

    def table(headers: Sequence[str], body: Sequence[Sequence[str]], caption: str = "") -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"

    groups = [("all", scores.overall), *((f"stage {k}", v) for k, v in sorted(scores.by_stage.items())),
              *((_QTYPE_LABELS.get(k, k), v) for k, v in scores.by_qtype.items())]
    score_rows = [[name, str(g.count), str(g.unparsed), _pct(g.score), *(_pct(g.metrics.get(k)) for k, _ in _COLUMNS)]
                  for name, g in groups]
    plot = ""
    if rows:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "calibration.png"
            write_calibration_png(png, rows, items)
            plot = ('<img alt="reliability diagram and ROC curves" src="data:image/png;base64,'
                    + base64.b64encode(png.read_bytes()).decode("ascii") + '">')
    demo = bool((meta.get("model") or {}).get("demo_model"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cxr-node eval</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        "caption{caption-side:bottom;font-size:80%;color:#555;text-align:left}.demo{color:#b00;font-weight:bold}"
        "</style></head><body>",
        f"<h1>cxr-node eval: {html.escape(str(meta.get('source', '')))}</h1>",
        f"<p>{html.escape(str(meta.get('dataset', '')))}: {meta.get('studies', '')} studies, "
        f"{meta.get('questions', '')} questions</p>",
        "<p class='demo'>DEMO model with random weights: these scores are meaningless.</p>" if demo else "",
        "<h2>Scores per stage and question type (percent)</h2>",
        table(["Group", "N", "Unp.", "Score", *(h.replace("\n", " ") for _, h in _COLUMNS)], score_rows),
        "<h2>Per finding</h2>", table(FINDING_COLUMNS, finding_rows(rows), FINDING_CAPTION) if rows else
        "<p>No checklist items.</p>",
    ]
    if rows:
        parts += [f"<h2>Calibration (ECE {_num(rows[-1].ece, 3)})</h2>",
                  table(["Bin", "N", "Mean p", "Observed"], calibration_rows(rows[-1])), plot]
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
