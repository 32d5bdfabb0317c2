"""`cxr-node eval`: score a model (or given answers) on a CXRTrek-format dataset per stage and question type."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode.threads import add_threads_argument

if TYPE_CHECKING:
    from inference.evaluation.predictions import RunOptions

QUANTIZATIONS = ("nf4", "fp4", "int8", "none")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on CXRTrek-format data",
        description="Score answers per stage and question type: from a model run (--model DIR --images DIR, "
        "teacher-forced unless --free), from a predictions file, or the gold answers themselves (--oracle).",
    )
    p.add_argument("dataset", type=Path, help="CXRTrek-format JSON (list of studies)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, metavar="DIR", help="local model directory to run")
    source.add_argument("--engine", metavar="URL",
                        help="an OpenAI-compatible engine (vLLM) to run instead, e.g. http://127.0.0.1:8000/v1")
    source.add_argument(
        "--predictions",
        type=Path,
        metavar="FILE",
        help="answers produced elsewhere: JSON {study key: [answer, ...] | reasoning record} or a list per study",
    )
    source.add_argument("--oracle", action="store_true", help="score the gold answers (checks parser and scorer)")
    p.add_argument("--images", type=Path, metavar="DIR", help="directory the dataset's relative image paths join")
    p.add_argument("--free", action="store_true", help="model's own answers as history (default: teacher-forced)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4", help="model quantization (default nf4)")
    p.add_argument(
        "--compare-quantization",
        metavar="A,B",
        help="run the same inputs under two quantization settings (e.g. none,nf4) and report their agreement",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    add_threads_argument(p)
    p.add_argument("--limit", type=int, metavar="N", help="first N studies only")
    p.add_argument("--max-questions", type=int, metavar="N", help="first N questions of each study only")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="cap on generated tokens per answer")
    p.add_argument(
        "--box-convention",
        choices=("percent", "per_mille", "unit"),
        default="percent",
        help="box coordinates in a --predictions file (default: CXRTrek percent)",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write scores as JSON")
    p.add_argument("--radar", type=Path, metavar="PNG", help="write a radar chart of stage scores")
    p.add_argument("--save-predictions", type=Path, metavar="OUT", help="write the raw answers (re-scorable)")
    p.add_argument("--thresholds", type=Path, metavar="YAML",
                   help="operating points for the per-finding sensitivity / specificity: a node config or a "
                        "--choose-thresholds file (its findings: section); default: the model's own answer")
    p.add_argument("--choose-thresholds", type=Path, metavar="OUT",
                   help="write per-finding thresholds reaching --target-sensitivity as node-config YAML")
    p.add_argument("--target-sensitivity", type=float, default=0.9, metavar="S",
                   help="sensitivity the proposed thresholds reach on the data (default 0.9)")
    p.add_argument("--calibration", type=Path, metavar="PNG", help="write the reliability diagram and ROC curves")
    p.add_argument("--html", type=Path, metavar="OUT", help="write the whole report as one HTML page")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine-model", metavar="NAME", help="served model id (default: the engine's first)")
    p.add_argument("--engine-profile", default="qwen2_5_vl", help="model profile of the served model")
    p.add_argument("--engine-max-pixels", type=int, default=448 * 448, help="image grid bound (model.max_pixels)")
    p.add_argument("--no-constrain", action="store_true",
                   help="let the model write closed answers freely (default: decoded under their grammar)")
    p.add_argument("--parallel-within-stage", action="store_true",
                   help="also run with each stage's questions asked together (blind to each other's answers) and "
                        "report its accuracy cost beside the sequential run")
    p.set_defaults(func=run)


EVAL_EXTRA = "cxr-reasoning-node[eval]"
SCORING_MODULES = ("sacrebleu", "rouge_score")  # BLEU and ROUGE-L
PLOT_MODULES = ("matplotlib",)  # --radar, --calibration, --html


def missing_eval_modules(radar: bool) -> list[str]:
    """The evaluation-only modules (the ``eval`` extra) that this run needs and that are not installed."""
    import importlib.util

    wanted = SCORING_MODULES + (PLOT_MODULES if radar else ())
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def _fail(message: str) -> int:
    print(f"cxr-node eval: error: {message}", file=sys.stderr)
    return 2


def _load_model(args: argparse.Namespace, quantization: str) -> Any:
    from inference.model import ModelSpec, open_chat_model

    engine = getattr(args, "engine", None)
    spec = ModelSpec(backend="openai" if engine else "transformers", path=args.model, url=engine,
                     name=getattr(args, "engine_model", None), profile=getattr(args, "engine_profile", None),
                     max_pixels=getattr(args, "engine_max_pixels", None), quantization=quantization,
                     device=args.device, threads=getattr(args, "threads", None))
    return open_chat_model(spec)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from inference.chat import BoxConvention
    from inference.evaluation import predictions as preds
    from inference.evaluation import report
    from inference.evaluation.dataset import DatasetError, load_dataset
    from inference.evaluation.scoring import score_dataset

    missing = missing_eval_modules(radar=bool(args.radar or args.calibration or args.html))
    if missing:
        return _fail(f"evaluation needs the 'eval' extra ({', '.join(missing)} not installed): "
                     f"pip install '{EVAL_EXTRA}'")
    if (args.model or args.engine) and not args.images:
        return _fail("--model/--engine needs --images DIR")
    if args.parallel_within_stage and not (args.model or args.engine):
        return _fail("--parallel-within-stage needs --model or --engine")
    if args.compare_quantization and not args.model:
        return _fail("--compare-quantization needs --model")
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be at least 1")
    if not 0.0 < args.target_sensitivity <= 1.0:
        return _fail("--target-sensitivity must be in (0, 1]")
    try:
        book, thresholds = _operating_points(args.thresholds)
    except (OSError, ValueError) as exc:
        return _fail(f"--thresholds {args.thresholds}: {exc}")
    try:
        studies = load_dataset(args.dataset, args.limit)
    except (OSError, DatasetError) as exc:
        return _fail(str(exc))
    console = Console()
    meta: dict[str, Any] = {"dataset": str(args.dataset), "studies": len(studies)}

    if args.compare_quantization:
        return _compare(args, studies, meta, console)

    if args.oracle:
        runs = preds.oracle(studies)
        meta["source"] = "oracle"
    elif args.predictions:
        try:
            runs = preds.load_predictions(args.predictions, studies, BoxConvention(args.box_convention))
        except (OSError, preds.PredictionsError) as exc:
            return _fail(str(exc))
        meta["source"] = f"predictions:{args.predictions}"
    else:
        from inference.model import ModelLoadError

        modes = [False, True] if args.parallel_within_stage else [False]
        by_mode: dict[str, Any] = {}
        try:
            model = _load_model(args, args.quantization)
            for parallel in modes:
                by_mode["parallel_within_stage" if parallel else "sequential"] = preds.run_model(
                    model, studies, args.images, **_run_options(args), parallel_within_stage=parallel,
                    label="parallel within stage" if parallel else "model")
        except (OSError, ValueError, RuntimeError, ModelLoadError) as exc:
            return _fail(str(exc))
        runs = by_mode["sequential"]
        meta.update(
            source="model",
            mode="free" if args.free else "teacher_forced",
            constrained=not args.no_constrain,
            model=_model_meta(model),
            seconds_per_study=_seconds_per_study(runs),
        )
    if args.save_predictions:
        preds.save_predictions(args.save_predictions, runs)
    scores = score_dataset(studies, preds.parsed_answers(runs))
    meta["questions"] = scores.overall.count
    report.print_scores(scores, f"cxr-node eval: {meta['source']}", console)
    if _is_demo(meta):
        console.print("[yellow]DEMO model with random weights: these scores are meaningless.[/]")
    if args.parallel_within_stage:
        from inference.evaluation.parallel import compare_modes, print_comparison

        comparison = compare_modes(studies, by_mode)
        print_comparison(comparison, console)
        meta["parallel_within_stage"] = comparison.to_dict()
    items, rows = _per_finding(studies, runs, book, thresholds)
    if rows:
        report.print_findings(rows, console)
    if args.choose_thresholds:
        _write_thresholds(args, items, meta, console, [f.key for f in book.findings])
    if args.json:
        document = report.scores_document(scores, **meta)
        document["findings"] = [row.to_dict() for row in rows]
        report.write_json(args.json, document)
    if args.radar:
        report.write_radar(args.radar, {meta["source"]: scores.stage_scores()})
    if args.calibration and rows:
        report.write_calibration_png(args.calibration, rows, items)
    if args.html:
        report.write_html(args.html, scores, rows, items, meta)
    return 0


def _operating_points(path: Path | None) -> tuple[Any, dict[str, float]]:
    """The stage book (a node config's reasoning.stages_file, else the shipped one) and the thresholds in ``path``
    (its ``findings:`` section), checked against the book's findings."""
    import yaml

    from inference.operating_points import check_thresholds, read_thresholds
    from inference.stages import load_stages

    if path is None:
        return load_stages(), {}
    text = path.read_text(encoding="utf-8")
    thresholds = read_thresholds(text)  # ValueError for bad YAML
    data = yaml.safe_load(text) or {}
    stages_file = ((data.get("reasoning") or {}).get("stages_file") if isinstance(data, dict) else None)
    book = load_stages(stages_file)
    problems = check_thresholds(thresholds, {f.key: f.label for f in book.findings})
    if problems:
        raise ValueError("; ".join(problems))
    return book, thresholds


def _per_finding(studies: list[Any], runs: dict[str, Any], book: Any,
                 thresholds: dict[str, float]) -> tuple[list[Any], list[Any]]:
    from inference.evaluation import predictions as preds
    from inference.evaluation.findings import checklist_items, per_finding

    items = checklist_items(studies, preds.parsed_answers(runs), preds.presence_probabilities(runs), book)
    return items, (per_finding(items, thresholds, book) if items else [])


def _write_thresholds(args: argparse.Namespace, items: list[Any], meta: dict[str, Any], console: Any,
                      order: list[str]) -> None:
    from inference.evaluation.findings import choose_thresholds, thresholds_yaml

    chosen, skipped = choose_thresholds(items, args.target_sensitivity)
    chosen.sort(key=lambda c: order.index(c.finding))  # the stage book's order
    skipped.sort(key=order.index)
    source = f"{meta['dataset']} ({meta['studies']} studies, {meta['source']})"
    args.choose_thresholds.write_text(thresholds_yaml(chosen, skipped, args.target_sensitivity, source,
                                                      demo=_is_demo(meta)), encoding="utf-8")
    console.print(f"{len(chosen)} proposed threshold(s) for sensitivity >= {args.target_sensitivity:g} written to "
                  f"{args.choose_thresholds}" + (f"; none for {', '.join(skipped)}" if skipped else ""))


def _is_demo(meta: dict[str, Any]) -> bool:
    model = meta.get("model") or {}
    return bool(model.get("demo_model"))


def _model_meta(model: Any) -> dict[str, Any]:
    from inference.evaluation.quantization import model_info

    return model_info(model)


def _run_options(args: argparse.Namespace) -> RunOptions:
    """How the model answers, the same for one model and for a quantization comparison."""
    return {"free": args.free, "max_new_tokens": args.max_new_tokens, "max_questions": args.max_questions,
            "show_progress": not args.no_progress, "constrain": not args.no_constrain}


def _seconds_per_study(runs: dict[str, Any]) -> float:
    return sum(r.seconds for r in runs.values()) / len(runs) if runs else 0.0


def _compare(args: argparse.Namespace, studies: list[Any], meta: dict[str, Any], console: Any) -> int:
    from inference.evaluation import quantization, report
    from inference.model import ModelLoadError

    settings = [s.strip() for s in args.compare_quantization.split(",") if s.strip()]
    if len(settings) != 2 or any(s not in QUANTIZATIONS for s in settings):
        return _fail(f"--compare-quantization takes two of {', '.join(QUANTIZATIONS)}, e.g. none,nf4")
    try:
        comparison = quantization.compare_quantization(
            lambda q: _load_model(args, q), settings, studies, args.images, **_run_options(args))
    except (OSError, ValueError, ModelLoadError) as exc:
        return _fail(str(exc))
    quantization.print_comparison(comparison, console)
    meta.update(source="model", mode="free" if args.free else "teacher_forced")
    if args.json:
        report.write_json(args.json, {**meta, **comparison.to_dict()})
    if args.radar:
        report.write_radar(
            args.radar, {s.name: s.scores.stage_scores() for s in comparison.settings}, "Stage scores by quantization"
        )
    return 0
