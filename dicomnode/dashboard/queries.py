"""What the dashboard pages show, read from the node's database (the same rows ``cxr-node status`` reads) and its
data directory. Read-only; every function takes a session factory and returns plain data for a template."""
from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeConfig
from dicomnode.datadir import DataDir
from dicomnode.db.models import AuditEvent, Delivery, Instance, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.status import status_summary
from dicomnode.uids import is_valid_uid
from inference.triage import Priority

PAGE_SIZE = 50
STATES = [s.value for s in JobState]
TRIAGE = [p.value for p in reversed(Priority)]  # stat first
Factory = sessionmaker[Session]


def first_line(text: str | None, limit: int = 200) -> str:
    return (str(text).strip().splitlines() or [""])[0][:limit] if text else ""


# -- overview ----------------------------------------------------------------------------------------------------
@dataclass
class DestinationRow:
    name: str
    address: str
    up: bool | None  # None: never attempted
    detail: str
    last_success: dt.datetime | None
    pending: int
    dead: int
    configured: bool = True


def destination_rows(session_factory: Factory, config: NodeConfig) -> list[DestinationRow]:
    """Each destination: up/down as the health check sees it, last success, pending and dead rows."""
    from dicomnode.health import delivery_check

    checks = delivery_check(session_factory)()
    with session_factory() as s:
        counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for name, state, n in s.execute(select(Delivery.destination, Delivery.state, func.count())
                                        .group_by(Delivery.destination, Delivery.state)):
            counts[name][state] = n
        last_sent = dict(s.execute(select(Delivery.destination, func.max(Delivery.sent_at))
                                   .group_by(Delivery.destination)).all())
    configured = {d.name: d for d in config.destinations}
    rows = []
    for name in [*configured, *sorted(set(counts) - set(configured))]:
        check = checks.get(f"destination:{name}")
        d = configured.get(name)
        rows.append(DestinationRow(
            name=name, address=d.address if d else "(no longer configured)",
            up=None if check is None else check.ok, detail=check.detail if check else "no attempt yet",
            last_success=last_sent.get(name), pending=counts[name][DeliveryState.PENDING.value],
            dead=counts[name][DeliveryState.DEAD.value], configured=d is not None))
    return rows


@dataclass
class Throughput:
    """Per hour of the last 24 h (oldest first): instances received, jobs finished (delivered), objects sent."""

    hours: list[dt.datetime]
    received: list[int]
    finished: list[int]
    sent: list[int]


def throughput(session_factory: Factory, now: dt.datetime | None = None, hours: int = 24) -> Throughput:
    now = now or utcnow()
    end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    start = end - dt.timedelta(hours=hours)
    buckets = [start + dt.timedelta(hours=i) for i in range(hours)]

    def per_hour(column: Any, *where: Any) -> list[int]:
        out = [0] * hours
        with session_factory() as s:
            for (at,) in s.execute(select(column).where(column >= start, *where)):
                index = int((at - start).total_seconds() // 3600)
                if 0 <= index < hours:
                    out[index] += 1
        return out

    return Throughput(buckets, per_hour(Instance.received_at),
                      per_hour(Job.finished_at, Job.state == JobState.DELIVERED.value),
                      per_hour(Delivery.sent_at))


@dataclass
class NodeProcess:
    role: str
    called_aet: str | None
    started_at: dt.datetime
    running: bool


def node_processes(session_factory: Factory, limit: int = 200) -> list[NodeProcess]:
    """Node processes per role from the audit trail (``node.started`` without a later ``node.stopped``)."""
    with session_factory() as s:
        rows = s.execute(select(AuditEvent.kind, AuditEvent.at, AuditEvent.called_aet, AuditEvent.detail)
                         .where(AuditEvent.kind.in_(("node.started", "node.stopped")))
                         .order_by(AuditEvent.id.desc()).limit(limit)).all()
    latest: dict[str, NodeProcess] = {}
    stopped: set[str] = set()
    for kind, at, aet, detail in rows:  # newest first
        role = str((detail or {}).get("role", "?"))
        if kind == "node.stopped":
            stopped.add(role)
        elif role not in latest:
            latest[role] = NodeProcess(role, aet, at, role not in stopped)
    return sorted(latest.values(), key=lambda p: p.role)


def processing_jobs(session_factory: Factory) -> list[dict[str, Any]]:
    """Jobs being processed now: which worker, since when, last heartbeat."""
    with session_factory() as s:
        rows = s.execute(select(Job.id, Study.study_instance_uid, Job.claimed_by, Job.claimed_at, Job.updated_at)
                         .join(Study, Study.id == Job.study_id)
                         .where(Job.state == JobState.PROCESSING.value).order_by(Job.claimed_at)).all()
    return [{"job": j, "study": u, "worker": w, "since": c, "heartbeat": h} for j, u, w, c, h in rows]


def overview(session_factory: Factory, config: NodeConfig, live: dict[str, Any] | None) -> dict[str, Any]:
    from dicomnode.datadir import free_disk_mb

    summary = status_summary(session_factory)
    try:
        free: float | None = free_disk_mb(config.storage.data_dir)
    except OSError:
        free = None
    return {
        "summary": summary,
        "studies_by_state": {state: summary["studies"].get(state, 0) for state in STATES},
        "destinations": destination_rows(session_factory, config),
        "disk_free_mb": free,
        "disk_floor_mb": config.node.min_free_disk_mb,
        "disk_ok": free is not None and free >= config.node.min_free_disk_mb,
        "throughput": throughput(session_factory),
        "processes": node_processes(session_factory),
        "processing": processing_jobs(session_factory),
        "live": live or {},
        "model": {"processor": config.processing.processor, "path": str(config.model.path or ""),
                  "quantization": config.model.quantization, "device": config.model.device,
                  "workers": config.processing.workers},
    }


# -- studies -----------------------------------------------------------------------------------------------------
@dataclass
class StudyFilter:
    state: str = ""
    destination: str = ""
    received_from: dt.date | None = None
    received_to: dt.date | None = None
    q: str = ""  # accession number, or study UID (or its beginning)
    triage: str = ""  # a priority (TRIAGE), or "raised" (urgent or stat)
    page: int = 1

    def query_string(self, **override: Any) -> str:
        from urllib.parse import urlencode

        values = {"state": self.state, "destination": self.destination,
                  "from": self.received_from.isoformat() if self.received_from else "",
                  "to": self.received_to.isoformat() if self.received_to else "", "q": self.q,
                  "triage": self.triage, "page": self.page}
        values.update(override)
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


@dataclass
class StudyRow:
    id: int
    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    state: str
    state_reason: str | None
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    instance_count: int
    selected_count: int
    generation: int
    deliveries: Counter[str] = field(default_factory=Counter)
    patient_name: str | None = None
    triage_priority: str | None = None  # of its newest results (None: not assessed)


def _study_conditions(f: StudyFilter) -> list[Any]:
    where: list[Any] = []
    if f.state:
        where.append(Study.state == f.state)
    if f.received_from:
        where.append(Study.last_received_at >= dt.datetime.combine(f.received_from, dt.time(), dt.UTC))
    if f.received_to:
        where.append(Study.first_received_at < dt.datetime.combine(f.received_to + dt.timedelta(days=1), dt.time(),
                                                                   dt.UTC))
    if f.destination:
        where.append(select(Delivery.id).join(Job, Job.id == Delivery.job_id)
                     .where(Job.study_id == Study.id, Delivery.destination == f.destination).exists())
    if f.triage == "raised":
        where.append(Study.triage_priority.in_([p.value for p in Priority if p is not Priority.ROUTINE]))
    elif f.triage:
        where.append(Study.triage_priority == f.triage)
    q = f.q.strip()
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(or_(Study.accession_number == q, Study.study_instance_uid.like(escaped + "%", escape="\\")))
    return where


def list_studies(session_factory: Factory, f: StudyFilter, page_size: int = PAGE_SIZE) -> tuple[list[StudyRow], int]:
    """One page of studies (newest activity first) and the number matching the filter."""
    where = _study_conditions(f)
    with session_factory() as s:
        total = int(s.scalar(select(func.count()).select_from(Study).where(*where)) or 0)
        studies = s.scalars(select(Study).where(*where).order_by(Study.last_received_at.desc(), Study.id.desc())
                            .limit(page_size).offset(max(f.page - 1, 0) * page_size)).all()
        rows = [StudyRow(st.id, st.study_instance_uid, st.accession_number, st.patient_id, st.state, st.state_reason,
                         st.first_received_at, st.last_received_at, st.instance_count, st.selected_count,
                         st.generation, triage_priority=st.triage_priority) for st in studies]
        by_id = {r.id: r for r in rows}
        if by_id:
            for study_id, state, n in s.execute(
                    select(Job.study_id, Delivery.state, func.count()).join(Job, Job.id == Delivery.job_id)
                    .where(Job.study_id.in_(by_id)).group_by(Job.study_id, Delivery.state)):
                by_id[study_id].deliveries[state] = n
    return rows, total


def destination_names(session_factory: Factory, config: NodeConfig) -> list[str]:
    with session_factory() as s:
        seen = set(s.scalars(select(Delivery.destination).distinct()))
    return [*[d.name for d in config.destinations], *sorted(seen - {d.name for d in config.destinations})]


class _HeaderCache:
    """Patient names already read, by instance file (a stored file never changes): least recently used dropped."""

    def __init__(self, size: int = 20_000) -> None:
        import threading
        from collections import OrderedDict

        self.size = size
        self._names: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            if key in self._names:
                self._names.move_to_end(key)
                return self._names[key]
        return None

    def put(self, key: str, name: str) -> None:
        with self._lock:
            self._names[key] = name
            while len(self._names) > self.size:
                self._names.popitem(last=False)


_PATIENT_NAMES = _HeaderCache()


def patient_names(session_factory: Factory, data_dir: DataDir, study_ids: list[int]) -> dict[int, str]:
    """Patient name of each study, read from the header of its first stored instance (the database keeps none).
    Only for an authenticated admin; studies whose files retention removed get none."""
    import pydicom

    if not study_ids:
        return {}
    with session_factory() as s:
        first = (select(Instance.study_id, func.min(Instance.id).label("id")).where(Instance.study_id.in_(study_ids))
                 .group_by(Instance.study_id).subquery())
        paths = s.execute(select(Instance.study_id, Instance.path).join(first, Instance.id == first.c.id)).all()
    names: dict[int, str] = {}
    for study_id, path in paths:
        key = str(data_dir.absolute(path))
        name = _PATIENT_NAMES.get(key)
        if name is None:
            try:
                ds = pydicom.dcmread(key, stop_before_pixels=True, specific_tags=["PatientName"])
            except (OSError, ValueError, pydicom.errors.InvalidDicomError):
                continue
            name = str(ds.get("PatientName", "") or "")
            _PATIENT_NAMES.put(key, name)
        names[study_id] = name
    return names


# -- one study ---------------------------------------------------------------------------------------------------
@dataclass
class Page:
    job_id: int
    number: int
    file: Path


@dataclass
class StudyDetail:
    study: Study
    jobs: list[Job]
    instances: list[Instance]
    timeline: list[AuditEvent]
    deliveries: list[Delivery]
    pages: list[Page]
    record: Any | None  # inference.record.ReasoningRecord of the newest job with results
    record_job_id: int | None
    sr_files: list[Path]
    destinations: list[str]


def page_files(data_dir: DataDir, study_uid: str, job_id: int) -> list[Page]:
    """The job's SC reasoning pages (``sc-<SOP Instance UID>.dcm``), numbered by their Instance Number."""
    import pydicom

    pages = []
    for path in data_dir.results(study_uid, job_id).glob("sc-*.dcm"):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"])
            pages.append(Page(job_id, int(header.get("InstanceNumber") or 0), path))
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            continue
    return sorted(pages, key=lambda p: (p.number, p.file.name))


def study_detail(session_factory: Factory, config: NodeConfig, study_uid: str) -> StudyDetail | None:
    from inference.record import ReasoningRecord

    if not is_valid_uid(study_uid):
        return None
    data_dir = DataDir(config.storage.data_dir)
    with session_factory() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            return None
        jobs = list(s.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.generation)))
        job_ids = [j.id for j in jobs]
        instances = list(s.scalars(select(Instance).where(Instance.study_id == study.id)
                                   .order_by(Instance.received_at, Instance.id)))
        timeline = list(s.scalars(select(AuditEvent).where(or_(
            AuditEvent.study_instance_uid == study_uid,
            and_(AuditEvent.study_instance_uid.is_(None), AuditEvent.job_id.in_(job_ids or [-1]))))
            .order_by(AuditEvent.at, AuditEvent.id)))
        deliveries = list(s.scalars(select(Delivery).where(Delivery.job_id.in_(job_ids or [-1]))
                                    .order_by(Delivery.job_id, Delivery.destination, Delivery.object_kind,
                                              Delivery.id)))
        s.expunge_all()
    record = record_job = None
    pages: list[Page] = []
    sr_files: list[Path] = []
    for job in reversed(jobs):  # the newest job that wrote results
        if job.record_path:
            try:
                record = ReasoningRecord.load(data_dir.absolute(job.record_path))
            except (OSError, ValueError):
                record = None
        pages = page_files(data_dir, study_uid, job.id)
        sr_files = sorted(data_dir.results(study_uid, job.id).glob("sr-*.dcm"))
        if record is not None or pages:
            record_job = job.id
            break
    return StudyDetail(study, jobs, instances, timeline, deliveries, pages, record, record_job, sr_files,
                       destination_names(session_factory, config))


def render_page_png(path: Path, max_width: int = 1200) -> bytes:
    """One SC reasoning page as PNG (downscaled to ``max_width``)."""
    import io

    import numpy as np
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array)
    mode = "RGB" if pixels.ndim == 3 else "L"
    image = Image.fromarray(pixels.astype(np.uint8), mode)
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


# -- failures ----------------------------------------------------------------------------------------------------
@dataclass
class FailureGroup:
    reason: str
    items: list[dict[str, Any]]


_UID_IN_TEXT = re.compile(r"\b\d+(?:\.\d+){3,}\b")
DEAD_LETTERED = "delivery dead-lettered"


def reason_key(error: str | None) -> str:
    """What failures are grouped by: the first line with UIDs blanked out; a job failed by its dead-lettered
    deliveries groups as one reason (the deliveries themselves are grouped by destination and error)."""
    line = first_line(error, 300)
    if line.startswith(DEAD_LETTERED):
        return f"{DEAD_LETTERED} (see the dead letters above)"
    return _UID_IN_TEXT.sub("<UID>", line) or "(no error recorded)"


def failures(session_factory: Factory) -> tuple[list[FailureGroup], list[FailureGroup]]:
    """(failed jobs grouped by error, dead-lettered deliveries grouped by destination and last error)."""
    with session_factory() as s:
        jobs = s.execute(select(Job.id, Job.generation, Job.error, Job.updated_at, Study.study_instance_uid)
                         .join(Study, Study.id == Job.study_id).where(Job.state == JobState.FAILED.value)
                         .order_by(Job.updated_at.desc())).all()
        dead = s.execute(select(Delivery.id, Delivery.job_id, Delivery.destination, Delivery.object_kind,
                                Delivery.attempts, Delivery.last_error, Delivery.last_status,
                                Study.study_instance_uid)
                         .join(Job, Job.id == Delivery.job_id).join(Study, Study.id == Job.study_id)
                         .where(Delivery.state == DeliveryState.DEAD.value).order_by(Delivery.id.desc())).all()
    job_groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job_id, generation, error, updated, uid in jobs:
        job_groups[reason_key(error)].append(
            {"job": job_id, "generation": generation, "error": error, "at": updated, "study": uid})
    dead_groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in dead:
        dead_groups[f"{row.destination}: {reason_key(row.last_error)}"].append(
            {"delivery": row.id, "job": row.job_id, "destination": row.destination, "kind": row.object_kind,
             "attempts": row.attempts, "error": row.last_error, "status": row.last_status,
             "study": row.study_instance_uid})

    def groups(found: dict[str, list[dict[str, Any]]]) -> list[FailureGroup]:
        return sorted((FailureGroup(k, v) for k, v in found.items()), key=lambda g: -len(g.items))

    return groups(job_groups), groups(dead_groups)


def as_json(value: Any) -> str:
    return json.dumps(value, default=str, indent=1)


LiveFacts = Callable[[], dict[str, Any]]
