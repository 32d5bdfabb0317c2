"""Per-finding evaluation of the checklist: discrimination, operating points and calibration of the probability of
presence, and thresholds proposed for a target sensitivity.

Items: the yes/no checklist items of a CXRTrek-format dataset (target ``abnormality_[...]``), each mapped to a stage
book finding key (by key, label or term, or by ``inference/data/cxrtrek_findings.yaml``); unmapped ones count in the
pooled row only. An item's score is the model's probability of presence (P("Yes."), ``inference.scores``); an
answer without one (a predictions file of texts, a backend without scores) scores 1 for yes and 0 for no, and is
counted as not scored; an unparsed answer has no score and is left out of AUROC and calibration.

- AUROC: the Mann-Whitney statistic (a tie counts one half); None unless both classes are present.
- Sensitivity / specificity: of the presence the node would record at the configured operating point
  (``inference.operating_points.decide_presence``: the finding's threshold, else the model's answer); uncertain and
  unparsed count as not present.
- Calibration: reliability bins of equal width over [0, 1] (the last one closed), each with its count, mean
  probability and observed frequency of presence; expected calibration error = sum over bins of
  count / N * |observed - mean probability|.
- ``choose_thresholds``: per finding, the largest threshold whose sensitivity on these items reaches the target
  (the most specific such operating point), written as the node's ``findings:`` YAML.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from inference.evaluation.dataset import CHECKLIST_TARGET_PREFIX, EvalStudy
from inference.operating_points import decide_presence
from inference.record import ParsedAnswer, Presence, QType
from inference.stages import StageBook

ALIASES_FILE = "cxrtrek_findings.yaml"
BINS = 10
POOLED = "all"  # the pooled row's name


@dataclass(frozen=True)
class ChecklistItem:
    """One scored checklist answer."""

    study_key: str
    position: int
    target: str  # the CXRTrek target text, e.g. "pleural effusions"
    finding: str | None  # stage book finding key, None when unmapped
    gold: bool  # the finding is present (gold yes)
    answer: bool | None  # the parsed yes / no, None when unparsed
    probability: float | None  # the model's probability of presence, None when not scored
    hedged: bool = False

    @property
    def score(self) -> float | None:
        """What AUROC and calibration rank: the probability, else the hard answer, else None (unparsed)."""
        if self.probability is not None:
            return self.probability
        return None if self.answer is None else float(self.answer)

    def presence(self, threshold: float | None) -> Presence:
        return decide_presence(self.answer, self.probability, threshold, hedged=self.hedged)


@dataclass(frozen=True)
class Bin:
    lower: float
    upper: float
    count: int
    mean_probability: float | None
    observed: float | None  # fraction present


@dataclass(frozen=True)
class FindingMetrics:
    finding: str  # key, or POOLED
    count: int
    positives: int
    unparsed: int
    scored: int  # items with the model's probability (the rest use the hard answer)
    threshold: float | None  # the configured operating point; None: the model's answer
    auroc: float | None
    sensitivity: float | None
    specificity: float | None
    uncertain: int
    ece: float | None
    bins: list[Bin] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "count": self.count, "positives": self.positives, "unparsed": self.unparsed,
                "scored": self.scored, "threshold": self.threshold, "auroc": self.auroc,
                "sensitivity": self.sensitivity, "specificity": self.specificity, "uncertain": self.uncertain,
                "ece": self.ece, "bins": [vars(b) for b in self.bins]}


@dataclass(frozen=True)
class ChosenThreshold:
    finding: str
    threshold: float
    sensitivity: float
    specificity: float | None
    positives: int
    negatives: int


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"^(a|an) ", "", text.strip().lower()))


@lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    text = resources.files("inference.data").joinpath(ALIASES_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    return {_normal(name): key for key, names in (data.get("aliases") or {}).items() for name in names}


def target_text(target: str | None) -> str | None:
    """``abnormality_[pleural effusions]`` -> ``pleural effusions``; None for a target that is no checklist one."""
    if not target or not target.startswith(CHECKLIST_TARGET_PREFIX):
        return None
    return target[len(CHECKLIST_TARGET_PREFIX):].strip().strip("[]").strip()


def finding_key(target: str, book: StageBook) -> str | None:
    """The stage book finding a CXRTrek target names (its key, label or term, or an alias), else None."""
    wanted = _normal(target)
    for finding in book.findings:
        if wanted in {_normal(finding.key.replace("_", " ")), _normal(finding.label), _normal(finding.term)}:
            return finding.key
    key = _aliases().get(wanted)
    return key if key is not None and any(f.key == key for f in book.findings) else None


def checklist_items(studies: Sequence[EvalStudy], parsed: Mapping[str, Sequence[ParsedAnswer]],
                    probabilities: Mapping[str, Sequence[float | None]], book: StageBook) -> list[ChecklistItem]:
    """Every answered yes/no checklist item; ``parsed`` / ``probabilities`` by study key, aligned with its items."""
    out: list[ChecklistItem] = []
    for study in studies:
        answers = parsed.get(study.key, ())
        scores = probabilities.get(study.key, ())
        for index, (item, answer) in enumerate(zip(study.items, answers, strict=False)):
            target = target_text(item.target)
            if item.qtype is not QType.YES_NO or target is None or item.yes_no is None:
                continue
            yes_no = answer.yes_no if answer.ok else None
            out.append(ChecklistItem(
                study_key=study.key, position=item.position, target=target, finding=finding_key(target, book),
                gold=item.yes_no, answer=yes_no, probability=scores[index] if index < len(scores) else None,
                hedged=book.is_hedged(answer.justification)))
    return out


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Probability that a random positive outranks a random negative (ties: one half); None without both."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def reliability(labels: Sequence[bool], probabilities: Sequence[float], bins: int = BINS) -> list[Bin]:
    """Equal-width bins over [0, 1]; a probability of exactly 1 falls in the last bin."""
    edges = [i / bins for i in range(bins + 1)]
    out = []
    for b in range(bins):
        members = [(p, y) for p, y in zip(probabilities, labels, strict=True)
                   if edges[b] <= p < edges[b + 1] or (b == bins - 1 and p == 1.0)]
        out.append(Bin(edges[b], edges[b + 1], len(members),
                       sum(p for p, _ in members) / len(members) if members else None,
                       sum(1 for _, y in members if y) / len(members) if members else None))
    return out


def expected_calibration_error(bins: Iterable[Bin]) -> float | None:
    bins = list(bins)
    total = sum(b.count for b in bins)
    if not total:
        return None
    return sum(b.count / total * abs((b.observed or 0.0) - (b.mean_probability or 0.0)) for b in bins if b.count)


def _rate(hits: int, of: int) -> float | None:
    return hits / of if of else None


def metrics(name: str, items: Sequence[ChecklistItem], thresholds: Mapping[str, float],
            bins: int = BINS) -> FindingMetrics:
    """The metrics of one finding's items (or of the pooled items, each at its own finding's operating point)."""
    ranked = [(i.gold, i.score) for i in items if i.score is not None]
    labels, scores = [y for y, _ in ranked], [s for _, s in ranked]
    scored = [i for i in items if i.probability is not None]
    decided = [(i.gold, i.presence(thresholds.get(i.finding or ""))) for i in items]
    positives = sum(1 for i in items if i.gold)
    true_positive = sum(1 for y, p in decided if y and p is Presence.PRESENT)
    true_negative = sum(1 for y, p in decided if not y and p is not Presence.PRESENT)
    calibration = reliability([i.gold for i in scored], [i.probability or 0.0 for i in scored], bins)
    threshold = thresholds.get(name) if name != POOLED else None
    return FindingMetrics(
        finding=name, count=len(items), positives=positives, unparsed=sum(1 for i in items if i.answer is None),
        scored=len(scored), threshold=threshold, auroc=auroc(labels, scores),
        sensitivity=_rate(true_positive, positives), specificity=_rate(true_negative, len(items) - positives),
        uncertain=sum(1 for _, p in decided if p is Presence.UNCERTAIN),
        ece=expected_calibration_error(calibration), bins=calibration)


def per_finding(items: Sequence[ChecklistItem], thresholds: Mapping[str, float], book: StageBook,
                bins: int = BINS) -> list[FindingMetrics]:
    """One row per stage book finding that has items (book order), then the pooled row over every item."""
    rows = [metrics(f.key, [i for i in items if i.finding == f.key], thresholds, bins) for f in book.findings
            if any(i.finding == f.key for i in items)]
    return [*rows, metrics(POOLED, items, thresholds, bins)]


def choose_thresholds(items: Sequence[ChecklistItem], target_sensitivity: float) -> tuple[list[ChosenThreshold],
                                                                                         list[str]]:
    """Per mapped finding, the largest threshold (rounded down to 4 decimals) at which at least
    ``target_sensitivity`` of its positive items have a probability >= it; and the findings left without one
    (no positive item with a probability)."""
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError("the target sensitivity must be in (0, 1]")
    chosen: list[ChosenThreshold] = []
    skipped: list[str] = []
    for key in dict.fromkeys(i.finding for i in items if i.finding):
        assert key is not None
        own = [i for i in items if i.finding == key and i.probability is not None]
        positive = sorted((i.probability or 0.0 for i in own if i.gold), reverse=True)
        negative = [i.probability or 0.0 for i in own if not i.gold]
        if not positive:
            skipped.append(key)
            continue
        needed = math.ceil(target_sensitivity * len(positive) - 1e-9)
        threshold = math.floor(positive[needed - 1] * 1e4) / 1e4
        sensitivity = sum(1 for p in positive if p >= threshold) / len(positive)
        specificity = _rate(sum(1 for p in negative if p < threshold), len(negative))
        chosen.append(ChosenThreshold(key, threshold, sensitivity, specificity, len(positive), len(negative)))
    return chosen, skipped


def thresholds_yaml(chosen: Sequence[ChosenThreshold], skipped: Sequence[str], target_sensitivity: float,
                    source: str, demo: bool = False) -> str:
    """The node config's ``findings:`` section for ``chosen`` (paste it into node.yaml, or merge the file)."""
    lines = [f"# Operating points proposed by `cxr-node eval --choose-thresholds` for sensitivity >= "
             f"{target_sensitivity:g}", f"# on {source}. Check them on data of your own site before use."]
    if demo:
        lines.append("# DEMO model with random weights: these thresholds are meaningless.")
    lines.append("findings:" if chosen else "findings: {}")
    for c in chosen:
        spec = "n/a" if c.specificity is None else f"{c.specificity:.2f}"
        lines += [f"  {c.finding}:",
                  f"    threshold: {c.threshold:.4f}  # sensitivity {c.sensitivity:.2f} of {c.positives} positive, "
                  f"specificity {spec} of {c.negatives} negative"]
    if skipped:
        lines.append(f"# left at the model's own answer (no positive item with a probability): {', '.join(skipped)}")
    return "\n".join(lines) + "\n"
