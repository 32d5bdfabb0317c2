"""Node commands: ``serve``, ``status``, ``retry``, ``config check``, ``config init``, ``echo``, ``send``."""
from __future__ import annotations

import argparse
import faulthandler
import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.config import PASSTHROUGH, ConfigError, NodeConfig, load_config


def _load(path: str) -> NodeConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config {path} is invalid:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return None


ConfiguredCommand = Callable[[argparse.Namespace, NodeConfig], int]


Command = Callable[[argparse.Namespace], int]


def with_config(key: str = "config", invalid: int = 2) -> Callable[[ConfiguredCommand], Command]:
    """A command given the config loaded from the file ``args.<key>`` names; exit ``invalid`` (the problems on
    stderr) when it is not valid."""

    def wrap(command: ConfiguredCommand) -> Command:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            config = _load(getattr(args, key))
            return invalid if config is None else command(args, config)
        return run

    return wrap


def _database_error(command: str, config: NodeConfig, exc: Exception) -> int:
    """One clear line (no traceback, no password) for a database that cannot be used; exit code 1."""
    from sqlalchemy.engine import make_url

    from dicomnode.db.engine import error_summary

    try:
        where = make_url(config.database_url).render_as_string(hide_password=True)
    except Exception:  # validated at load; keep the message whatever happens
        where = "the configured database"
    print(f"{command}: database error on {where}: {error_summary(exc)}", file=sys.stderr)
    return 1


@with_config()
def cmd_serve(args: argparse.Namespace, config: NodeConfig) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.logs import setup_logging
    from dicomnode.node import Node

    setup_logging(config.logging.level, config.logging.json_, config.logging.file)
    if config.processing.processor == PASSTHROUGH:
        logging.getLogger("dicomnode.serve").warning(
            "processing.processor is passthrough: studies are received and stored but NOT processed; no results "
            "are produced or sent")
    from dicomnode.dashboard.auth import AuthSetupError

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` dumps every thread's stack
    try:
        return Node(config, role=args.role).run_until_signal()
    except SQLAlchemyError as exc:
        return _database_error("serve", config, exc)
    except AuthSetupError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2


@with_config("file", invalid=1)
def cmd_config_check(args: argparse.Namespace, config: NodeConfig) -> int:
    print(f"{args.file}: OK (AE {config.node.ae_title} port {config.node.port}, "
          f"{len(config.destinations)} destination(s), processor {config.processing.processor})")
    print(f"study completion: {config.study.completion}"
          + (" (MPPS only: no quiet timer)" if config.study.completion == "mpps" else ""))
    print(f"result objects made: {','.join(config.output.objects)}")
    for d in config.destinations:
        objects = getattr(d, "objects", None)
        print(f"destination {d.name}: {d.describe()}" + (f"; objects {','.join(objects)}" if objects else ""))
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    from dicomnode.site_config import InitError, write_site_config

    try:
        written = write_site_config(Path(args.dir), force=args.force)
    except InitError as exc:
        print(f"config init: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"next: edit them, then `cxr-node config check {written[0]}`")
    return 0


def _session_factory(config: NodeConfig) -> Any:
    from dicomnode.db import make_session_factory, upgrade_database

    upgrade_database(config.database_url)
    return make_session_factory(config.database_url)


@with_config()
def cmd_status(args: argparse.Namespace, config: NodeConfig) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        from dicomnode.commitment import commitment_destinations
        from dicomnode.status import status_summary

        summary = status_summary(_session_factory(config), commitment_destinations(config))
    except SQLAlchemyError as exc:
        return _database_error("status", config, exc)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"instances: {summary['instances']}   queue depth: {summary['queue_depth']}")
    for key in ("studies", "jobs", "deliveries"):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(summary[key].items())) or "none"
        print(f"{key}: {counts}")
    for name, c in sorted(summary["commitment"].items()):
        print(f"commitment {name}: committed={c['committed']}, pending commitment={c['pending_commitment']}"
              + (f", timed out={c['timed_out']}" if c["timed_out"] else ""))
    for f in summary["failed_jobs"]:
        print(f"FAILED job {f['job']} study {f['study']} gen {f['generation']}: {f['error']}")
    return 0


@with_config()
def cmd_retry(args: argparse.Namespace, config: NodeConfig) -> int:
    try:
        from dicomnode.jobs import retry_job
    except ImportError:
        print("retry: the worker module is not available in this build", file=sys.stderr)
        return 1
    from sqlalchemy.exc import SQLAlchemyError

    try:
        result = retry_job(_session_factory(config), args.job)
    except (LookupError, ValueError) as exc:
        print(f"retry: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        return _database_error("retry", config, exc)
    print(f"job {args.job}: {result if result is not None else 're-queued'}")
    return 0


def _peer(text: str, calling_aet: str) -> Any:
    from dicomnode.association import Peer

    return Peer.parse(text, calling_aet=calling_aet)


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.association import ScuError
    from dicomnode.scu import echo

    try:
        status = echo(_peer(args.peer, args.aet))
    except (ScuError, ValueError) as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 1
    print(f"{args.peer}: C-ECHO status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from dicomnode.association import ScuError
    from dicomnode.scu import store_files

    files: list[Path] = []
    for item in args.files:
        p = Path(item)
        files.extend(sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])
    if not getattr(args, "verbose", 0):  # pynetdicom's INFO lines ("Requesting Association") only with -v
        logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger("pynetdicom").level))
    try:
        outcomes = store_files(_peer(args.to, args.aet), files)
    except (ScuError, ValueError) as exc:
        print(f"send: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for o in outcomes:
        ok = o.error is None and o.status is not None
        failed += not ok
        status = f"0x{o.status:04X}" if o.status is not None else "-"
        print(f"{'OK  ' if ok else 'FAIL'} {status} {o.path}" + (f"  ({o.error})" if o.error else ""))
    print(f"sent {len(outcomes) - failed}/{len(outcomes)}")
    return 0 if failed == 0 else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from dicomnode.node import ROLES

    p = subparsers.add_parser("serve", help="run the DICOM node until SIGTERM/SIGINT")
    p.add_argument("--config", required=True, help="node YAML config")
    p.add_argument("--role", choices=ROLES, default="all",
                   help="listener, worker, both (all, the default; it also serves the dashboard when "
                        "dashboard.enabled) or dashboard (only the admin dashboard)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("status", help="queue and job summary")
    p.add_argument("--config", required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("retry", help="re-queue a FAILED job (or re-send its dead deliveries)")
    p.add_argument("job", type=int, help="job id (see `status`)")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_retry)

    p = subparsers.add_parser("config", help="configuration tools")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = sub.add_parser("check", help="validate a config file; names the bad key and why")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    init = sub.add_parser("init", help="write a commented starting config and the stage book into DIR to edit")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(func=cmd_config_init)

    p = subparsers.add_parser("echo", help="C-ECHO a peer")
    p.add_argument("peer", metavar="AE@HOST:PORT")
    p.add_argument("--aet", default="CXRNODE", help="calling AE title (default CXRNODE)")
    p.set_defaults(func=cmd_echo)

    p = subparsers.add_parser("send", help="C-STORE files (or directories) to a peer")
    p.add_argument("files", nargs="+")
    p.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    p.add_argument("--aet", default="CXRNODE", help="calling AE title (default CXRNODE)")
    p.set_defaults(func=cmd_send)
