"""The dashboard's reads and its re-send action on a small hand-made database (filters, grouping, new rows)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.config import config_from_dict
from dicomnode.dashboard import actions, queries
from dicomnode.db import make_session_factory, upgrade_database
from dicomnode.db.models import AuditEvent, Delivery, Job, Study

DAY = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)


@pytest.fixture()
def db(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cxr-node.sqlite'}"
    upgrade_database(url)
    factory = make_session_factory(url)
    rows = [  # uid, accession, state, received, deliveries (destination, state, error)
        ("1.2.3.1", "A1", "DELIVERED", DAY, [("pacs", "SENT", None), ("pacs", "SENT", None)]),
        ("1.2.3.2", "A2", "FAILED", DAY + dt.timedelta(days=1), [("pacs", "DEAD", "association refused\nmore"),
                                                                 ("archive", "DEAD", "timeout")]),
        ("1.2.4.3", "A3", "FAILED", DAY + dt.timedelta(days=2), [("pacs", "DEAD", "association refused")]),
        ("1.2.4.4", "A4", "RECEIVING", DAY + dt.timedelta(days=3), []),
    ]
    with factory.begin() as s:
        for n, (uid, acc, state, at, deliveries) in enumerate(rows, start=1):
            s.add(Study(id=n, study_instance_uid=uid, accession_number=acc, state=state, first_received_at=at,
                        last_received_at=at))
            s.flush()
            s.add(Job(id=n, study_id=n, generation=1, state=state, updated_at=at,
                      error={2: f"delivery dead-lettered: pacs {uid}.9.0: association refused",
                             3: f"processing failed: boom in {uid}"}.get(n)))
            s.flush()
            for k, (dest, dstate, error) in enumerate(deliveries):
                s.add(Delivery(job_id=n, destination=dest, object_kind=("sr", "sc")[k % 2],
                               sop_instance_uid=f"{uid}.9.{k}", sop_class_uid="1.2", path=f"results/{uid}/{n}/x{k}.dcm",
                               state=dstate, attempts=3, last_error=error, next_attempt_at=at))
    return factory


def _uids(factory, **filters) -> list[str]:
    rows, total = queries.list_studies(factory, queries.StudyFilter(**filters))
    assert total == len(rows)
    return [r.study_instance_uid for r in rows]


def test_filters(db) -> None:
    assert _uids(db) == ["1.2.4.4", "1.2.4.3", "1.2.3.2", "1.2.3.1"]  # newest first
    assert _uids(db, state="FAILED") == ["1.2.4.3", "1.2.3.2"]
    assert _uids(db, destination="archive") == ["1.2.3.2"]
    assert _uids(db, received_from=(DAY + dt.timedelta(days=1)).date(),
                 received_to=(DAY + dt.timedelta(days=2)).date()) == ["1.2.4.3", "1.2.3.2"]
    assert _uids(db, q="A3") == ["1.2.4.3"]
    assert _uids(db, q="1.2.3") == ["1.2.3.2", "1.2.3.1"]  # a UID's beginning
    assert _uids(db, q="1_2%") == []  # LIKE wildcards are taken literally
    rows, total = queries.list_studies(db, queries.StudyFilter(page=2), page_size=3)
    assert total == 4 and [r.study_instance_uid for r in rows] == ["1.2.3.1"]
    assert rows[0].deliveries == {"SENT": 2}


def test_failures_grouped_by_reason(db) -> None:
    jobs, dead = queries.failures(db)
    assert sorted((g.reason, len(g.items)) for g in jobs) == [
        ("delivery dead-lettered (see the dead letters above)", 1), ("processing failed: boom in <UID>", 1)]
    assert [(g.reason, len(g.items)) for g in dead] == [("pacs: association refused", 2), ("archive: timeout", 1)]


def test_resend_to_a_new_destination_adds_rows(db, tmp_path: Path) -> None:
    config = config_from_dict({
        "storage": {"data_dir": str(tmp_path)}, "processing": {"processor": "passthrough"},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                         {"name": "research", "ae_title": "RES", "host": "127.0.0.1", "port": 105,
                          "objects": ["sr"]}]}, environ={})
    assert actions.resend(db, config, 1, "research", "admin") == "1 objects queued for research"  # SR only
    assert actions.resend(db, config, 1, "pacs", "admin") == "2 objects queued for pacs"
    with db() as s:
        rows = s.execute(select(Delivery.destination, Delivery.state, Delivery.object_kind)
                         .where(Delivery.job_id == 1).order_by(Delivery.id)).all()
        assert [tuple(r) for r in rows] == [("pacs", "PENDING", "sr"), ("pacs", "PENDING", "sc"),
                                            ("research", "PENDING", "sr")]
        assert s.scalar(select(Job.state).where(Job.id == 1)) == "RESULTS_READY"
        assert s.scalar(select(Study.state).where(Study.id == 1)) == "RESULTS_READY"
        assert len(s.scalars(select(AuditEvent).where(AuditEvent.kind == "dashboard.resend")).all()) == 2
    with pytest.raises(actions.ActionError, match="not configured"):
        actions.resend(db, config, 1, "nowhere", "admin")
    with pytest.raises(actions.ActionError, match="RECEIVING: it has no results"):
        actions.resend(db, config, 4, "pacs", "admin")
