"""`cxr-node` command line: one sub-module per command group, each exposing ``register(subparsers)``.

Each registered sub-command sets ``func`` (``args -> int`` exit code) with ``parser.set_defaults``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Command-group modules, in help order. Each defines
# register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None.
COMMAND_MODULES: tuple[str, ...] = (
    "dicomnode.cli.node_commands",  # serve, status, retry, config check, echo, send
    "dicomnode.cli.reason_commands",  # reason
    "dicomnode.cli.model_commands",  # model demo, model quantize
    "dicomnode.cli.render_commands",  # render
    "dicomnode.cli.eval_commands",  # eval
    "dicomnode.cli.demo_commands",  # demo, run (batch)
    "dicomnode.cli.dashboard_commands",  # dashboard hash-password
    "dicomnode.cli.feedback_commands",  # feedback report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-node", description="CXR reasoning node")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # group not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from inference.threads import passive_wait

    passive_wait()  # first: OpenMP reads its wait policy once, when torch loads (no command module imports torch)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from dicomnode.association import configure_pynetdicom

    configure_pynetdicom()  # the process-wide pynetdicom switches, once, before any command runs
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
