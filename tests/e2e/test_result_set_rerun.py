"""A job's re-runs make the same result set, and a late instance makes an amendment and nothing else (issue 17):
the node (``cxr-node serve``, tiny demo model), DCMTK storescu and Orthanc, and the ``cxr-node retry`` command."""
from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from ingest_support import CXR_NODE

from dicomnode.db.states import JobState
from dicomnode.demo.run import NODE_AET
from dicomnode.uids import result_uids

from .conftest import wait_until
from .crash_support import CrashSite

pytestmark = pytest.mark.slow


@pytest.fixture
def failing_site(tmp_path: Path, qwen_demo_dir: Path) -> Iterator[CrashSite]:
    with CrashSite(tmp_path, qwen_demo_dir, processor="failing_processor:sr_then_fail_once") as site:
        yield site


def _newest_job(site: CrashSite, study_uid: str) -> tuple[int, str]:
    from sqlalchemy import select

    from dicomnode.db import Job, Study

    with site.db() as s:
        job = s.scalars(select(Job).join(Study).where(Study.study_instance_uid == study_uid)
                        .order_by(Job.generation.desc())).first()
        assert job is not None
        return job.id, job.state


def _retry(site: CrashSite, job_id: int) -> str:
    run = subprocess.run([CXR_NODE, "retry", str(job_id), "--config", str(site.config_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_retry_of_a_job_whose_sr_was_delivered_sends_the_rest_and_no_second_sr(failing_site: CrashSite) -> None:
    site = failing_site
    site.start()
    study = site.new_study()
    site.finish_send(study, site.send(study))
    uids = result_uids(study.study_uid, 1, NODE_AET)
    wait_until(lambda: _newest_job(site, study.study_uid)[1] == JobState.FAILED.value, timeout=180,
               what="the job failed after its SR was published", interval=0.2)
    wait_until(lambda: site.result_sets(study.study_uid)["sr"], timeout=60, what="the SR in the PACS")
    job_id, _ = _newest_job(site, study.study_uid)

    assert "re-queued" in _retry(site, job_id)
    wait_until(lambda: _newest_job(site, study.study_uid)[1] == JobState.DELIVERED.value, timeout=180,
               what="the retried job delivered", interval=0.2)
    held = site.result_sets(study.study_uid)
    assert held["sr"] == [uids.sr_instance]  # the SR sent before the failure, not a second one
    assert list(held["pages"]) == [uids.sc_series]
    assert held["pages"][uids.sc_series] == list(range(1, len(held["pages"][uids.sc_series]) + 1))

    assert "nothing to retry" in _retry(site, job_id)  # a delivered job: nothing is sent again
    assert site.result_sets(study.study_uid) == held
    site.assert_one_result_set_each()
    assert site.terminate() == 0


@pytest.fixture
def site(tmp_path: Path, qwen_demo_dir: Path) -> Iterator[CrashSite]:
    with CrashSite(tmp_path, qwen_demo_dir) as site:
        yield site


def test_late_instance_gives_an_amended_sr_naming_its_predecessor_and_nothing_else(site: CrashSite) -> None:
    site.start()
    study = site.new_study()
    site.finish_send(study, site.send(study))
    wait_until(site.all_delivered, timeout=180, what="generation 1 delivered", interval=0.2)
    first = site.result_sets(study.study_uid)

    late = site.new_study(("PA",), study_instance_uid=study.study_uid, seed=999)  # one more image, same study
    site.finish_send(late, site.send(late))
    wait_until(lambda: _newest_job(site, study.study_uid) [1] == JobState.DELIVERED.value
               and site.all_delivered() and len(site.result_sets(study.study_uid)["sr"]) >= 2,
               timeout=180, what="generation 2 delivered", interval=0.2)
    gen1, gen2 = (result_uids(study.study_uid, g, NODE_AET) for g in (1, 2))
    held = site.result_sets(study.study_uid)
    assert first["sr"] == [gen1.sr_instance]
    assert sorted(held["sr"]) == sorted([gen1.sr_instance, gen2.sr_instance])
    assert sorted(held["pages"]) == sorted([gen1.sc_series, gen2.sc_series])
    assert held["pages"][gen1.sc_series] == first["pages"][gen1.sc_series]  # generation 1's pages untouched

    sr_id = next(i["ID"] for i in site.orthanc.find("Instance", {"SOPInstanceUID": gen2.sr_instance}))
    amended = pydicom.dcmread(io.BytesIO(site.orthanc.rest_get_bytes(f"/instances/{sr_id}/file")))
    named = [ref.ReferencedSOPInstanceUID for item in amended.PredecessorDocumentsSequence
             for series in item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence]
    assert named == [gen1.sr_instance]
    assert site.terminate() == 0
