"""A reasoning processor that fails once, right after it published the SR of a job: the error path of a study
whose SR reached the PACS and whose pages did not (what a page refused by the validator gives), on demand.
Loaded by the node as ``processing.processor: failing_processor:sr_then_fail_once``."""
from __future__ import annotations

from pathlib import Path

from dicomnode.config import NodeConfig
from dicomnode.processing import ProcessingResult, ResultObject, StudyInput
from dicomnode.reasoning import ReasoningProcessor


class SrThenFailOnce(ReasoningProcessor):
    def process(self, study: StudyInput) -> ProcessingResult:
        marker = Path(self.config.storage.data_dir) / f"failed-once-{study.job_id}"
        publish = study.publish
        if marker.exists() or publish is None:
            return super().process(study)

        def publish_then_fail(obj: ResultObject) -> None:
            publish(obj)
            if obj.kind == "sr":
                marker.touch()
                raise RuntimeError("injected failure after the SR was published")

        study.publish = publish_then_fail
        return super().process(study)


def sr_then_fail_once(config: NodeConfig) -> SrThenFailOnce:
    return SrThenFailOnce(config)
