"""Real peers on loopback for the demo, tests and benchmarks: Orthanc, OHIF, DCMTK tools and dcmqrscp, tiny-pacs and a
vLLM serving engine on free ports (the tests' PostgreSQL is ``tests/postgres_server.py``)."""
from __future__ import annotations

from dicomnode.peers.ports import free_port

__all__ = ["free_port"]
