"""`cxr-node reason`: run the 8-stage reasoning flow on DICOM files and print a per-stage summary (or the JSON)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomnode.threads import add_threads_argument

ANSWER_WIDTH = 110


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "reason",
        help="run the 8-stage chest X-ray reasoning flow on DICOM files",
        description="Load a local vision-language model, walk the eight CXRTrek stages for one study (and optionally "
        "its prior) and print a per-stage summary; --json writes the reasoning record. Output is AI-generated and "
        "not verified by a physician.",
    )
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="DICOM files (or directories) of the study")
    backend = p.add_mutually_exclusive_group(required=True)
    backend.add_argument("--model", type=Path, metavar="DIR", help="local model directory")
    backend.add_argument("--engine", metavar="URL", help="an OpenAI-compatible engine (vLLM), e.g. http://host:8000/v1")
    p.add_argument("--engine-model", metavar="NAME", help="served model id (default: the engine's first)")
    p.add_argument("--prior", type=Path, nargs="*", default=[], metavar="FILE", help="DICOM files of a prior study")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the reasoning record as JSON ('-': stdout only)")
    p.add_argument("--quantization", default="nf4", choices=("nf4", "fp4", "int8", "none"),
                   help="weight quantization (default nf4; a pre-quantized checkpoint keeps its own)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--profile", help="model profile override (default: from the model's config)")
    p.add_argument("--stages", type=Path, metavar="YAML",
                   help="stage file (default: the stage book shipped with the package)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="cap every answer at N new tokens")
    p.add_argument("--max-side", type=int, metavar="PX", help="shrink images to at most PX on their longer side")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_threads_argument(p)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prompt for every question")
    p.add_argument("--no-constrain", action="store_true",
                   help="let the model write closed answers freely (default: decoded under their grammar)")
    p.add_argument("--parallel-within-stage", action="store_true",
                   help="ask a stage's independent questions together (blind to each other's answers)")
    p.add_argument("--thresholds", type=Path, metavar="YAML",
                   help="operating points per finding: a node config or a cxr-node eval --choose-thresholds file")
    p.set_defaults(func=run)


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return out


def read_datasets(paths: list[Path]) -> list[Dataset]:
    """Read DICOM files (directories are searched); raise ValueError naming a file that is not DICOM."""
    datasets: list[Dataset] = []
    for path in _expand(paths):
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:  # report which file and why
            raise ValueError(f"{path}: not a readable DICOM file ({exc})") from None
    return datasets


def _short(text: str, width: int = ANSWER_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_summary(record: object, console: object | None = None) -> None:
    """A readable per-stage summary of a reasoning record."""
    from rich.console import Console
    from rich.table import Table

    from inference.record import DEMO_STATEMENT, UNVERIFIED_STATEMENT, ReasoningRecord

    assert isinstance(record, ReasoningRecord)
    con = console if isinstance(console, Console) else Console()
    p = record.provenance
    if p.demo_model:
        con.print(f"[bold red]{DEMO_STATEMENT}[/]")
    con.print(f"[bold]Study[/] {record.study_instance_uid}"
              + (f"  [bold]prior[/] {record.prior_study_instance_uid}" if record.prior_study_instance_uid else ""))
    con.print(f"[bold]Model[/] {p.model_name} ({p.profile}, {p.quantization}, {p.dtype}, {p.device})"
              + (" [red]DEMO / untrained[/]" if p.demo_model else ""))
    con.print("[bold]Images[/] " + ", ".join(f"{i.index}: {i.role} {i.view} {i.columns}x{i.rows}"
                                              for i in record.images))
    for stage in record.stages:
        head = f"[bold]Stage {stage.number}: {stage.title}[/] - {stage.status.value}"
        if stage.reason:
            head += f" ({stage.reason})"
        if stage.questions:
            head += f"  {stage.seconds:.1f} s"
        con.print(head)
        if not stage.questions:
            continue
        table = Table(show_header=False, box=None, padding=(0, 1))
        table.add_column("id", style="cyan", no_wrap=True)
        table.add_column("answer")
        for q in stage.questions:
            parsed = q.parsed
            if not parsed.ok:
                answer = f"[yellow]unparsed ({parsed.error}):[/] {_short(q.raw_answer) or '(empty)'}"
            elif parsed.yes_no is not None:
                answer = ("yes" if parsed.yes_no else "no") + (f" - {_short(parsed.justification)}"
                                                               if parsed.justification else "")
            elif parsed.choices:
                answer = "; ".join(parsed.choices)
            elif parsed.boxes:
                answer = ", ".join(f"{b.target} img{b.image_index} ({b.pixels[0]:.0f},{b.pixels[1]:.0f})-"
                                   f"({b.pixels[2]:.0f},{b.pixels[3]:.0f}) px" for b in parsed.boxes)
            else:
                answer = _short(parsed.text)
            if q.answer_probability is not None:
                answer += f" [dim]({100 * q.answer_probability:.0f}%)[/]"
            table.add_row(q.id, answer)
        con.print(table)
    present = [f.label for f in record.findings if f.presence.value == "present"]
    uncertain = [f.label for f in record.findings if f.presence.value == "uncertain"]
    con.print(f"[bold]Findings present:[/] {', '.join(present) or 'none'}"
              + (f"   [bold]uncertain:[/] {', '.join(uncertain)}" if uncertain else ""))
    con.print(f"[bold]Report findings:[/] {record.report.findings or '-'}")
    con.print(f"[bold]Impression:[/] {record.report.impression or '-'}")
    con.print(f"{len(record.unparsed_questions)} unparsed answer(s); {p.prompt_tokens} prompt tokens computed, "
              f"{p.cached_tokens} reused from cache, {p.generated_tokens} generated in {p.seconds:.1f} s")
    con.print(f"[italic]{UNVERIFIED_STATEMENT}[/]")


def run(args: argparse.Namespace) -> int:
    from inference.operating_points import check_thresholds, read_thresholds
    from inference.stages import StageConfigError, load_stages

    try:
        book = load_stages(args.stages)
        thresholds = read_thresholds(args.thresholds.read_text(encoding="utf-8")) if args.thresholds else {}
        problems = check_thresholds(thresholds, {f.key: f.label for f in book.findings})
        if problems:
            raise ValueError(f"--thresholds {args.thresholds}: " + "; ".join(problems))
        current = read_datasets(args.files)
        prior = read_datasets(args.prior)
    except (StageConfigError, ValueError, OSError) as exc:
        print(f"cxr-node reason: error: {exc}", file=sys.stderr)
        return 2
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in current}
    if len(studies) > 1:
        print(f"cxr-node reason: error: the files belong to {len(studies)} studies; pass one study "
              "(a prior study goes after --prior)", file=sys.stderr)
        return 2
    from inference.flow import run_flow  # heavy imports (torch, transformers) only once the input is known good
    from inference.images import ImageError
    from inference.model import ModelLoadError, ModelSpec, open_chat_model

    spec = ModelSpec(backend="openai" if args.engine else "transformers", path=args.model, url=args.engine,
                     name=args.engine_model, quantization=args.quantization, device=args.device, profile=args.profile,
                     cache="none" if args.no_cache else "prefix", seed=args.seed, threads=args.threads)
    try:
        model = open_chat_model(spec)
    except (ModelLoadError, OSError, ValueError, RuntimeError) as exc:
        print(f"cxr-node reason: error: cannot load model {spec.where}: {exc}", file=sys.stderr)
        return 2
    try:
        record = run_flow(model, current, prior, book, max_new_tokens=args.max_new_tokens, seed=args.seed,
                          max_side=args.max_side, constrain=not args.no_constrain,
                          parallel_within_stage=args.parallel_within_stage, thresholds=thresholds)
    except ImageError as exc:
        print(f"cxr-node reason: error: {exc}", file=sys.stderr)
        return 2
    if args.json and str(args.json) == "-":
        sys.stdout.write(record.to_json() + "\n")
        return 0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(record.to_json(), encoding="utf-8")
    print_summary(record)
    if args.json:
        print(f"record written to {args.json}")
    return 0
