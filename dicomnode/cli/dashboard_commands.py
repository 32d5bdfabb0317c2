"""`cxr-node dashboard hash-password`: a line for the dashboard's users file (``auth: {type: basic}``)."""
from __future__ import annotations

import argparse
import getpass
import sys


def cmd_hash_password(args: argparse.Namespace) -> int:
    from dicomnode.dashboard.auth import hash_password

    if ":" in args.user or not args.user.strip():
        print("dashboard hash-password: the user name must be non-empty and have no ':'", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass("password: ")
    if len(password) < 8:
        print("dashboard hash-password: use at least 8 characters", file=sys.stderr)
        return 2
    print(f"{args.user}:{hash_password(password)}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("dashboard", help="admin dashboard tools")
    sub = p.add_subparsers(dest="dashboard_command", metavar="SUBCOMMAND")
    hp = sub.add_parser("hash-password", help="print a users-file line NAME:HASH for dashboard auth type basic")
    hp.add_argument("user")
    hp.add_argument("--stdin", action="store_true", help="read the password from standard input")
    hp.set_defaults(func=cmd_hash_password)
