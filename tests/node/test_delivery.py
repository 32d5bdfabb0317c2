"""Delivery: C-STORE to Orthanc with the status checked, backoff + jitter, dead letter, per-destination
independence, and no re-sending of what a destination already acknowledged."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from delivery_support import (
    PROCESSORS,
    deliveries,
    delivery_config,
    destination,
    ingest_files,
    job,
    orthanc_destination,
    wait_until,
)

from dicomnode import metrics
from dicomnode.accepting import accepted
from dicomnode.config import NodeConfig, RetryConfig
from dicomnode.db import make_engine, make_session_factory, upgrade_database
from dicomnode.db.states import DeliveryState, JobState
from dicomnode.delivery import Deliverer, backoff_seconds
from dicomnode.jobs import retry_job
from dicomnode.peers.orthanc import OrthancServer
from dicomnode.peers.ports import free_port
from dicomnode.processing import make_processor
from dicomnode.worker import Worker

LOG = logging.getLogger(__name__)
DATA = Path(__file__).with_name("data")


def _process_all(config, session_factory) -> None:  # type: ignore[no-untyped-def]
    worker = Worker(config, session_factory, make_processor(config), worker_id="w")
    while worker.run_once():
        pass


def test_backoff_doubles_caps_and_jitters() -> None:
    retry = RetryConfig(max_attempts=10, initial_seconds=5, max_seconds=60)
    assert [backoff_seconds(n, retry, rng=lambda: 0.5) for n in (1, 2, 3, 4, 5, 9)] == [5, 10, 20, 40, 60, 60]
    assert backoff_seconds(3, retry, rng=lambda: 0.0) == 10  # jitter 0.5x
    assert backoff_seconds(3, retry, rng=lambda: 0.999999) == pytest.approx(30, rel=1e-5)  # jitter 1.5x
    samples = {round(backoff_seconds(2, retry), 6) for _ in range(50)}
    assert len(samples) > 40 and all(5 <= s <= 15 for s in samples)


def test_results_reach_orthanc_once(data_dir, database_url, session_factory, study_factory, orthanc):
    config = delivery_config(data_dir, database_url, [orthanc_destination(orthanc)],
                             processor=f"{PROCESSORS}:sr_and_sc")
    job_id = ingest_files(config, session_factory, study_factory().files)
    _process_all(config, session_factory)
    deliverer = Deliverer(config, session_factory)
    delivered_before = metrics.REGISTRY.get_sample_value("cxrnode_study_seconds_count") or 0
    attempts_before = metrics.REGISTRY.get_sample_value("cxrnode_delivery_attempts_total",
                                                        {"destination": "pacs"}) or 0
    assert deliverer.run_once() == 2
    assert metrics.REGISTRY.get_sample_value("cxrnode_study_seconds_count") == delivered_before + 1
    assert metrics.REGISTRY.get_sample_value("cxrnode_delivery_attempts_total",
                                             {"destination": "pacs"}) == attempts_before + 2
    rows = deliveries(session_factory, job_id)
    assert {r.state for r in rows} == {DeliveryState.SENT.value}
    assert all(r.last_status == 0 and r.attempts == 1 and r.sent_at for r in rows)
    assert sorted(orthanc.sop_instance_uids()) == sorted(r.sop_instance_uid for r in rows)
    assert {i["MainDicomTags"].get("Modality") for i in orthanc.find("Series", {})} == {"SR", "OT"}
    assert job(session_factory, job_id).state == JobState.DELIVERED.value
    assert deliverer.run_once() == 0  # nothing is ever sent twice
    assert "nothing to retry" in retry_job(session_factory, job_id)
    assert deliverer.run_once() == 0


def test_dead_destination_backs_off_then_dead_letters(data_dir, database_url, session_factory, study_factory):
    dead_port = free_port()
    config = delivery_config(data_dir, database_url,
                             [destination("gone", "GONE", dead_port, max_attempts=3, initial_seconds=0.5,
                                          max_seconds=5)])
    job_id = ingest_files(config, session_factory, study_factory().files)
    _process_all(config, session_factory)
    deliverer = Deliverer(config, session_factory, rng=lambda: 0.5)  # no jitter: delays 0.5 s, 1 s
    gaps = []
    for attempt in (1, 2, 3):
        row = wait_until(lambda: [r for r in deliveries(session_factory, job_id)
                                  if r.next_attempt_at <= dt.datetime.now(dt.UTC)], what="row due")[0]
        before = dt.datetime.now(dt.UTC)
        assert deliverer.run_once() == 1
        row = deliveries(session_factory, job_id)[0]
        assert row.attempts == attempt and row.last_status is None
        assert "refused" in (row.last_error or "") or "aborted" in (row.last_error or "")
        if attempt < 3:
            assert row.state == DeliveryState.PENDING.value
            gaps.append((row.next_attempt_at - before).total_seconds())
    assert 0.4 < gaps[0] < 0.5 + 5 and gaps[1] > gaps[0] + 0.3  # doubled
    assert row.state == DeliveryState.DEAD.value
    failed = job(session_factory, job_id)
    assert failed.state == JobState.FAILED.value
    assert failed.error and failed.error.startswith("delivery dead-lettered: gone")
    assert deliverer.run_once() == 0  # dead rows are left alone


def test_refusing_peer_status_is_recorded(tmp_path, data_dir, database_url, session_factory, study_factory):
    with OrthancServer(tmp_path / "refusing", aet="REFUSER", lua_scripts=[DATA / "refuse_sc.lua"]) as refuser:
        config = delivery_config(data_dir, database_url,
                                 [orthanc_destination(refuser, max_attempts=2, initial_seconds=0.1)],
                                 processor=f"{PROCESSORS}:sr_and_sc")
        job_id = ingest_files(config, session_factory, study_factory().files)
        _process_all(config, session_factory)
        deliverer = Deliverer(config, session_factory)
        wait_until(lambda: deliverer.run_once() == 0 and all(
            r.state != DeliveryState.PENDING.value for r in deliveries(session_factory, job_id)), what="settled")
        rows = {r.object_kind: r for r in deliveries(session_factory, job_id)}
        assert rows["sr"].state == DeliveryState.SENT.value and rows["sr"].last_status == 0
        assert rows["sc"].state == DeliveryState.DEAD.value and rows["sc"].attempts == 2
        assert rows["sc"].last_status == 0xA700 and "0xA700" in (rows["sc"].last_error or "")
        assert refuser.sop_instance_uids() == [rows["sr"].sop_instance_uid]
        assert "delivery dead-lettered" in (job(session_factory, job_id).error or "")


def test_failing_destination_never_blocks_another(data_dir, sqlite_url, study_factory, orthanc):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    # a peer that accepts TCP but never answers the association request: only timeouts end it
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    try:
        config = delivery_config(
            data_dir, sqlite_url,
            [destination("hang", "HANG", hang.getsockname()[1], max_attempts=50),
             destination("refused", "REFUSED", free_port(), max_attempts=50),
             orthanc_destination(orthanc)],
        )
        deliverer = Deliverer(config, factory, association_timeout=8)
        deliverer.start()
        try:
            uids = []
            for _ in range(3):
                ingest_files(config, factory, study_factory(views=("PA",)).files)
                _process_all(config, factory)
                uids += [r.sop_instance_uid for r in deliveries(factory) if r.destination == "pacs"][len(uids):]
            started = time.monotonic()
            got = orthanc.wait_for_instances(3, timeout=25)
            assert sorted(got) == sorted(uids)
            wait_until(lambda: {r.state for r in deliveries(factory) if r.destination == "pacs"} == {"SENT"},
                       timeout=25, what="pacs rows SENT")
            assert time.monotonic() - started < 25
            rows = deliveries(factory)
            assert {r.state for r in rows if r.destination != "pacs"} == {DeliveryState.PENDING.value}
        finally:
            deliverer.stop(timeout=90)
    finally:
        hang.close()
        engine.dispose()


def test_retry_resends_only_dead_rows(tmp_path, data_dir, database_url, session_factory, study_factory, orthanc):
    backup_port = free_port()
    config = delivery_config(
        data_dir, database_url,
        [orthanc_destination(orthanc), destination("backup", "BACKUP", backup_port, max_attempts=1)],
        processor=f"{PROCESSORS}:sr_and_sc",
    )
    job_id = ingest_files(config, session_factory, study_factory().files)
    _process_all(config, session_factory)
    deliverer = Deliverer(config, session_factory)
    deliverer.run_once()
    rows = deliveries(session_factory, job_id)
    assert {(r.destination, r.state) for r in rows} == {("pacs", "SENT"), ("backup", "DEAD")}
    assert job(session_factory, job_id).state == JobState.FAILED.value
    sent_before = {r.id: (r.attempts, r.sent_at) for r in rows if r.destination == "pacs"}

    orthanc.stop()  # any attempt to re-send to pacs would now fail and show up as an attempt
    with OrthancServer(tmp_path / "backup", aet="BACKUP", dicom_port=backup_port) as backup:
        assert "2 dead-lettered deliveries back to PENDING" in retry_job(session_factory, job_id)
        assert job(session_factory, job_id).state == JobState.RESULTS_READY.value
        assert deliverer.run_once() == 2
        assert len(backup.sop_instance_uids()) == 2
    rows = deliveries(session_factory, job_id)
    assert {r.state for r in rows} == {DeliveryState.SENT.value}
    assert {r.id: (r.attempts, r.sent_at) for r in rows if r.destination == "pacs"} == sent_before
    assert job(session_factory, job_id).state == JobState.DELIVERED.value


def test_rows_of_removed_destination_are_dead_lettered(data_dir, sqlite_url, study_factory):
    from dicomnode.db import make_engine, make_session_factory, upgrade_database

    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, sqlite_url, [destination("old", "OLD", free_port())])
    job_id = ingest_files(config, factory, study_factory().files)
    _process_all(config, factory)
    Deliverer(delivery_config(data_dir, sqlite_url), factory).run_once()
    row = deliveries(factory, job_id)[0]
    assert row.state == DeliveryState.DEAD.value and "not configured" in (row.last_error or "")
    engine.dispose()


def test_two_deliverers_on_postgres_send_each_row_once(data_dir, postgres_url, study_factory, orthanc):
    import threading
    from collections import Counter

    from sqlalchemy import select

    from dicomnode.db import AuditEvent, make_engine, make_session_factory, upgrade_database

    engine = make_engine(postgres_url)
    upgrade_database(engine)
    factory = make_session_factory(engine)
    config = delivery_config(data_dir, postgres_url, [orthanc_destination(orthanc)])
    for _ in range(8):
        ingest_files(config, factory, study_factory(views=("PA",)).files)
    _process_all(config, factory)
    deliverers = [Deliverer(config, factory) for _ in range(3)]
    barrier = threading.Barrier(len(deliverers))

    def run(deliverer: Deliverer) -> None:
        barrier.wait()
        for _ in range(5):
            deliverer.run_once()

    threads = [threading.Thread(target=run, args=(d,)) for d in deliverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    rows = deliveries(factory)
    assert len(rows) == 8 and {(r.state, r.attempts) for r in rows} == {(DeliveryState.SENT.value, 1)}
    with factory() as session:
        sent = Counter(session.scalars(select(AuditEvent.sop_instance_uid).where(AuditEvent.kind == "delivery.sent")))
    assert sorted(sent) == sorted(r.sop_instance_uid for r in rows) and set(sent.values()) == {1}
    assert len(orthanc.sop_instance_uids()) == 8
    engine.dispose()


class _HoldFirstConnection:
    """A TCP relay in front of a peer that holds the first connection (no byte passes) until ``release``; every
    later connection is relayed at once."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.released, self.stopping = threading.Event(), threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)  # how often the accept loop looks at ``stopping``
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        for client, _ in accepted(self.server, self.stopping, LOG, "relay"):
            self.connections += 1
            hold = self.connections == 1
            threading.Thread(target=self._relay, args=(client, hold), daemon=True).start()

    def _relay(self, client: socket.socket, hold: bool) -> None:
        if hold:
            self.released.wait(60)
        upstream = socket.create_connection(self.target)

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for s in (source, sink):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self.released.set()
        self.stopping.set()
        self.server.close()


@pytest.fixture
def held_relay(orthanc):  # type: ignore[no-untyped-def]
    """``_HoldFirstConnection`` in front of the test's Orthanc."""
    relay = _HoldFirstConnection("127.0.0.1", orthanc.dicom_port)
    try:
        yield relay
    finally:
        relay.close()


def _two_associations_through(relay: _HoldFirstConnection, orthanc: OrthancServer, data_dir: Path,
                              sqlite_url: str, **sections: dict[str, object]) -> NodeConfig:
    return delivery_config(data_dir, sqlite_url, [{**destination("pacs", orthanc.aet, relay.port), "associations": 2}],
                           **sections)


def test_an_object_goes_out_on_a_second_association_while_the_first_is_busy(data_dir, sqlite_url,
                                                                            sqlite_session_factory, study_factory,
                                                                            orthanc, held_relay):
    factory, relay = sqlite_session_factory, held_relay
    config = _two_associations_through(relay, orthanc, data_dir, sqlite_url)
    for _ in range(2):
        ingest_files(config, factory, study_factory(views=("PA",)).files)
    _process_all(config, factory)
    assert len(deliveries(factory)) == 2
    deliverer = Deliverer(config, factory, association_timeout=30)
    deliverer.start()
    try:
        first = orthanc.wait_for_instances(1, timeout=30)  # while the first association is held
        assert relay.connections == 2 and not relay.released.is_set()
        relay.released.set()
        both = orthanc.wait_for_instances(2, timeout=30)
        assert set(first) < set(both) == {r.sop_instance_uid for r in deliveries(factory)}
        wait_until(lambda: {r.state for r in deliveries(factory)} == {DeliveryState.SENT.value}, timeout=30)
        assert all(r.attempts == 1 for r in deliveries(factory))  # each sent once
    finally:
        deliverer.stop(timeout=60)


def test_a_backlog_is_shared_between_the_associations(data_dir, sqlite_url, sqlite_session_factory, study_factory):
    factory = sqlite_session_factory
    config = delivery_config(data_dir, sqlite_url, [{**destination("pacs", "P", free_port()), "associations": 3}])
    for _ in range(7):
        ingest_files(config, factory, study_factory(views=("PA",)).files)
    _process_all(config, factory)
    deliverer = Deliverer(config, factory)
    shares = [len(deliverer._lease_due_rows("pacs", share=True)) for _ in range(4)]
    assert shares == [3, 2, 1, 1]  # a third of what is due (rounded up) each, until none is left
    assert deliverer._lease_due_rows("pacs", share=True) == []  # all leased: nothing is handed out twice


def test_an_object_queued_while_one_association_is_busy_goes_out_on_the_idle_one(data_dir, sqlite_url,
                                                                                 sqlite_session_factory, study_factory,
                                                                                 orthanc, held_relay):
    """``wake()`` after a result is queued chooses the association loop that is waiting, not the one in a send."""
    factory, relay = sqlite_session_factory, held_relay
    config = _two_associations_through(relay, orthanc, data_dir, sqlite_url, processing={"poll_seconds": 30})
    ingest_files(config, factory, study_factory(views=("PA",)).files)
    _process_all(config, factory)
    deliverer = Deliverer(config, factory, association_timeout=30)
    deliverer.start()
    try:
        wait_until(lambda: relay.connections == 1, timeout=30)  # the first send is held open
        ingest_files(config, factory, study_factory(views=("PA",)).files)
        _process_all(config, factory)
        deliverer.wake()
        second = orthanc.wait_for_instances(1, timeout=20)  # long before the 30 s poll
        assert not relay.released.is_set() and relay.connections == 2
        assert len(second) == 1
        relay.released.set()
        wait_until(lambda: {r.state for r in deliveries(factory)} == {DeliveryState.SENT.value}, timeout=30)
    finally:
        relay.released.set()
        deliverer.stop(timeout=60)


def test_one_queued_result_wakes_one_association_loop(data_dir, sqlite_url, sqlite_session_factory, study_factory,
                                                      orthanc):
    """With every loop waiting, one ``wake()`` makes one pass: the other associations do not lease (and query the
    database) for nothing."""
    factory = sqlite_session_factory
    config = delivery_config(data_dir, sqlite_url, [{**orthanc_destination(orthanc), "associations": 3}],
                             processing={"poll_seconds": 30})
    deliverer = Deliverer(config, factory)
    passes: list[str] = []
    lease = deliverer._lease_due_rows

    def counted(name: str, share: bool = False):  # type: ignore[no-untyped-def]
        passes.append(threading.current_thread().name)
        return lease(name, share)

    deliverer._lease_due_rows = counted  # type: ignore[method-assign]
    deliverer.start()
    try:
        wait_until(lambda: len(passes) == 3 and not deliverer._busy - {(None, 0)}, timeout=30)  # first passes done
        passes.clear()
        ingest_files(config, factory, study_factory(views=("PA",)).files)
        _process_all(config, factory)
        deliverer.wake()
        wait_until(lambda: {r.state for r in deliveries(factory)} == {DeliveryState.SENT.value}, timeout=30)
        time.sleep(0.5)  # a second loop woken by the same wake() would have leased by now
        assert len(passes) == 1, passes
    finally:
        deliverer.stop(timeout=60)
