"""A destination type that exists only in the tests (``type: folder``), registered the way a site's plug-in
registers one (``plugins: [folder_destination]`` in the config): the proof that a new destination type is one module
and one registration, with no branch in the delivery code.

It copies each DICOM result object of the kinds it takes into ``path``, and (``summary: true``) also queues one JSON
message per result set, built when the whole set is stored: a payload that is not a DICOM object. A missing folder is
a failed attempt (retried); ``refuse`` names a kind it refuses for good.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from dicomnode.destinations import (
    DeliveryItem,
    DicomObjectDestination,
    Outcome,
    Payload,
    ResultSet,
    handler_for,
)
from dicomnode.destinations.base import DicomObjectSender

SUMMARY_MEDIA_TYPE = "application/json"


class FolderDestination(DicomObjectDestination):
    type: Literal["folder"] = "folder"
    path: Path
    summary: bool = False
    refuse: str | None = None

    @property
    def address(self) -> str:
        return f"folder {self.path}"


@handler_for(FolderDestination)
class FolderSender(DicomObjectSender[FolderDestination]):
    def result_set_payloads(self, result: ResultSet) -> list[Payload]:
        if not self.destination.summary:
            return []
        body = {"job": result.job_id, "study": result.study_instance_uid, "generation": result.generation,
                "objects": [{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid} for o in result.objects],
                "replaces": result.earlier_keys, "has_record": result.record_json is not None}
        return [Payload("summary", f"summary-{result.study_instance_uid}-{result.generation}", SUMMARY_MEDIA_TYPE,
                        data=json.dumps(body).encode(), suffix=".json")]

    def send(self, items: Sequence[DeliveryItem]) -> list[Outcome]:
        outcomes = []
        for item in items:
            if item.kind == self.destination.refuse:
                outcomes.append(Outcome.failed(f"{item.kind} refused by the folder", permanent=True))
            elif not self.destination.path.is_dir():
                outcomes.append(Outcome.failed(f"no folder {self.destination.path}"))
            else:
                shutil.copyfile(item.path, self.destination.path / item.path.name)
                outcomes.append(Outcome(True))
        return outcomes
