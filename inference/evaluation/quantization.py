"""Quantization fidelity: the same inputs under two quantization settings, and how far their answers agree.

Agreement figures (item by item, same study and question; items where neither setting's answer parsed carry no
information and are left out, counted as ``both_unparsed``; one parsed and one not is a disagreement):
- ``yes_no``: share of yes/no answers with the same value;
- ``choice``: share of single- and multi-choice answers with the same chosen option set;
- ``box_mean_iou``: mean IoU between the two settings' boxes (one-to-one matching per image, as in scoring);
- ``checklist``: share of findings-checklist questions (target ``abnormality_[...]``, yes/no or choice) with the
  same answer;
- ``open_token``: mean token-level agreement of open answers, difflib's matching ratio over whitespace tokens
  (2 * matching tokens / total tokens; 1 when identical).
Each setting also reports its model memory footprint, load time and wall time per study, and its own scores.
"""
from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from statistics import fmean
from typing import Any, Unpack

from rich.console import Console
from rich.table import Table

from inference.chat import ChatModel
from inference.evaluation.dataset import EvalItem, EvalStudy
from inference.evaluation.predictions import RunOptions, StudyRun, parsed_answers, run_model
from inference.evaluation.scoring import EvalScores, match_boxes, score_dataset
from inference.record import ParsedAnswer, QType

AGREEMENT_NAMES: tuple[str, ...] = ("yes_no", "choice", "box_mean_iou", "checklist", "open_token")
_FOOTPRINT_KEYS = ("footprint_bytes", "memory_footprint", "footprint")


@dataclass(frozen=True)
class Figure:
    value: float | None  # fraction in [0, 1]; None when no item of that kind was compared
    count: int  # items compared
    both_unparsed: int = 0  # items left out: neither answer parsed

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "count": self.count, "both_unparsed": self.both_unparsed}


@dataclass
class SettingResult:
    name: str  # quantization setting, e.g. "nf4"
    runs: dict[str, StudyRun]
    scores: EvalScores
    info: dict[str, Any]
    load_seconds: float
    peak_gpu_bytes: int | None = None  # CUDA peak allocated during load and run; None on CPU

    @property
    def seconds_per_study(self) -> float:
        return fmean(r.seconds for r in self.runs.values()) if self.runs else 0.0

    @property
    def footprint_bytes(self) -> int | None:
        for key in _FOOTPRINT_KEYS:
            value = self.info.get(key)
            if isinstance(value, (int, float)):
                return int(value)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantization": self.name,
            "footprint_bytes": self.footprint_bytes,
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "load_seconds": self.load_seconds,
            "seconds_per_study": self.seconds_per_study,
            "generated_tokens": sum(p.generated_tokens for r in self.runs.values() for p in r.predictions),
            "model": self.info,
            "scores": self.scores.to_dict(),
        }


@dataclass
class Comparison:
    settings: list[SettingResult]
    agreement: dict[str, Figure]

    def to_dict(self) -> dict[str, Any]:
        return {
            "compare_quantization": [s.name for s in self.settings],
            "agreement": {k: v.to_dict() for k, v in self.agreement.items()},
            "settings": {s.name: s.to_dict() for s in self.settings},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


def model_info(model: Any) -> dict[str, Any]:
    """A loaded model's ``info`` (provenance, footprint) as a JSON-friendly dict; {} when it has none."""
    info: Any = getattr(model, "info", None)  # duck-typed: pydantic model, dataclass, mapping or object
    raw: dict[str, Any] = {}
    if hasattr(info, "model_dump"):
        raw = info.model_dump()
    elif dataclasses.is_dataclass(info) and not isinstance(info, type):
        raw = dataclasses.asdict(info)
    elif isinstance(info, Mapping):
        raw = dict(info)
    elif info is not None:
        raw = dict(vars(info))
    if not any(isinstance(raw.get(k), (int, float)) for k in _FOOTPRINT_KEYS):
        footprint = _memory_footprint(model)
        if footprint is not None:
            raw["footprint_bytes"] = footprint
    return _jsonable(raw)


def _memory_footprint(model: Any) -> int | None:
    """Bytes of parameters and buffers of the underlying transformers model (``get_memory_footprint``)."""
    inner = getattr(model, "model", None)
    measure = getattr(inner, "get_memory_footprint", None)
    if measure is None:
        return None
    try:
        return int(measure())
    except (RuntimeError, TypeError, ValueError):
        return None


def _presence(item: EvalItem, parsed: ParsedAnswer) -> object:
    if item.qtype is QType.YES_NO:
        return parsed.yes_no if parsed.ok else None
    return frozenset(parsed.choices) if parsed.ok else None


def _token_agreement(a: str, b: str) -> float:
    ta, tb = a.split(), b.split()
    if not ta and not tb:
        return 1.0
    return SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def _figure(values: list[float], both_unparsed: int) -> Figure:
    value = min(1.0, max(0.0, round(fmean(values), 9))) if values else None
    return Figure(value, len(values), both_unparsed)


def _boxes(parsed: ParsedAnswer) -> list[tuple[int, tuple[float, float, float, float]]]:
    return [(x.image_index, x.normalized) for x in parsed.boxes] if parsed.ok else []


def _item_agreement(item: EvalItem, pa: ParsedAnswer, pb: ParsedAnswer) -> tuple[str, float]:
    """(figure name, agreement in [0, 1]) of one item's two answers."""
    if item.qtype is QType.YES_NO:
        return "yes_no", float(_presence(item, pa) == _presence(item, pb))
    if item.qtype in (QType.SINGLE_CHOICE, QType.MULTI_CHOICE):
        return "choice", float(_presence(item, pa) == _presence(item, pb))
    if item.qtype is QType.DETECTION:
        return "box_mean_iou", match_boxes(_boxes(pa), _boxes(pb))
    return "open_token", _token_agreement(pa.text if pa.ok else "", pb.text if pb.ok else "")


def agreement(
    studies: Sequence[EvalStudy], a: Mapping[str, Sequence[ParsedAnswer]], b: Mapping[str, Sequence[ParsedAnswer]]
) -> dict[str, Figure]:
    """Agreement figures between two settings' parsed answers (module docstring)."""
    values: dict[str, list[float]] = {name: [] for name in AGREEMENT_NAMES}
    skipped: dict[str, int] = {name: 0 for name in AGREEMENT_NAMES}
    for study in studies:
        for item, pa, pb in zip(study.items, a.get(study.key, ()), b.get(study.key, ()), strict=False):
            name, value = _item_agreement(item, pa, pb)
            names = [name, "checklist"] if item.is_checklist and item.qtype is not QType.OPEN else [name]
            for n in names:
                if not pa.ok and not pb.ok:
                    skipped[n] += 1
                else:
                    values[n].append(value)
    return {name: _figure(values[name], skipped[name]) for name in AGREEMENT_NAMES}


def compare_quantization(
    load: Callable[[str], ChatModel],
    settings: Sequence[str],
    studies: Sequence[EvalStudy],
    images_dir: str | Path,
    **options: Unpack[RunOptions],
) -> Comparison:
    """Load the model under each setting in turn (``load(setting)``), run the same studies (``run_model`` with
    ``options``), compare the answers.

    One model is held at a time: each is released before the next loads.
    """
    if len(settings) != 2:
        raise ValueError(f"compare two quantization settings, got {list(settings)}")
    results: list[SettingResult] = []
    for setting in settings:
        _reset_gpu_peak()
        start = time.perf_counter()
        model = load(setting)
        load_seconds = time.perf_counter() - start
        runs = run_model(model, studies, images_dir, label=setting, **options)
        info = model_info(model)
        load_seconds = float(info.get("load_seconds") or load_seconds)  # engine's figure excludes imports
        del model
        gc.collect()  # release this setting's weights before the next one loads
        results.append(
            SettingResult(
                name=setting,
                runs=runs,
                scores=score_dataset(studies, parsed_answers(runs)),
                info=info,
                load_seconds=load_seconds,
                peak_gpu_bytes=_gpu_peak(),
            )
        )
    return Comparison(results, agreement(studies, parsed_answers(results[0].runs), parsed_answers(results[1].runs)))


def _reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def _mib(value: int | None) -> str:
    if value is None:
        return "–"
    if value < 2**20:
        return f"{value / 2**10:.0f} KiB"
    return f"{value / 2**20:.1f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def comparison_tables(comparison: Comparison) -> list[Table]:
    """Agreement table and per-setting cost/score table."""
    a, b = (s.name for s in comparison.settings)
    agree = Table(title=f"Quantization agreement: {a} vs {b}")
    agree.add_column("Figure", style="bold")
    agree.add_column("N", justify="right")
    agree.add_column("Agreement %", justify="right")
    agree.add_column("Both unparsed", justify="right")
    labels = {
        "yes_no": "yes/no answers agree",
        "choice": "choice answers agree",
        "box_mean_iou": "box mean IoU",
        "checklist": "findings checklist agrees",
        "open_token": "open answers token agreement",
    }
    for name, fig in comparison.agreement.items():
        value = "–" if fig.value is None else f"{100 * fig.value:.1f}"
        agree.add_row(labels[name], str(fig.count), value, str(fig.both_unparsed))
    cost = Table(title="Per setting")
    for header in ("Setting", "Footprint", "GPU peak", "Load s", "s / study", "Score %", "Unparsed"):
        cost.add_column(header, justify="right")
    for s in comparison.settings:
        score = s.scores.overall.score
        cost.add_row(
            s.name,
            _mib(s.footprint_bytes),
            _mib(s.peak_gpu_bytes),
            f"{s.load_seconds:.1f}",
            f"{s.seconds_per_study:.2f}",
            "–" if score is None else f"{100 * score:.1f}",
            str(s.scores.overall.unparsed),
        )
    return [agree, cost]


def print_comparison(comparison: Comparison, console: Console | None = None) -> None:
    console = console or Console()
    for table in comparison_tables(comparison):
        console.print(table)
    if any(s.info.get("demo_model") for s in comparison.settings):
        console.print("[yellow]DEMO model with random weights: these figures are meaningless.[/]")
