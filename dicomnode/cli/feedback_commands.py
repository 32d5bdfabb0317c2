"""``cxr-node feedback report``: the agreement between the node's findings and the radiologists' final reports
(dicomnode/feedback), the same table as the dashboard's /feedback page."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import asdict

from dicomnode.cli.node_commands import _database_error, _session_factory, with_config
from dicomnode.config import NodeConfig


@with_config()
def cmd_report(args: argparse.Namespace, config: NodeConfig) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.feedback.report import agreement_table, disagreements, format_table, message_counts

    try:
        since = dt.datetime.combine(dt.date.fromisoformat(args.since), dt.time(), tzinfo=dt.UTC) if args.since else None
    except ValueError:
        print(f"feedback report: --since {args.since!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    try:
        factory = _session_factory(config)
        rows = agreement_table(factory, since)
        counts = message_counts(factory)
        differing = disagreements(factory, args.disagreements) if args.disagreements else []
    except SQLAlchemyError as exc:
        return _database_error("feedback report", config, exc)
    if args.json:
        print(json.dumps({"messages": counts,
                          "agreement": [asdict(r) | {"compared": r.compared, "agreement": r.agreement} for r in rows],
                          "disagreements": [asdict(d) | {"reported_at": d.reported_at.isoformat(),
                                                         "evidence": None, "accession_number": None}
                                            for d in differing]}, indent=2))
        return 0
    print("feedback messages: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"))
    print(("since " + args.since + "\n" if args.since else "") + format_table(rows), end="")
    for d in differing:
        print(f"DISAGREE {d.reported_at:%Y-%m-%d %H:%M} study {d.study_instance_uid} job {d.job_id} {d.finding}: "
              f"model {d.model or '-'}, radiologist {d.radiologist} ({d.model_version})")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("feedback", help="the radiologists' verdicts fed back (HL7 ORU^R01)")
    sub = p.add_subparsers(dest="feedback_command", metavar="SUBCOMMAND")
    report = sub.add_parser("report", help="agreement per finding and model version with the radiologists' reports")
    report.add_argument("--config", required=True, help="node YAML config")
    report.add_argument("--since", metavar="YYYY-MM-DD", help="only reports received since this day (UTC)")
    report.add_argument("--disagreements", type=int, default=0, metavar="N",
                        help="also list the newest N findings where the model and the radiologist disagree")
    report.add_argument("--json", action="store_true", help="machine-readable output (no report text)")
    report.set_defaults(func=cmd_report)
