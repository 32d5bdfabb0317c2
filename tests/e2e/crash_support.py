"""Crash-test helpers: the node as a ``cxr-node serve`` subprocess on the tiny demo model, Orthanc as the PACS,
DCMTK storescu as the modality; what each kill left behind, what the sender had acknowledged, and what Orthanc holds
per study (one SR and one page series per generation, under the UIDs the node derives for it)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml
from ingest_support import start_cxr_node
from sqlalchemy import func, select

from dicomnode.db import Delivery, Instance, Job, Study, make_engine, make_session_factory
from dicomnode.db.models import utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.demo.run import NODE_AET, demo_config
from dicomnode.demo.synthetic import StudySpec, write_study
from dicomnode.peers.dcmtk import _require, acknowledged
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from dicomnode.uids import result_uids

HERE = Path(__file__).resolve().parent  # on the node's PYTHONPATH: failing_processor


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "X")
    return state not in ("Z", "X")


@dataclass
class Sent:
    study_uid: str
    files: list[Path]
    acked: set[str] = field(default_factory=set)


class CrashSite:
    """One Orthanc, one node data directory and config; the node is started and killed by the tests."""

    def __init__(self, workdir: Path, model_dir: Path, quiet_seconds: float = 2.0, page_processes: int = 2,
                 processor: str = "reasoning"):
        self.workdir = workdir
        self.orthanc = OrthancServer(workdir / "orthanc", aet="ORTHANC").start()
        self.port = free_port()
        config = demo_config(workdir, model_dir, self.port, self.orthanc)
        config.study.quiet_seconds = quiet_seconds
        config.reasoning.max_new_tokens = 8
        config.reasoning.priors.enabled = False
        config.output.page_processes = page_processes
        config.processing.poll_seconds = 0.2
        config.processing.processor = processor
        retry = config.destinations[0].retry
        retry.max_attempts, retry.initial_seconds, retry.max_seconds = 1000, 0.3, 1.5
        self.data_dir = Path(config.storage.data_dir)
        self.url = config.database_url
        self.config_path = workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
        self.engine = make_engine(self.url)
        self.db = make_session_factory(self.engine)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.sent: dict[str, Sent] = {}
        self._studies = 0

    # -- the node -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        self.starts += 1
        self.started_at = utcnow()
        path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE)) if p)
        self.process = start_cxr_node(["serve", "--config", str(self.config_path)],
                                      self.workdir / f"node-{self.starts}.log", self.port, timeout,
                                      {**os.environ, "PYTHONPATH": path})

    def kill9(self, child_timeout: float = 5.0) -> list[int]:
        """SIGKILL the node; return its child processes that outlived it by ``child_timeout`` s."""
        assert self.process is not None
        children = descendants(self.process.pid)
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        deadline = time.monotonic() + child_timeout
        while time.monotonic() < deadline and any(alive(c) for c in children):
            time.sleep(0.1)
        left = [c for c in children if alive(c)]
        for pid in left:  # do not leave them to the next test
            os.kill(pid, signal.SIGKILL)
        return left

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.engine.dispose()
        self.orthanc.kill()  # thrown away with the test's directory

    def __enter__(self) -> CrashSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the modality ---------------------------------------------------------------------------------------
    def new_study(self, views: Sequence[str] = ("PA", "LATERAL"), rows: int = 256, columns: int = 224,
                  **spec_fields: Any) -> Sent:
        self._studies += 1
        n = self._studies
        spec_fields = {"seed": n, "accession_number": f"K{n:05d}", "patient_id": f"CRASH{n:04d}", **spec_fields}
        spec = StudySpec(views=tuple(views), rows=rows, columns=columns, **spec_fields)
        files = write_study(self.workdir / "studies" / f"s{n}", spec)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        if uid in self.sent:  # more instances of a study sent before
            self.sent[uid].files.extend(files)
            return Sent(uid, files)
        self.sent[uid] = Sent(uid, files)
        return self.sent[uid]

    def send(self, study: Sent) -> subprocess.Popen[str]:
        """Start storescu -v on the study's files (one association)."""
        return subprocess.Popen([_require("storescu"), "-v", "-aet", "MODALITY", "-aec", NODE_AET, "127.0.0.1",
                                 str(self.port), *map(str, study.files)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish_send(self, study: Sent, sender: subprocess.Popen[str]) -> str:
        output, _ = sender.communicate(timeout=120)
        study.acked.update(acknowledged(output))
        return output

    # -- the node's database --------------------------------------------------------------------------------
    def stored(self, study_uid: str) -> set[str]:
        with self.db() as s:
            return set(s.scalars(select(Instance.sop_instance_uid).join(Study)
                                 .where(Study.study_instance_uid == study_uid)))

    def job_view(self, study_uid: str) -> tuple[str | None, int, Counter[str]]:
        """(state of the newest job, number of jobs, delivery states of the newest job)."""
        with self.db() as s:
            jobs = list(s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)
                                  .order_by(Job.generation)))
            if not jobs:
                return None, 0, Counter()
            states = Counter(s.scalars(select(Delivery.state).where(Delivery.job_id == jobs[-1].id)))
        return jobs[-1].state, len(jobs), states

    def jobs_where(self, state: JobState, delivery_states: Callable[[Counter[str]], bool],
                   sent_now: bool = False) -> list[int]:
        """Ids of the jobs in ``state`` whose delivery-state counts satisfy ``delivery_states``, and that the running
        node is working on: a PROCESSING job claimed by its process (not one a killed process left, which the new
        one re-queues as it starts), or (``sent_now``) a job of which it has sent an object since it started."""
        assert self.process is not None
        mine = f":{self.process.pid}:"
        with self.db() as s:
            ids = list(s.scalars(select(Job.id).where(Job.state == state.value)
                                 .where(Job.claimed_by.contains(mine) if state is JobState.PROCESSING else True)))
            found = []
            for job_id in ids:
                counts = Counter(s.scalars(select(Delivery.state).where(Delivery.job_id == job_id)))
                if sent_now and not s.scalar(select(Delivery.id).where(
                        Delivery.job_id == job_id, Delivery.sent_at >= self.started_at).limit(1)):
                    continue
                if delivery_states(counts):
                    found.append(job_id)
        return found

    def job_state(self, job_id: int) -> tuple[str, Counter[str]]:
        with self.db() as s:
            state = s.scalar(select(Job.state).where(Job.id == job_id))
            counts = Counter(s.scalars(select(Delivery.state).where(Delivery.job_id == job_id)))
        return str(state), counts

    def all_delivered(self) -> bool:
        with self.db() as s:
            n_studies = s.scalar(select(func.count()).select_from(Study))
            states = set(s.scalars(select(Job.state)))
            pending = s.scalar(select(func.count()).select_from(Delivery)
                               .where(Delivery.state != DeliveryState.SENT.value))
        return n_studies == len(self.sent) and states == {JobState.DELIVERED.value} and pending == 0

    def failed_jobs(self) -> list[str]:
        with self.db() as s:
            return [f"{j.id}: {j.error}" for j in s.scalars(select(Job).where(Job.state == JobState.FAILED.value))]

    # -- what the PACS holds --------------------------------------------------------------------------------
    def result_sets(self, study_uid: str) -> dict[str, Any]:
        """What Orthanc holds of the node's results for the study: SR SOP UIDs, page series -> page numbers."""
        srs: list[str] = []
        pages: dict[str, list[int]] = {}
        for series in self.orthanc.find("Series", {"StudyInstanceUID": study_uid}):
            tags = series["MainDicomTags"]
            if tags.get("Modality") not in ("SR", "OT"):
                continue
            instances = self.orthanc.rest_get(f"/series/{series['ID']}/instances")
            if tags["Modality"] == "SR":
                srs.extend(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)
            else:
                pages[tags["SeriesInstanceUID"]] = sorted(int(i["MainDicomTags"]["InstanceNumber"])
                                                          for i in instances)
        return {"sr": srs, "pages": pages}

    def result_set_problems(self) -> tuple[list[str], list[str]]:
        """(studies with an instance lost, studies not held as exactly one result set) over every study sent.

        One result set: all its instances stored, one generation, and in Orthanc exactly the SR and the page
        series the node derives for it, pages 1..N each once."""
        lost, duplicated = [], []
        for uid, study in self.sent.items():
            stored = self.stored(uid)
            if not ({p.stem for p in study.files} | study.acked) <= stored:
                lost.append(f"{uid}: sent/acknowledged instances missing from the node")
            _, n_jobs, _ = self.job_view(uid)
            expected = result_uids(uid, 1, NODE_AET)
            held = self.result_sets(uid)
            numbers = held["pages"].get(expected.sc_series, [])
            if (n_jobs != 1 or held["sr"] != [expected.sr_instance] or list(held["pages"]) != [expected.sc_series]
                    or not numbers or numbers != list(range(1, len(numbers) + 1))):
                duplicated.append(f"{uid}: {n_jobs} generation(s), SRs {held['sr']}, page series {held['pages']}")
        return lost, duplicated

    def assert_one_result_set_each(self) -> None:
        lost, duplicated = self.result_set_problems()
        assert not lost and not duplicated, lost + duplicated


def jitter(rng: random.Random, most: float) -> None:
    time.sleep(rng.uniform(0, most))
