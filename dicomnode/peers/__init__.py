"""Real peers on loopback for the demo, tests and benchmarks: Orthanc, OHIF and DCMTK tools on free ports (the
tests' PostgreSQL is ``tests/postgres_server.py``, their vLLM engine ``tests/vllm_engine.py``, their second and third
PACS ``tests/dcmqrscp_server.py`` and ``tests/tiny_pacs_server.py``)."""
from __future__ import annotations

from dicomnode.peers.ports import free_port

__all__ = ["free_port"]
