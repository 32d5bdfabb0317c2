"""Destination types are plug-ins (dicomnode.destinations): a type registered from outside the node's code
(tests/node/folder_destination.py, loaded through ``plugins:``) gets its result objects and a non-DICOM message,
with the same durability, retries, dead letter, operator retry, re-send, dashboard and metrics as the built-in
types; and the deliveries table keeps its rows across the migration that lets it carry such payloads."""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
import yaml
from delivery_support import PROCESSORS, deliveries, delivery_config, ingest_files, job
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from dicomnode import metrics
from dicomnode.cli import main as cli_main
from dicomnode.config import ConfigError, config_from_dict
from dicomnode.dashboard import actions, queries
from dicomnode.db import make_engine, make_session_factory, upgrade_database
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer
from dicomnode.jobs import retry_job
from dicomnode.processing import make_processor
from dicomnode.worker import Worker


def _folder(inbox: Path, **keys: object) -> dict[str, object]:
    return {"name": "archive", "type": "folder", "path": str(inbox), "summary": True,
            "retry": {"max_attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.1}, **keys}


def _config(data_dir: Path, database_url: str, inbox: Path, **keys: object):  # type: ignore[no-untyped-def]
    return delivery_config(data_dir, database_url, [_folder(inbox, **keys)], processor=f"{PROCESSORS}:sr_and_sc",
                           plugins=["folder_destination"])


def _process(config, session_factory) -> None:  # type: ignore[no-untyped-def]
    worker = Worker(config, session_factory, make_processor(config), worker_id="w")
    while worker.run_once():
        pass


def _deliver_until_settled(deliverer: Deliverer, session_factory, job_id: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        deliverer.run_once()
        if job(session_factory, job_id).state != JobState.RESULTS_READY.value:
            return
        due = deliverer.next_due_in() or 0.0
        time.sleep(min(max(due, 0.01), 0.2))
    raise AssertionError("the job never settled")


def test_a_plugin_type_gets_its_objects_and_a_message(tmp_path, data_dir, database_url, session_factory,
                                                      study_factory) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = _config(data_dir, database_url, inbox)
    assert type(config.destinations[0]).__name__ == "FolderDestination"
    study = study_factory()
    job_id = ingest_files(config, session_factory, study.files)
    _process(config, session_factory)
    rows = deliveries(session_factory, job_id)
    assert sorted(r.object_kind for r in rows) == ["sc", "sr", "summary"]
    message = next(r for r in rows if r.object_kind == "summary")
    assert message.media_type == "application/json" and message.sop_instance_uid is None
    assert (data_dir / message.path).is_file()  # stored before it is sent
    attempts_before = metrics.REGISTRY.get_sample_value("cxrnode_delivery_attempts_total",
                                                        {"destination": "archive"}) or 0
    _deliver_until_settled(Deliverer(config, session_factory), session_factory, job_id)
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
    assert {r.state for r in deliveries(session_factory, job_id)} == {DeliveryState.SENT.value}
    arrived = sorted(p.name for p in inbox.iterdir())
    assert len(arrived) == 3 and sum(name.endswith(".dcm") for name in arrived) == 2
    summary = json.loads(next(inbox.glob("*.json")).read_text())
    dicom_uids = {r.sop_instance_uid for r in rows if r.sop_instance_uid}
    assert {o["sop_instance_uid"] for o in summary["objects"]} == dicom_uids and summary["has_record"]
    assert summary["study"] == study.study_instance_uid and summary["replaces"] == []
    attempts = metrics.REGISTRY.get_sample_value("cxrnode_delivery_attempts_total", {"destination": "archive"})
    assert attempts == attempts_before + 3
    [row] = queries.destination_rows(session_factory, config)
    assert row.address == f"folder {inbox}" and row.up is True and row.pending == row.dead == 0


def test_a_plugin_type_retries_dead_letters_and_is_retried(tmp_path, data_dir, database_url, session_factory,
                                                           study_factory) -> None:
    inbox = tmp_path / "inbox"  # not there yet: every attempt fails
    config = _config(data_dir, database_url, inbox)
    job_id = ingest_files(config, session_factory, study_factory().files)
    _process(config, session_factory)
    deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)
    before = dt.datetime.now(dt.UTC)
    deliverer.run_once()
    first = deliveries(session_factory, job_id)
    assert {r.state for r in first} == {DeliveryState.PENDING.value} and {r.attempts for r in first} == {1}
    # backed off: the next attempt at least half the initial delay after the failed one (not "in the future": on a
    # loaded machine 0.05 s may be over before the rows are read)
    assert all(r.next_attempt_at > before + dt.timedelta(seconds=0.02) for r in first)
    assert {r.last_error for r in first} == {f"no folder {inbox}"}
    _deliver_until_settled(deliverer, session_factory, job_id)
    failed = job(session_factory, job_id)
    assert failed.state == JobState.FAILED.value and f"no folder {inbox}" in (failed.error or "")
    assert {r.state for r in deliveries(session_factory, job_id)} == {DeliveryState.DEAD.value}
    [row] = queries.destination_rows(session_factory, config)
    assert (row.dead, row.pending, row.last_success) == (3, 0, None)
    inbox.mkdir()
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    assert cli_main(["retry", str(job_id), "--config", str(config_file)]) == 0  # `cxr-node retry`
    assert {r.state for r in deliveries(session_factory, job_id)} == {DeliveryState.PENDING.value}
    _deliver_until_settled(deliverer, session_factory, job_id)
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
    assert len(list(inbox.iterdir())) == 3


def test_a_refusal_for_good_is_dead_at_once_and_a_resend_queues_again(tmp_path, data_dir, database_url,
                                                                      session_factory, study_factory) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = _config(data_dir, database_url, inbox, refuse="sc")
    job_id = ingest_files(config, session_factory, study_factory().files)
    _process(config, session_factory)
    _deliver_until_settled(Deliverer(config, session_factory), session_factory, job_id)
    states = {r.object_kind: (r.state, r.attempts) for r in deliveries(session_factory, job_id)}
    assert states == {"sr": ("SENT", 1), "summary": ("SENT", 1), "sc": ("DEAD", 1)}
    assert retry_job(session_factory, job_id) == "1 dead-lettered deliveries back to PENDING"
    # an operator re-send from the dashboard: every row of the destination back to PENDING, nothing added twice
    for path in inbox.iterdir():
        path.unlink()
    ok = config.model_copy(update={"destinations": [config.destinations[0].model_copy(update={"refuse": None})]})
    done = actions.resend(session_factory, ok, job_id, "archive", "admin")
    assert done == "3 objects queued for archive"
    _deliver_until_settled(Deliverer(ok, session_factory), session_factory, job_id)
    assert job(session_factory, job_id).state == JobState.DELIVERED.value and len(list(inbox.iterdir())) == 3
    assert len(deliveries(session_factory, job_id)) == 3


def test_unknown_types_and_broken_plugins_are_named() -> None:
    base = {"processing": {"processor": "passthrough"}}
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "destinations": [{"name": "x", "type": "fax", "number": "1"}]}, environ={})
    [problem] = err.value.problems
    assert problem.startswith("destinations.0: unknown destination type 'fax' (known: dicomweb, dimse")
    with pytest.raises(ConfigError) as err:
        config_from_dict({**base, "plugins": ["no_such_plugin_module"]}, environ={})
    assert err.value.problems == ["plugins: cannot import 'no_such_plugin_module': ModuleNotFoundError: No module "
                                  "named 'no_such_plugin_module'"]


def test_migration_keeps_delivery_rows_and_lets_messages_in(database_url) -> None:
    engine = make_engine(database_url)
    try:
        upgrade_database(engine, "0002")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO studies (id, study_instance_uid, state, first_received_at, "
                              "last_received_at, instance_count, selected_count, generation) VALUES "
                              "(1, '1.2.3', 'DELIVERED', '2026-12-01', '2026-12-01', 1, 1, 1)"))
            conn.execute(text("INSERT INTO jobs (id, study_id, generation, state, attempts, created_at, updated_at) "
                              "VALUES (1, 1, 1, 'DELIVERED', 1, '2026-12-01', '2026-12-01')"))
            conn.execute(text("INSERT INTO deliveries (job_id, destination, object_kind, sop_instance_uid, "
                              "sop_class_uid, path, state, attempts, next_attempt_at, commit_timeouts) VALUES "
                              "(1, 'pacs', 'sr', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.88.34', 'results/x/sr.dcm', "
                              "'SENT', 1, '2026-12-01', 0)"))
        upgrade_database(engine)
        with engine.begin() as conn:
            kept = conn.execute(text("SELECT payload_key, media_type, sop_instance_uid, state FROM deliveries")).all()
            assert [tuple(r) for r in kept] == [("1.2.3.4", "application/dicom", "1.2.3.4", "SENT")]
            conn.execute(text("INSERT INTO deliveries (job_id, destination, object_kind, payload_key, media_type, "
                              "path, state, attempts, next_attempt_at, commit_timeouts) VALUES (1, 'ris', 'hl7', "
                              "'MSG1', 'application/hl7-v2', 'results/x/m.hl7', 'PENDING', 0, '2026-12-01', 0)"))
        with pytest.raises(IntegrityError), engine.begin() as conn:  # never queued twice for one destination
            conn.execute(text("INSERT INTO deliveries (job_id, destination, object_kind, payload_key, media_type, "
                              "path, state, attempts, next_attempt_at, commit_timeouts) VALUES (1, 'ris', 'hl7', "
                              "'MSG1', 'application/hl7-v2', 'results/x/m2.hl7', 'PENDING', 0, '2026-12-01', 0)"))
        with make_session_factory(engine)() as session:
            from sqlalchemy import select

            from dicomnode.db import Delivery

            assert sorted(session.scalars(select(Delivery.payload_key))) == ["1.2.3.4", "MSG1"]
    finally:
        engine.dispose()
