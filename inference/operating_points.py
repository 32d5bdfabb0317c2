"""Operating points: how a checklist answer becomes present / absent / uncertain.

The one place that decides a finding's presence (the flow calls it for every checklist answer; evaluation and
triage call it to see what a threshold would decide). Pure: no model, no configuration file.

- No threshold for the finding (the default), or no probability to compare (a backend without scores): the
  model's own answer decides. "Yes." is present, "No." absent; an answer that is neither, or whose justification
  hedges (the stage book's ``hedges``), is uncertain.
- A threshold: the probability of presence decides, present when it is at least the threshold, absent below.
  The model's wording no longer matters (a hedge is already in the probability the model gave).
"""
from __future__ import annotations

from collections.abc import Mapping

import yaml

from inference.record import Presence

__all__ = ["decide_presence", "applied_threshold", "check_thresholds", "read_thresholds"]


def decide_presence(answer: bool | None, probability: float | None, threshold: float | None = None, *,
                    hedged: bool = False) -> Presence:
    """Present / absent / uncertain for one checklist answer.

    ``answer``: the parsed yes (True) / no (False), None when it did not parse. ``probability``: the model's
    probability of presence (P("Yes.")), None when not scored. ``threshold``: the finding's operating point, None
    for the model's own answer. ``hedged``: the justification hedges (only matters without a threshold).
    """
    if applied_threshold(probability, threshold) is not None:
        assert probability is not None and threshold is not None
        return Presence.PRESENT if probability >= threshold else Presence.ABSENT
    if answer is None or hedged:
        return Presence.UNCERTAIN
    return Presence.PRESENT if answer else Presence.ABSENT


def applied_threshold(probability: float | None, threshold: float | None) -> float | None:
    """The threshold that decides, or None when the model's answer does (no threshold, or nothing to compare)."""
    return threshold if threshold is not None and probability is not None else None


def check_thresholds(thresholds: Mapping[str, float], known: Mapping[str, str] | None = None) -> list[str]:
    """Problems with a finding -> threshold mapping: values outside [0, 1]; keys not in ``known`` (key -> label)."""
    problems = [f"{key}: threshold {value!r} is not in [0, 1]" for key, value in thresholds.items()
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0]
    if known is not None:
        problems += [f"{key}: not a checklist finding (known: {', '.join(known)})" for key in thresholds
                     if key not in known]
    return problems


def read_thresholds(text: str) -> dict[str, float]:
    """Finding key -> threshold from YAML with a ``findings:`` section (a node config, or the proposal file);
    ValueError naming the problem."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("findings", {}) or {}, dict):
        raise ValueError("expected a mapping with a 'findings:' section")
    out: dict[str, float] = {}
    for key, point in (data.get("findings") or {}).items():
        value = point.get("threshold") if isinstance(point, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"findings.{key}.threshold: a number in [0, 1] is required")
        out[str(key)] = float(value)
    return out
