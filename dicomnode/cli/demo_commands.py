"""`cxr-node demo` (the whole product on loopback) and `cxr-node run` (batch reasoning over a folder)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dicomnode.threads import add_threads_argument


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo", help="end-to-end demo: Orthanc PACS -> routing rule -> node -> SR + SC back in Orthanc",
        description="Builds the untrained demo model, starts Orthanc and the node on loopback (SQLite), sends a "
        "synthetic PA + lateral chest study to Orthanc, waits for the SR and SC to come back and prints where to "
        "look. The demo model has random weights: its answers are meaningless.")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"), help="working folder (default var/demo)")
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for results (default 900)")
    demo.add_argument("--keep-running", action="store_true", help="keep Orthanc and the node up until Ctrl-C")
    demo.add_argument("--viewer", action="store_true",
                      help="also serve the OHIF viewer against the demo's Orthanc (DICOMweb) and print the study's "
                      "viewer URL; implies --keep-running")
    demo.add_argument("--ohif-dist", type=Path, metavar="DIR",
                      help="OHIF's prebuilt dist/ (default: $CXR_OHIF_DIST or .cache/ohif/app/dist from bootstrap)")
    demo.add_argument("--ris", action="store_true",
                      help="also send the results as an HL7 v2 ORU^R01 to an MLLP receiver (npm node-hl7-server) and "
                      "as a FHIR Bundle to a FHIR server (npm @medplum/fhir-router), both on loopback, and print what "
                      "each received (scripts/bootstrap.sh installs them)")
    demo.set_defaults(func=run_demo_command)

    run = subparsers.add_parser(
        "run", help="batch mode: reason over a folder of DICOM files offline, per study SR + SC + PNG pages",
        description="Processes DICOM files grouped by study with the reasoning flow, writing OUT/<study>/sr.dcm, "
        "sc-N.dcm, page-N.png and record.json. No network, no database.")
    run.add_argument("input", type=Path, metavar="DIR", help="folder searched recursively for DICOM files")
    backend = run.add_mutually_exclusive_group(required=True)
    backend.add_argument("--model", type=Path, metavar="DIR", help="local model directory")
    backend.add_argument("--engine", metavar="URL",
                         help="an OpenAI-compatible engine (vLLM) instead, e.g. http://host:8000/v1")
    run.add_argument("--engine-model", metavar="NAME", help="served model id (default: the engine's first)")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    run.add_argument("--config", type=Path, help="node config for model/reasoning/output settings (optional)")
    run.add_argument("--quantization", choices=("nf4", "fp4", "int8", "none"), help="override model.quantization")
    run.add_argument("--device", help="override model.device (auto, cpu, cuda)")
    run.add_argument("--max-new-tokens", type=int, help="override reasoning.max_new_tokens")
    add_threads_argument(run, "model.threads, else every usable core, or OMP_NUM_THREADS when set")
    run.set_defaults(func=run_batch_command)


def run_demo_command(args: argparse.Namespace) -> int:
    import logging

    from dicomnode.demo.run import print_result, run_demo

    if not args.verbose:  # the demo narrates itself; the node's INFO lines would drown it (-v shows them)
        logging.getLogger().setLevel(logging.WARNING)

    print("CXR reasoning node demo. The demo model is UNTRAINED (random weights): every answer it gives is "
          "meaningless, and every output is marked DEMO and 'AI-generated, not verified'.", flush=True)
    keep_running = args.keep_running or args.viewer  # the viewer is only up while the demo runs
    try:
        result = run_demo(args.workdir, timeout=args.timeout, keep_running=keep_running,
                          say=lambda text: print(text, flush=True), viewer=args.viewer, ohif_dist=args.ohif_dist,
                          ris=args.ris)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"cxr-node demo: failed: {exc}", file=sys.stderr)
        return 1
    if not keep_running:
        result.dashboard_url = ""  # stopped with the node
        print_result(result, print)
        stopped = "Orthanc, the node and the RIS peers" if args.ris else "Orthanc and the node"
        print(f"{stopped} have been stopped; run with --keep-running to browse the URLs.")
    return 0


def run_batch_command(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from dicomnode.batch import group_by_study, run_batch
    from dicomnode.config import ConfigError, config_from_dict, load_config

    model: dict[str, object] = ({"backend": "openai", "url": args.engine} if args.engine
                                else {"backend": "transformers", "path": args.model})
    if args.engine and args.engine_model:
        model["name"] = args.engine_model
    try:  # the command line's model (a directory or an engine) replaces the config's
        config = load_config(args.config) if args.config else config_from_dict({"model": model})
    except ConfigError as exc:
        print(f"cxr-node run: {exc}", file=sys.stderr)
        return 2
    for key, value in model.items():
        setattr(config.model, key, value)
    if args.quantization:
        config.model.quantization = args.quantization
    if args.device:
        config.model.device = args.device
    if args.max_new_tokens:
        config.reasoning.max_new_tokens = args.max_new_tokens
    if args.threads:
        config.model.threads = args.threads
    if not args.input.is_dir():
        print(f"cxr-node run: {args.input} is not a folder", file=sys.stderr)
        return 2
    from dicomnode.reasoning import ReasoningProcessor
    from dicomnode.threads import apply_node_threads

    if config.model.backend == "transformers":
        apply_node_threads(config, "run")  # one study at a time, nothing else beside it
    studies, skipped = group_by_study(p for p in args.input.rglob("*") if p.is_file())
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}")
    processor = ReasoningProcessor(config)
    args.out.mkdir(parents=True, exist_ok=True)
    with Progress() as progress:
        task = progress.add_task("studies", total=len(studies))
        outcomes = run_batch(studies, processor, args.out, progress=lambda uid: progress.advance(task))
    failed = [o for o in outcomes if not o.ok]
    demo = " (DEMO model: untrained, meaningless output)" if processor.model and processor.model.info.demo_model else ""
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} studies reasoned{demo}; results in {args.out}")
    for o in failed:
        print(f"  FAILED {o.out_dir.name}: {o.error}")
    return 1 if failed else 0
