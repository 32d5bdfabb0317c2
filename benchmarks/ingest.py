"""Ingest throughput: the node (durable mode, real config) against DCMTK storescp, same files, same run.

Sends the same set of synthetic 2500x2048 16-bit DX instances with DCMTK storescu, one association per round, to
``cxr-node serve`` (a subprocess with a YAML config: fsync on, SQLite WAL, completion timers) and to ``storescp``
(writes files, no fsync). Rounds alternate which receiver goes first; each round uses fresh output directories
(the node would otherwise answer duplicates without writing) and starts after a ``sync`` (storescp leaves its
data dirty in the page cache; the node's fsyncs would otherwise wait behind that write-back). Prints per-round
seconds and the median ratio node/storescp (goal: <= 1.0).

    .venv/bin/python -m benchmarks.ingest [--count 40] [--rounds 4] [--role listener] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dicomnode.datadir import DataDir
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import StoreSCP
from dicomnode.peers.ports import free_port, wait_for_port

NODE_AET = "CXRNODE"
CXR_NODE = str(Path(sys.executable).with_name("cxr-node"))


def _send(files: list[Path], ae: str, port: int) -> float:
    """Seconds for one storescu association sending ``files``; fails loudly on any error.

    Dirty pages left by the previous round (storescp never fsyncs) are flushed first, untimed, so that neither
    receiver pays for the other's write-back.
    """
    os.sync()
    start = time.perf_counter()
    result = subprocess.run(["storescu", "-aec", ae, "127.0.0.1", str(port), *map(str, files)],
                            capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or "E:" in result.stdout + result.stderr:
        raise RuntimeError(f"storescu to {ae} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def _node_round(files: list[Path], workdir: Path, role: str) -> float:
    data_dir = workdir / "node-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    config = {
        "node": {"ae_title": NODE_AET, "host": "127.0.0.1", "port": port, "max_associations": 10,
                 "min_free_disk_mb": 512},
        "storage": {"data_dir": str(data_dir), "database_url": None, "fsync": True},
        "study": {"quiet_seconds": 10},
        "processing": {"processor": "passthrough"},
        "logging": {"level": "INFO", "json": True, "file": str(workdir / "node.jsonl")},
    }
    config_path = workdir / "node.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with open(workdir / "node.out", "ab") as log:
        process = subprocess.Popen([CXR_NODE, "serve", "--config", str(config_path), "--role", role],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_for_port(port, timeout=120):
            raise RuntimeError("node did not start; see node.out")
        elapsed = _send(files, NODE_AET, port)
        stored = sum(1 for p in DataDir(data_dir).spool.rglob("*.dcm"))
        if stored != len(files):
            raise RuntimeError(f"node stored {stored} of {len(files)}")
        return elapsed
    finally:
        process.terminate()
        process.wait(120)
        shutil.rmtree(data_dir, ignore_errors=True)


def _storescp_round(files: list[Path], workdir: Path) -> float:
    out = workdir / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    with StoreSCP(out, aet="STORESCP") as scp:
        elapsed = _send(files, "STORESCP", scp.port)
        if len(scp.received()) != len(files):
            raise RuntimeError(f"storescp stored {len(scp.received())} of {len(files)}")
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="instances (>= 40 for the reported figure)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--role", default="listener", choices=("listener", "all"), help="node role to run")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxr-ingest-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        spec = StudySpec(views=("PA",) * args.count, rows=args.rows, columns=args.columns, bits_stored=16)
        files = write_study(workdir / "input", spec)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} DX instances {args.rows}x{args.columns} 16-bit, {size_mb:.0f} MB in total")
        node_times: list[float] = []
        scp_times: list[float] = []
        for n in range(args.rounds):
            order = ("node", "storescp") if n % 2 == 0 else ("storescp", "node")
            for which in order:
                if which == "node":
                    node_times.append(_node_round(files, workdir, args.role))
                else:
                    scp_times.append(_storescp_round(files, workdir))
            print(f"round {n + 1}: node {node_times[-1]:.2f} s  storescp {scp_times[-1]:.2f} s  "
                  f"ratio {node_times[-1] / scp_times[-1]:.2f}")
        node_med, scp_med = statistics.median(node_times), statistics.median(scp_times)
        ratios = [a / b for a, b in zip(node_times, scp_times, strict=False)]
        print(f"median node {node_med:.2f} s ({size_mb / node_med:.0f} MB/s), "
              f"median storescp {scp_med:.2f} s ({size_mb / scp_med:.0f} MB/s)")
        print(f"ratio node/storescp (median of rounds): {statistics.median(ratios):.2f}  (goal <= 1.0)")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
