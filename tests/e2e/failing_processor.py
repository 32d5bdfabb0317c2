"""A reasoning processor that fails once, right after it published the SR of a job: the error path of a study
whose SR reached the PACS and whose pages did not (what a page refused by the validator gives), on demand.
Loaded by the node as ``processing.processor: failing_processor:sr_then_fail_once``."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dicomnode.config import NodeConfig
from dicomnode.processing import ProcessorOutput, StudyInput
from dicomnode.reasoning import ReasoningProcessor


class SrThenFailOnce(ReasoningProcessor):
    def process(self, study: StudyInput) -> Iterator[ProcessorOutput]:
        marker = Path(self.config.storage.data_dir) / f"failed-once-{study.job_id}"
        for output in super().process(study):
            yield output
            if not marker.exists() and getattr(output, "kind", None) == "sr":
                marker.touch()
                raise RuntimeError("injected failure after the SR was published")


def sr_then_fail_once(config: NodeConfig) -> SrThenFailOnce:
    return SrThenFailOnce(config)
