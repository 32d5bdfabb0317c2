"""The product in a hospital's shape on loopback: Orthanc as PACS with the routing rule, the node with the reasoning
processor on a tiny NF4 demo model, results back in Orthanc."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import NodeConfig
from dicomnode.demo.run import NODE_AET, PACS_AET, demo_config, results_of_study, routing_rule_path
from dicomnode.node import Node
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Site:
    """A PACS and the node pointed at it."""

    orthanc: OrthancServer
    node: Node
    config: NodeConfig

    def results(self, study_uid: str) -> tuple[list[dict], list[dict]]:
        """(SR instances, SC instances) Orthanc holds for the study."""
        return results_of_study(self.orthanc, study_uid)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, qwen_demo_dir: Path) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("site")
    node_port = free_port()
    orthanc = OrthancServer(workdir / "orthanc", aet=PACS_AET, stable_age=1,
                            modalities={NODE_AET: (NODE_AET, "127.0.0.1", node_port)},
                            lua_scripts=[routing_rule_path()])
    config = demo_config(workdir, qwen_demo_dir, node_port, orthanc)
    config.study.quiet_seconds = 1
    config.reasoning.max_new_tokens = 8
    with orthanc, Node(config, role="all") as node:
        yield Site(orthanc, node, config)
