"""A study is one generation however its sender behaves (issue 17): an association that is still open holds its
study however long the gaps between its instances; a partial study found at restart waits a full quiet period after
the listener accepts again; parallel senders under load each give one generation; the spool's temp directory is
cleaned at start-up. Real node (in-process listener), real senders (pynetdicom SCU for deliberate gaps, DCMTK
storescu for load)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from ingest_support import NODE_AET, Db, make_config, running_node, store, wait_until
from pydicom import dcmread
from pynetdicom import AE

from dicomnode.db.states import JobState
from dicomnode.spool import Spool

QUIET = 1.0


def _send_with_gaps(port: int, files: list[Path], gap: float, statuses: list[int]) -> None:
    """One association: each file, then ``gap`` seconds of silence inside the still-open association."""
    scu = AE(ae_title="GAPSCU")
    for path in files:
        scu.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID)
    assoc = scu.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        for index, path in enumerate(files):
            statuses.append(int(assoc.send_c_store(path).Status))
            if index < len(files) - 1:
                time.sleep(gap)
    finally:
        assoc.release()


def _generations(db: Db, study_uid: str) -> list[tuple[int, str]]:
    return [(job.generation, job.state) for job in db.jobs(study_uid)]


def test_open_associations_with_gaps_longer_than_quiet_keep_one_generation(data_dir, study_factory):
    """4 parallel associations, each with 2.5 x quiet_seconds of silence between its 3 instances."""
    config = make_config(data_dir, study={"quiet_seconds": QUIET})
    studies = [study_factory(views=("PA", "LATERAL", "PA")) for _ in range(4)]
    with running_node(config) as node:
        db = Db(config.database_url)
        statuses: list[int] = []
        senders = [threading.Thread(target=_send_with_gaps, args=(node.port, s.files, 2.5 * QUIET, statuses))
                   for s in studies]
        for sender in senders:
            sender.start()
        time.sleep(3.5 * QUIET)  # well past one quiet period after the first instances, senders still connected
        assert all(db.study_state(s.study_instance_uid) == JobState.RECEIVING.value for s in studies)
        for sender in senders:
            sender.join(60)
        released = time.monotonic()
        for s in studies:
            wait_until(lambda s=s: db.study_state(s.study_instance_uid) == JobState.QUEUED.value, timeout=30,
                       what="study completed")
        waited = time.monotonic() - released
        assert statuses == [0] * 12
        for s in studies:
            assert _generations(db, s.study_instance_uid) == [(1, JobState.QUEUED.value)]
            assert len(db.instances(s.study_instance_uid)) == 3
        assert waited >= QUIET * 0.9  # a full quiet period after the sender let go
        db.close()


def test_parallel_storescu_under_load_give_one_generation_per_study(data_dir, study_factory):
    """12 DCMTK storescu associations at once, 10 instances each, quiet_seconds 0.5: no study splits."""
    config = make_config(data_dir, study={"quiet_seconds": 0.5}, node={"max_associations": 16})
    studies = [study_factory(views=("PA", "LATERAL") * 5, rows=256, columns=256) for _ in range(12)]
    with running_node(config) as node:
        db = Db(config.database_url)
        runs: list = []
        senders = [threading.Thread(target=lambda s=s: runs.append(store(s.files, node.port))) for s in studies]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(300)
        assert [r.statuses.count(0) for r in runs] == [10] * 12
        for s in studies:
            wait_until(lambda s=s: db.study_state(s.study_instance_uid) == JobState.QUEUED.value, timeout=60,
                       what="study completed")
            assert _generations(db, s.study_instance_uid) == [(1, JobState.QUEUED.value)]
        db.close()


def test_partial_study_found_at_restart_waits_a_full_quiet_period(data_dir, study_factory):
    quiet = 4.0  # the resend below must land within it, on a loaded 2-core machine too
    config = make_config(data_dir, study={"quiet_seconds": quiet})
    study = study_factory(views=("PA", "LATERAL"))
    with running_node(config) as node:
        assert store(study.files[:1], node.port).statuses == [0]
        db = Db(config.database_url)
        assert db.study_state(study.study_instance_uid) == JobState.RECEIVING.value
    # stopped while RECEIVING (as a crash would leave it); its deadline passes while the node is down
    time.sleep(quiet + 0.5)
    with running_node(config) as node:
        started = time.monotonic()
        time.sleep(1.5)  # the earlier code had completed the partial study at once
        assert db.study_state(study.study_instance_uid) == JobState.RECEIVING.value, \
            "completed before its sender could resend"
        assert store(study.files, node.port).statuses == [0, 0]  # the modality resends the whole study
        wait_until(lambda: db.study_state(study.study_instance_uid) == JobState.QUEUED.value, timeout=30, what="done")
        assert time.monotonic() - started >= quiet
        assert _generations(db, study.study_instance_uid) == [(1, JobState.QUEUED.value)]
        assert len(db.instances(study.study_instance_uid)) == 2
    db.close()


def test_spool_temp_files_are_cleaned_at_start_up_unless_another_process_receives(data_dir):
    config = make_config(data_dir)
    tmp = data_dir / "spool" / ".tmp"
    tmp.mkdir(parents=True)
    (tmp / "tmpabc123").write_bytes(b"partial transfer of a killed node")
    (tmp / "0123.part").write_bytes(b"x")
    with running_node(config):
        assert list(tmp.iterdir()) == []
        other = Spool(data_dir)
        (tmp / "in-use").write_bytes(b"x")
        assert other.clean_temp() is None  # the running node holds the spool: its temp files stay
        assert (tmp / "in-use").exists()
    other = Spool(data_dir)
    assert other.clean_temp() == 1
    other.release_temp()

