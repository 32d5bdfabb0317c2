"""Exactly one result set per study through kill -9 (issue 17): the node (``cxr-node serve``, tiny demo model,
page processes) is killed with SIGKILL at random points of four phases, restarted each time, and the modality
(DCMTK storescu) resends what a kill cut off. Afterwards Orthanc must hold, per study, the one SR and the one page
series whose UIDs the node derives for it; no acknowledged instance may be lost; no child process may outlive a
kill, and no partial transfer may stay in the spool's temp directory.

``CXR_CRASH_KILLS`` sets the kills per phase (default 10). Each test prints its row of the closing note's table.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from dicomnode.db.states import DeliveryState, JobState

from .conftest import wait_until
from .crash_support import CrashSite, Sent, jitter

# 10 restarts of a model-loading node per phase; the phases share nothing: xdist may run them side by side
# (tests/conftest.py: SPREAD_MODULES)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
KILLS = int(os.environ.get("CXR_CRASH_KILLS", "10"))
RECEIVE_VIEWS = ("PA", "LATERAL", "PA", "LATERAL", "PA", "LATERAL")


@pytest.fixture
def crash_site(tmp_path: Path, qwen_demo_dir: Path) -> Iterator[CrashSite]:
    with CrashSite(tmp_path, qwen_demo_dir) as site:
        yield site


@pytest.fixture
def receive_site(tmp_path: Path, qwen_demo_dir: Path) -> Iterator[CrashSite]:
    """quiet_seconds 6: the modality's resend must start within it after the restart, on a loaded 2-core CI
    machine too (a resend later than quiet_seconds rightly opens a new generation)."""
    with CrashSite(tmp_path, qwen_demo_dir, quiet_seconds=6.0) as site:
        yield site


def _kill_and_restart(site: CrashSite, killed: Callable[[], bool],
                      then: Callable[[], object] = lambda: None) -> tuple[bool, object]:
    """SIGKILL; look (``killed``) whether the kill hit the phase, before a new node re-queues anything; check that no
    child outlived the node; restart, call ``then`` (the modality's resend) at once, then check that the spool's
    temp dir lost what the kill left there. Returns (``killed()``, what ``then`` returned)."""
    tmp = site.data_dir / "spool" / ".tmp"
    left = site.kill9()
    in_phase = killed()
    leftovers = [p for p in tmp.iterdir()] if tmp.is_dir() else []
    assert left == [], f"child processes outlived the node: {left}"
    site.start()
    result = then()
    assert not [p for p in leftovers if p.exists()], "partial transfers left in spool/.tmp after restart"
    return in_phase, result


def _run_phase(phase: str, site: CrashSite, reached: Callable[[Sent], object], hit: Callable[[object], bool],
               rng: random.Random, views: tuple[str, ...] = ("PA", "LATERAL"), resend: bool = False,
               most_jitter: float = 0.0) -> None:
    """Send a study, wait until ``reached`` (which returns what it found: a job id, a count), SIGKILL after a random
    jitter, restart; until ``KILLS`` kills ``hit`` the phase (what was found is still in the phase after the kill;
    at most 2 x KILLS tries). Then every study must end delivered, as one result set.
    Prints the phase's row of the closing note's table (kills, studies that lost an acknowledged instance,
    studies not held as exactly one result set)."""
    site.start()
    kills = hits = 0
    while hits < KILLS and kills < 2 * KILLS:
        study = site.new_study(views)
        sender = site.send(study)
        found = wait_until(partial(reached, study), timeout=180, what="the phase", interval=0.02)
        jitter(rng, most_jitter)
        kills += 1
        # the modality resends the study whose transfer failed as soon as the node is back
        in_phase, resender = _kill_and_restart(site, partial(hit, found),
                                               partial(site.send, study) if resend else (lambda: None))
        site.finish_send(study, sender)
        assert study.acked <= site.stored(study.study_uid), "acknowledged instances lost"
        hits += in_phase
        if resender is not None:
            site.finish_send(study, resender)  # type: ignore[arg-type]
    wait_until(site.all_delivered, timeout=400, interval=0.5,
               what=f"every study delivered (failed: {site.failed_jobs()})")
    assert site.terminate() == 0
    lost, duplicated = site.result_set_problems()
    print(f"\nCLOSING-NOTE phase={phase} kills={kills} in_phase={hits} studies={len(site.sent)} "
          f"studies_with_acknowledged_lost={len(lost)} studies_duplicated={len(duplicated)}")
    assert not lost and not duplicated, lost + duplicated
    assert hits >= KILLS


def test_kill_mid_receive_then_resend_gives_one_result_set(receive_site: CrashSite) -> None:
    site, rng = receive_site, random.Random(1)
    n = len(RECEIVE_VIEWS)

    def reached(study: Sent) -> object:
        return study if len(site.stored(study.study_uid)) >= rng.randint(1, n - 2) else None

    _run_phase("receive", site, reached, lambda s: len(site.stored(s.study_uid)) < n, rng,  # type: ignore
               views=RECEIVE_VIEWS, resend=True)


# Later phases look at any job (the one re-queued by the previous kill is usually claimed first after a restart).

def _first(ids: list[int]) -> int | None:
    return ids[0] if ids else None


def test_kill_while_reasoning_gives_one_result_set(crash_site: CrashSite) -> None:
    site, rng = crash_site, random.Random(2)

    def reached(_study: Sent) -> int | None:
        return _first(site.jobs_where(JobState.PROCESSING, lambda d: not d))

    def hit(job_id: object) -> bool:
        state, deliveries = site.job_state(int(job_id))  # type: ignore[call-overload]
        return state == JobState.PROCESSING.value and not deliveries

    _run_phase("reasoning", site, reached, hit, rng, most_jitter=0.1)


def test_kill_after_first_publish_gives_one_result_set(crash_site: CrashSite) -> None:
    site, rng = crash_site, random.Random(3)

    def reached(_study: Sent) -> int | None:
        return _first(site.jobs_where(JobState.PROCESSING, lambda d: sum(d.values()) >= 1))

    def hit(job_id: object) -> bool:
        state, deliveries = site.job_state(int(job_id))  # type: ignore[call-overload]
        return state == JobState.PROCESSING.value and sum(deliveries.values()) >= 1

    _run_phase("after first publish", site, reached, hit, rng)


def _delivering(counts: Counter[str]) -> bool:
    return counts[DeliveryState.SENT.value] >= 1 and counts[DeliveryState.PENDING.value] >= 1


def test_kill_during_delivery_gives_one_result_set(crash_site: CrashSite) -> None:
    site, rng = crash_site, random.Random(4)

    def reached(_study: Sent) -> int | None:
        return _first(site.jobs_where(JobState.PROCESSING, _delivering, sent_now=True)
                      + site.jobs_where(JobState.RESULTS_READY, _delivering, sent_now=True))

    def hit(job_id: object) -> bool:
        state, deliveries = site.job_state(int(job_id))  # type: ignore[call-overload]
        return state in (JobState.PROCESSING.value, JobState.RESULTS_READY.value) and _delivering(deliveries)

    _run_phase("delivery", site, reached, hit, rng)
