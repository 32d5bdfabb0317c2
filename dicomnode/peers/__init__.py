"""Real peers on loopback for tests, benchmarks and demos: Orthanc, PostgreSQL and DCMTK tools on free ports."""
from __future__ import annotations

from dicomnode.peers.ports import free_port

__all__ = ["free_port"]
