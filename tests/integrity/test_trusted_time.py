"""A clock that jumps forward never makes footage deletable (issue 11, point 7).

Real database, real segment files (tests/support/footage), real signed checkpoints; ``FakeClock`` stands for the
server's clocks: ``step`` moves only the wall clock (what an attacker, or a bad NTP source, does), ``advance`` moves
the monotonic clock with it (time that really passed). A FakeClock made later stands for a process started later.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import func, select, update

from api.context import Services
from api.export_jobs import ExportRunner
from integrity import audit_log, checkpoints, keys, trusted_time
from integrity.trusted_time import TrustedClock
from nvr.clock import FakeClock
from nvr.models import AuditEvent, Checkpoint, ExportJob, ExportRequest, Meta, Segment, User
from nvr.runtime import Runtime
from retention import policies
from retention.sweeper import Sweeper
from storage.alarms import storage_alarms
from tests.support.api_server import make_user, running_api
from tests.support.footage import add_camera, add_segments

DAY = 86_400_000_000
MIN = 60_000_000
ME = audit_log.Actor(None, "cli:tester", None, None)


# --- helpers -------------------------------------------------------------------------------------------------------
def _scene(rt: Runtime) -> int:
    """The issue's camera: on a 30/30-day policy, five segments recorded in the last ten minutes, and a checkpoint
    signed now (as every server start and every ten minutes do). Returns now: the checkpoint's time."""
    now = time.time_ns() // 1000
    add_camera(rt, "cam1")
    with rt.db.session() as s:
        ch = policies.Change(rt.settings, now, audit_log.SYSTEM, audit_log.INTERNAL, acknowledge=True)
        policies.create(s, ch, "p30", min_days=30, max_days=30)
        policies.assign(s, ch, "cam1", "p30")
    add_segments(rt, "cam1", now - 10 * MIN, 5)
    return checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock).created_us


def _segments(rt: Runtime) -> int:
    with rt.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Segment)) or 0)


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _due_by_wall(rt: Runtime, wall_us: int) -> int:
    """Segments whose retention has passed by this wall clock: what a sweeper trusting it would delete."""
    with rt.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Segment).where(Segment.retain_until_us <= wall_us)) or 0)


# --- (1) the case: 40 days ahead, nothing deleted, alarm everywhere -----------------------------------------
def test_a_clock_forty_days_ahead_deletes_nothing_and_raises_clock_untrusted(runtime: Runtime) -> None:
    rt = runtime
    now = _scene(rt)
    jumped = FakeClock(now + 40 * DAY)  # the process (re)started with its clock 40 days ahead
    assert _due_by_wall(rt, jumped.now_us()) == 5, "by the wall clock alone every segment would be past retention"

    planned = Sweeper(rt.db, rt.settings, jumped).run(dry_run=True)
    assert planned.segments == 0 and planned.clock_untrusted
    report = Sweeper(rt.db, rt.settings, jumped).run()
    assert report.segments == 0 and report.batches == []
    assert report.clock_untrusted and report.clock is not None and not report.clock.trusted
    assert report.clock.ahead_us >= 40 * DAY - MIN and report.clock.anchor == "checkpoint"
    assert any("clock_untrusted" in e for e in report.errors)
    assert report.as_dict()["clock_untrusted"] is True
    assert _segments(rt) == 5

    (event,) = _events(rt, "clock.untrusted")
    assert event.actor_name == "system" and "ahead of the trusted time" in (event.reason or "")
    assert Sweeper(rt.db, rt.settings, jumped).run().segments == 0
    assert len(_events(rt, "clock.untrusted")) == 1, "one event per outage, not one per run"
    with rt.db.session() as s:
        assert s.get(Meta, trusted_time.META_KEY) is not None

    # Health (anonymous and detailed) and metrics of an API process with the same clock.
    _, token = make_user(rt, jumped, "ops", ["operator"])
    with running_api(rt, jumped) as url, httpx.Client(base_url=url, timeout=30) as c:
        health = c.get("/api/v1/health").json()
        detail = c.get("/api/v1/system/health", headers={"Authorization": f"Bearer {token}"}).json()
        metrics = c.get("/api/v1/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert health["status"] == "degraded" and "clock_untrusted" in health["alarms"]
    assert "clock_untrusted" in detail["alarms"] and detail["clock"]["trusted"] is False
    assert detail["clock"]["ahead_seconds"] >= 40 * 86_400 - 60
    assert "nvr_clock_untrusted 1.0" in metrics
    ahead = next(line for line in metrics.splitlines() if line.startswith("nvr_clock_ahead_seconds "))
    assert float(ahead.split()[1]) >= 40 * 86_400 - 60
    assert len(_events(rt, "clock.untrusted")) == 1


# --- (2) after a person confirms the clock, deletion proceeds ---------------------------------------------------
def test_after_clock_confirm_the_sweeper_deletes_again(runtime: Runtime) -> None:
    rt = runtime
    now = _scene(rt)
    jumped = FakeClock(now + 40 * DAY)
    sweeper_clock = trusted_time.shared(rt.db, rt.settings, jumped)  # the running server's trusted clock
    assert Sweeper(rt.db, rt.settings, jumped).run().segments == 0

    done = trusted_time.confirm(
        rt.db, rt.settings, jumped, "power cut 40 days; wall clock checked against the GPS receiver", actor=ME
    )
    assert not done.before.trusted and done.after.trusted
    (event,) = _events(rt, "clock.confirm")
    assert event.actor_name == "cli:tester" and "GPS receiver" in (event.reason or "")
    with rt.db.session() as s:
        assert s.get(Meta, trusted_time.META_KEY) is None
        cp = s.get(Checkpoint, done.checkpoint_id)
        assert cp is not None and cp.created_us == jumped.now_us()
        assert checkpoints.parse_body(cp.body)["audit"]["seq"] >= event.seq, "the anchor covers the confirmation"

    # The running process picks the confirmed checkpoint up without a restart.
    report = Sweeper(rt.db, rt.settings, jumped).run()
    assert not report.clock_untrusted and sweeper_clock.status().trusted
    assert report.segments == 5 and _segments(rt) == 0
    assert _events(rt, "clock.trusted") == [], "the confirmation closed the outage"
    with rt.db.session() as s:
        alarms = storage_alarms(s, rt.settings, rt.db.database_id(), jumped.now_us(), sweeper_clock.status())
    assert "clock_untrusted" not in alarms.codes


def test_confirm_is_refused_without_a_reason_and_the_cli_reports_and_confirms(runtime: Runtime, nvr_env) -> None:
    rt = runtime
    _scene(rt)
    nvr = [sys.executable, "-m", "nvr", "clock"]
    out = subprocess.run([*nvr, "status", "--json"], env=nvr_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["trusted"] is True and data["anchor"] == "checkpoint" and data["outage_recorded"] is False

    for args in ([], ["--reason", "  "]):
        out = subprocess.run([*nvr, "confirm", *args], env=nvr_env, capture_output=True, text=True)
        assert out.returncode == 2 and "reason_required" in out.stderr
    assert _events(rt, "clock.confirm") == []

    out = subprocess.run(
        [*nvr, "confirm", "--reason", "checked against ntp.example", "--json"],
        env=nvr_env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    (event,) = _events(rt, "clock.confirm")
    assert event.actor_name.startswith("cli:") and event.seq == data["audit_seq"]
    assert data["after"]["trusted"] is True and data["after"]["checkpoint_id"] == data["checkpoint_id"]


class Crash(BaseException):
    """The process dies here."""


@pytest.mark.parametrize("step", ["marked", "unlinked"])
def test_an_untrusted_clock_only_finishes_batches_whose_files_are_gone(runtime: Runtime, step: str) -> None:
    rt = runtime
    now = _scene(rt)
    add_segments(rt, "cam1", now - 41 * DAY, 6)  # seq 6..11: really past the 30/30 policy
    rt.settings.sweep_batch_size = 3

    def crash(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):  # a trusted sweep dies after marking (or unlinking) its first batch
        Sweeper(rt.db, rt.settings, FakeClock(now), step_hook=crash).run()
    report = Sweeper(rt.db, rt.settings, FakeClock(now + 40 * DAY)).run()  # restarted with the clock 40 days ahead
    assert report.clock_untrusted
    if step == "unlinked":  # bookkeeping only: the batch's files were already gone
        assert report.resumed == [1] and report.segments == 3 and _segments(rt) == 5 + 3
    else:  # its files are still there: it waits, and nothing else is touched
        assert report.resumed == [] and report.segments == 0 and _segments(rt) == 5 + 6
        assert any("batch(es) 1 wait for a trusted clock" in e for e in report.errors)
    report = Sweeper(rt.db, rt.settings, FakeClock(now + 5 * MIN)).run()  # the clock is right again
    assert not report.clock_untrusted and _segments(rt) == 5
    assert len(_events(rt, "clock.untrusted")) == len(_events(rt, "clock.trusted")) == 1


# --- (3) time that really passed deletes as before ---------------------------------------------------------------
def test_forty_days_that_really_passed_delete_as_before(runtime: Runtime) -> None:
    rt = runtime
    now = _scene(rt)
    clock = FakeClock(now)  # a server running since now
    assert Sweeper(rt.db, rt.settings, clock).run().segments == 0  # nothing is due yet
    clock.step(30 * 60)  # an NTP correction within the tolerance: still trusted
    assert trusted_time.shared(rt.db, rt.settings, clock).status().trusted
    clock.advance(40 * 86_400)
    report = Sweeper(rt.db, rt.settings, clock).run()
    assert not report.clock_untrusted and report.segments == 5
    assert _events(rt, "clock.untrusted") == []


def test_a_jump_stamped_into_no_checkpoint_and_a_restart_does_not_trust_it(runtime: Runtime) -> None:
    rt = runtime
    now = _scene(rt)
    clock = FakeClock(now)
    tc = TrustedClock(clock, rt.db, rt.settings)
    assert tc.status().trusted
    clock.step(40 * 86_400)  # the wall clock is set 40 days ahead while the server runs
    st = tc.status()
    assert not st.trusted and st.ahead_us == 40 * DAY
    assert tc.now_us() == st.bound_us + tc.tolerance_us and tc.checkpoint_time_us() == st.bound_us
    with rt.db.session() as s:  # what the checkpoint scheduler writes meanwhile
        signer = keys.active_signer(s, rt.settings.keys_dir)
        checkpoints.make_checkpoint(s, signer, tc.checkpoint_time_us(), rt.db.database_id())
    tc.refresh()
    assert not tc.status().trusted
    restarted = TrustedClock(FakeClock(clock.now_us()), rt.db, rt.settings)
    assert not restarted.status().trusted, "a restart after the jump still sees it"

    # A checkpoint stamped with the jumped wall clock by anything else is not taken as witnessed by a running
    # process (a restart would take it: every writer must stamp with checkpoint_time_us).
    with rt.db.session() as s:
        checkpoints.make_checkpoint(s, signer, clock.now_us(), rt.db.database_id())
    tc.refresh()
    st = tc.status()
    assert not st.trusted and "no clock.confirm precedes it" in (st.detail or "")


def test_start_up_accepts_a_downtime_within_the_tolerance_only(runtime: Runtime) -> None:
    rt = runtime
    now = _scene(rt)
    st = TrustedClock(FakeClock(now + 50 * MIN), rt.db, rt.settings).status()  # 50 min down, tolerance 60
    assert st.trusted and st.ahead_us == 0 and st.bound_us == now + 50 * MIN
    st = TrustedClock(FakeClock(now + 2 * 60 * MIN), rt.db, rt.settings).status()
    assert not st.trusted and 60 * MIN < st.ahead_us <= 2 * 60 * MIN
    st = TrustedClock(FakeClock(now - 400 * DAY), rt.db, rt.settings).status()  # behind: keeps longer, trusted
    assert st.trusted and st.ahead_us < 0


def test_without_a_verifiable_checkpoint(runtime: Runtime, settings_factory) -> None:
    rt = runtime
    # Nothing at all witnessed yet (a fresh install): nothing to protect, trusted.
    st = TrustedClock(FakeClock(time.time_ns() // 1000 + 40 * DAY), rt.db, rt.settings).status()
    assert st.trusted and st.anchor == "none"
    now = _scene(rt)
    with rt.db.session() as s:  # no checkpoint: the newest rows the database witnessed are the anchor
        s.query(Checkpoint).delete()
    st = TrustedClock(FakeClock(now + 40 * DAY), rt.db, rt.settings).status()
    assert not st.trusted and st.anchor == "database"
    assert Sweeper(rt.db, rt.settings, FakeClock(now + 40 * DAY)).run().segments == 0
    # Checkpoints that exist but do not verify are no anchor: untrusted even with a right clock.
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        s.execute(update(Checkpoint).values(signature="00" * 64))
    st = TrustedClock(FakeClock(now), rt.db, rt.settings).status()
    assert not st.trusted and "verifies" in (st.detail or "")


# --- (4) bundle expiry ------------------------------------------------------------------------------------------
def _bundle(rt: Runtime, now: int) -> tuple[int, str]:
    """A finished export job whose bundle may be downloaded for 30 days from now."""
    rt.settings.exports_dir.mkdir(parents=True, exist_ok=True)
    name = "export-1-1.zip"
    (rt.settings.exports_dir / name).write_bytes(b"PK bundle")
    with rt.db.session() as s:
        u = User(
            username="off1", full_name="Off", staff_number="1", unit="Unit A", roles="officer", state="active",
            password_hash="-", created_us=now, updated_us=now,
        )  # fmt: skip
        s.add(u)
        s.flush()
        r = ExportRequest(
            requester_id=u.id, cameras="cam1", window_start_us=now - 10 * MIN, window_end_us=now, purpose="p",
            case_ref="CASE-1", legal_basis="l", recipient="court", destination="d", route="approval",
            state="exported", created_us=now, updated_us=now,
        )  # fmt: skip
        s.add(r)
        s.flush()
        job = ExportJob(
            request_id=r.id, state="done", started_by=u.id, created_us=now, finished_us=now, bundle_name=name,
            expires_us=now + rt.settings.export_bundle_days * DAY,
        )  # fmt: skip
        s.add(job)
        s.flush()
        return job.id, name


def _job_state(rt: Runtime, job_id: int) -> str:
    with rt.db.session() as s:
        return str(s.scalar(select(ExportJob.state).where(ExportJob.id == job_id)))


def test_a_jumped_clock_does_not_expire_a_bundle(runtime: Runtime) -> None:
    rt = runtime
    now = _scene(rt)
    job_id, name = _bundle(rt, now)
    jumped = FakeClock(now + 40 * DAY)
    ExportRunner(Services(rt.settings, rt.db, jumped)).expire_bundles()
    assert _job_state(rt, job_id) == "done" and (rt.settings.exports_dir / name).exists()
    assert _events(rt, "export.bundle.delete") == []
    assert len(_events(rt, "clock.untrusted")) == 1

    # 31 days that really pass do expire it.
    clock = FakeClock(now)
    runner = ExportRunner(Services(rt.settings, rt.db, clock))
    runner.expire_bundles()
    assert _job_state(rt, job_id) == "done"
    clock.advance(31 * 86_400)
    runner.expire_bundles()
    assert _job_state(rt, job_id) == "deleted" and not (rt.settings.exports_dir / name).exists()
    assert len(_events(rt, "export.bundle.delete")) == 1
    assert len(_events(rt, "clock.trusted")) == 1, "the outage recorded by the jumped process ended"
