"""The retention sweeper deletes exactly what may go, survives a crash at any step, and keeps the chain verifiable.

Real database, real segment files (tests/support/footage), an injected clock; the high-water case runs on a real
size-limited tmpfs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update

from integrity.tombstones import check_tombstones, parse_run_event
from nvr.clock import FakeClock
from nvr.models import (
    AuditEvent,
    Camera,
    EvidenceHold,
    Grant,
    HoldCamera,
    ReadPin,
    RetentionPolicy,
    Segment,
    SegmentTombstone,
    SweepBatch,
    User,
    Volume,
)
from nvr.runtime import Runtime
from retention.sweeper import STEPS, Sweeper, SweepScheduler
from storage import catalog
from storage import volumes as vol
from tests.support.footage import add_camera, add_segments

DAY = 86_400_000_000
T0 = 1_700_000_000_000_000
SEG = 2_000_000


# --- helpers -------------------------------------------------------------------------------------------------------
def _policy(rt: Runtime, max_days: int | None, min_days: int = 30, cameras: list[str] | None = None) -> None:
    """Give the default policy (or a new one for ``cameras``) these days, as the policies service would store them."""
    with rt.db.session() as s:
        if cameras is None:
            s.execute(update(RetentionPolicy).values(min_days=min_days, max_days=max_days))
            return
        p = RetentionPolicy(name=f"p{max_days}", min_days=min_days, max_days=max_days, created_us=T0, updated_us=T0)
        s.add(p)
        s.flush()
        s.execute(update(Camera).where(Camera.id.in_(cameras)).values(policy_id=p.id))


def _hold(rt: Runtime, camera_id: str, start_us: int, end_us: int | None, state: str = "active") -> None:
    with rt.db.session() as s:
        h = EvidenceHold(
            case_ref="CASE-1", title="t", reason="r", start_us=start_us, end_us=end_us, state=state,
            placed_by_name="officer", placed_us=T0,
        )  # fmt: skip
        s.add(h)
        s.flush()
        s.add(HoldCamera(hold_id=h.id, camera_id=camera_id))


def _pins(rt: Runtime, pins: list[tuple[str, int, int, int]]) -> None:
    """Read pins (camera, start, end, heartbeat) as a playback stream inserts them, under one viewer's grant."""
    with rt.db.session() as s:
        u = User(
            username="viewer", full_name="V", staff_number="1", unit="U", roles="officer", state="active",
            password_hash="-", created_us=T0, updated_us=T0,
        )  # fmt: skip
        s.add(u)
        s.flush()
        g = Grant(
            user_id=u.id, actions="playback", valid_from_us=T0, valid_until_us=T0 + 400 * DAY, purpose="p",
            case_ref="C", max_streams=2, state="active", granted_by=u.id, created_us=T0, updated_us=T0,
        )  # fmt: skip
        s.add(g)
        s.flush()
        for camera_id, start_us, end_us, heartbeat_us in pins:
            s.add(
                ReadPin(
                    grant_id=g.id,
                    user_id=u.id,
                    camera_id=camera_id,
                    start_us=start_us,
                    end_us=end_us,
                    started_us=heartbeat_us,
                    heartbeat_us=heartbeat_us,
                    request_id="r",
                )
            )


def _rows(rt: Runtime) -> dict[tuple[str, int], tuple[Path, int | None]]:
    """(camera, seq) -> (file, sweep_batch_id) of every segment row."""
    with rt.db.session() as s:
        q = select(Segment.camera_id, Segment.seq, Volume.path, Segment.rel_path, Segment.sweep_batch_id).join(
            Volume, Volume.id == Segment.volume_id
        )
        return {(c, n): (Path(vp) / rel, b) for c, n, vp, rel, b in s.execute(q)}


def _files(rt: Runtime) -> set[Path]:
    with rt.db.session() as s:
        roots = [Path(p) for p in s.scalars(select(Volume.path))]
    return {p for r in roots for p in r.rglob("*.mp4")}


def _remaining(rt: Runtime) -> set[tuple[str, int]]:
    return set(_rows(rt))


def _check_consistent(rt: Runtime, *, after_resume: bool) -> None:
    """No file without a row; a row without a file only while marked (and none at all once resumed)."""
    rows = _rows(rt)
    files = _files(rt)
    assert files <= {p for p, _ in rows.values()}, "orphan file(s) on disk"
    missing = [(k, b) for k, (p, b) in rows.items() if p not in files]
    if after_resume:
        assert missing == []
    else:
        assert all(b is not None for _, b in missing), f"unmarked row(s) without a file: {missing}"


def _chains_verify(rt: Runtime, cameras: list[str]) -> None:
    with rt.db.session() as s:
        for cam in cameras:
            assert catalog.verify_chain(s, cam) == [], cam


def _sweep_events(rt: Runtime) -> list[AuditEvent]:
    with rt.db.session() as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.action == "retention.sweep").order_by(AuditEvent.seq))
        )


def _summaries(rt: Runtime) -> list[AuditEvent]:
    """The one batch-level summary of each batch (no camera); the others are one event per deleted run."""
    return [e for e in _sweep_events(rt) if e.camera_id is None]


def _tombstones_proven(rt: Runtime) -> None:
    assert check_tombstones(rt.db, rt.settings.retention_floor_days) == []


def _sweeper(rt: Runtime, now_us: int, **kw: object) -> Sweeper:
    return Sweeper(rt.db, rt.settings, FakeClock(now_us), **kw)  # type: ignore[arg-type]


# --- done when: 40 days later, exactly what may go is gone, and the chain verifies from its tombstones ----------
def test_forty_days_later_exactly_the_unprotected_expired_segments_are_gone(runtime: Runtime) -> None:
    rt = runtime
    for cam in ("cam1", "cam2"):
        add_camera(rt, cam)
    c1 = add_segments(rt, "cam1", T0, 10)
    c2 = add_segments(rt, "cam2", T0 + 1_000_000, 10)
    add_segments(rt, "cam2", T0 + 20 * DAY, 3)  # seq 11..13: only 20 days old, still retained
    _policy(rt, max_days=30)
    now = T0 + 40 * DAY
    _hold(rt, "cam1", c1[3] + 1, c1[5] + 1)  # overlaps seq 4..6, in the middle of the run
    _hold(rt, "cam2", c2[0], c2[2], state="released")  # released: protects nothing
    live, dead = now - 1_000_000, now - 3_600_000_000  # a heartbeat an hour old belongs to a process that died
    _pins(rt, [("cam2", c2[7] + 1, c2[7] + 2, live), ("cam2", c2[8] + 1, c2[8] + 2, dead)])  # seq 8 and 9

    planned = _sweeper(rt, now).run(dry_run=True)
    assert _remaining(rt) == {(c, n) for c in ("cam1", "cam2") for n in range(1, 11)} | {
        ("cam2", n) for n in (11, 12, 13)
    }
    report = _sweeper(rt, now).run()

    kept = {("cam1", 4), ("cam1", 5), ("cam1", 6), ("cam2", 8), ("cam2", 11), ("cam2", 12), ("cam2", 13)}
    assert _remaining(rt) == kept
    assert {p for p, _ in _rows(rt).values()} == _files(rt)  # kept rows have their files, deleted files are gone
    assert report.segments == 20 - 4 == planned.segments
    assert report.volumes[0].swept_bytes == planned.volumes[0].swept_bytes == report.bytes
    assert {c: v.as_dict() for c, v in report.cameras.items()} == {c: v.as_dict() for c, v in planned.cameras.items()}
    assert report.cameras["cam1"].first_seq == 1 and report.cameras["cam1"].last_seq == 10
    assert report.cameras["cam1"].segments == 7 and report.cameras["cam1"].reasons == {"max_age"}
    _chains_verify(rt, ["cam1", "cam2"])
    with rt.db.session() as s:
        tomb = s.execute(
            select(SegmentTombstone.camera_id, SegmentTombstone.first_seq, SegmentTombstone.last_seq).order_by(
                SegmentTombstone.camera_id, SegmentTombstone.first_seq
            )
        ).all()
        assert [tuple(t) for t in tomb] == [("cam1", 1, 3), ("cam1", 7, 10), ("cam2", 1, 7), ("cam2", 9, 10)]
        done = s.scalar(select(func.count()).select_from(SweepBatch).where(SweepBatch.state == "done"))
    events = _sweep_events(rt)
    summaries = _summaries(rt)
    assert len(summaries) == done == len(report.batches) == 1
    assert events[-1].camera_id is None  # each batch's summary comes after its runs' events
    assert sum(e.bytes or 0 for e in summaries) == sum(e.bytes or 0 for e in events if e.camera_id) == report.bytes
    assert all(e.actor_name == "system" and e.object_id == f"sweep_batch:{report.batches[0]}" for e in events)
    assert "cam1 seq 1..3,7..10 (7 segments)" in (summaries[0].reason or "")
    # One event per run: its camera, window, bytes and reason name exactly what its tombstone stands for.
    with rt.db.session() as s:
        tombs = {(t.camera_id, t.first_seq): t for t in s.scalars(select(SegmentTombstone))}
    runs = [(e, parse_run_event(e.seq, e.at_us, e.object_id, e.reason)) for e in events if e.camera_id]
    assert sorted((e.camera_id, c.first_seq, c.last_seq) for e, c in runs if c) == [tuple(t) for t in tomb]
    for e, c in runs:
        assert c is not None and e.camera_id is not None, e.reason
        t = tombs[(e.camera_id, c.first_seq)]
        assert (c.prev_link, c.last_link, c.segments) == (t.prev_link, t.last_link, t.segments)
        assert (c.min_days, c.floor) == (30, 30)
        assert (e.window_start_us, e.window_end_us, e.bytes, e.at_us) == (t.start_us, t.end_us, t.bytes, now)
    assert (runs[0][0].reason or "").startswith("reason max_age; seq 1..3 (3 segments); prev_link ")
    _tombstones_proven(rt)

    # A second run finds nothing; tampering with what the sweeper kept is still reported.
    assert _sweeper(rt, now).run().segments == 0
    with rt.db.session() as s:
        s.execute(delete(Segment).where(Segment.camera_id == "cam1", Segment.seq == 5))
        s.execute(update(Segment).where(Segment.camera_id == "cam2", Segment.seq == 12).values(bytes=1))
    with rt.db.session() as s:
        assert {(p.seq, p.kind) for p in catalog.verify_chain(s, "cam1")} == {(6, "seq_gap"), (6, "chain_break")}
        assert [(p.seq, p.kind) for p in catalog.verify_chain(s, "cam2")] == [(12, "chain_break")]


def test_max_days_deletes_only_after_retain_until(runtime: Runtime) -> None:
    """Older than max_days but retain_until in the future (the policy was raised, then lowered): kept until then."""
    rt = runtime
    for cam in ("raised", "plain", "nomax"):
        add_camera(rt, cam)
        add_segments(rt, cam, T0, 3)
    _policy(rt, max_days=30, cameras=["raised", "plain"])  # nomax: the default policy, no max_days
    with rt.db.session() as s:  # raised to 45 days while these were kept, lowered again afterwards
        s.execute(
            update(Segment).where(Segment.camera_id == "raised").values(retain_until_us=Segment.end_us + 45 * DAY)
        )
    report = _sweeper(rt, T0 + 40 * DAY).run()
    assert set(report.cameras) == {"plain"}
    assert {c for c, _ in _remaining(rt)} == {"raised", "nomax"}
    report = _sweeper(rt, T0 + 45 * DAY + SEG * 3).run()
    assert set(report.cameras) == {"raised"} and report.cameras["raised"].reasons == {"max_age"}
    assert _remaining(rt) == {("nomax", n) for n in (1, 2, 3)}
    _chains_verify(rt, ["raised", "plain", "nomax"])
    # Every row of "plain" is gone: its next segment continues from the tombstone, it does not restart at seq 1.
    add_segments(rt, "plain", T0 + 46 * DAY, 1)
    assert ("plain", 4) in _remaining(rt)
    _chains_verify(rt, ["plain"])


# --- crashes ---------------------------------------------------------------------------------------------------------
class Crash(BaseException):
    """The process dies here: nothing after it runs, no cleanup."""


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_leaves_no_orphan_and_resumes(runtime: Runtime, step: str) -> None:
    rt = runtime
    for cam in ("cam1", "cam2"):
        add_camera(rt, cam)
    add_segments(rt, "cam1", T0, 4)
    add_segments(rt, "cam2", T0 + 1_000_000, 4)
    _policy(rt, max_days=30)
    rt.settings.sweep_batch_size = 3
    now = T0 + 40 * DAY

    def hook(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):
        _sweeper(rt, now, step_hook=hook).run()
    _check_consistent(rt, after_resume=False)

    report = _sweeper(rt, now).run()
    _check_consistent(rt, after_resume=True)
    assert _remaining(rt) == set() and _files(rt) == set()
    root = Path(rt.settings.effective_volumes[0])
    assert [list((root / cam).iterdir()) for cam in ("cam1", "cam2")] == [[], []]  # emptied folders removed
    assert report.resumed == ([] if step == "removed" else [1])
    _chains_verify(rt, ["cam1", "cam2"])
    with rt.db.session() as s:
        done = list(s.scalars(select(SweepBatch.id).where(SweepBatch.state == "done").order_by(SweepBatch.id)))
        assert s.scalar(select(func.count()).select_from(SweepBatch).where(SweepBatch.state != "done")) == 0
        assert s.execute(select(SegmentTombstone.camera_id, SegmentTombstone.first_seq, SegmentTombstone.last_seq)
                         .order_by(SegmentTombstone.camera_id)).all() == [("cam1", 1, 4), ("cam2", 1, 4)]  # fmt: skip
    assert [e.object_id for e in _summaries(rt)] == [f"sweep_batch:{b}" for b in done]
    _tombstones_proven(rt)  # each tombstone spans runs of several batches, one event each
    with rt.db.session() as s:  # every row is gone: the next segment must continue from the tombstone
        assert catalog.chain_head(s, "cam1") == (
            4,
            s.scalar(select(SegmentTombstone.last_link).filter_by(camera_id="cam1")),
        )


def test_a_hold_placed_while_a_crashed_batch_waits_spares_its_segments(runtime: Runtime) -> None:
    """Marked but not yet re-checked when the process died: the resume re-checks, so the hold wins."""
    rt = runtime
    add_camera(rt, "cam1")
    starts = add_segments(rt, "cam1", T0, 4)
    _policy(rt, max_days=30)

    def hook(name: str) -> None:
        if name == "marked":
            raise Crash(name)

    now = T0 + 40 * DAY
    with pytest.raises(Crash):
        _sweeper(rt, now, step_hook=hook).run()
    _hold(rt, "cam1", starts[1], starts[2] + 1)  # seq 2 and 3
    _sweeper(rt, now).run()
    assert _remaining(rt) == {("cam1", 2), ("cam1", 3)}
    _check_consistent(rt, after_resume=True)
    _chains_verify(rt, ["cam1"])


def test_a_volume_without_its_identity_defers_the_batch_instead_of_dropping_rows(runtime: Runtime) -> None:
    """An unmounted disk must not pass for "files already gone": the batch waits for the disk to come back."""
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 3)
    _policy(rt, max_days=30)

    def hook(name: str) -> None:
        if name == "rechecked":
            raise Crash(name)

    now = T0 + 40 * DAY
    with pytest.raises(Crash):
        _sweeper(rt, now, step_hook=hook).run()
    identity = Path(rt.settings.effective_volumes[0]) / vol.IDENTITY_FILE
    identity.rename(identity.with_suffix(".away"))
    report = _sweeper(rt, now).run()
    assert report.batches == [] and any("volume_identity_missing" in e for e in report.errors)
    assert len(_rows(rt)) == 3 and len(_files(rt)) == 3
    identity.with_suffix(".away").rename(identity)
    assert _sweeper(rt, now).run().resumed == [1]
    assert _rows(rt) == {} and _files(rt) == set()


# --- the high-water mark ----------------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmpfs) -> Path:
    return tmpfs("4m")


def _fill_to(mnt: Path, percent: float) -> None:
    du = shutil.disk_usage(mnt)
    with open(mnt / "filler.bin", "ab") as f:
        f.write(b"\0" * max(0, int(du.total * percent / 100) - (du.total - du.free)))
        f.flush()
        os.fsync(f.fileno())


def test_above_high_water_oldest_deletable_go_first_across_cameras(runtime_on, small_fs: Path) -> None:
    rt = runtime_on(small_fs)
    for cam in ("cam1", "cam2"):
        add_camera(rt, cam)
    c1 = add_segments(rt, "cam1", T0, 6)  # cam1 and cam2 interleave in time, 1 s apart
    add_segments(rt, "cam2", T0 + 1_000_000, 6)
    add_segments(rt, "cam1", T0 + 39 * DAY, 2)  # seq 7, 8: still retained
    _hold(rt, "cam1", c1[0], c1[0] + 1)  # the very oldest segment is evidence
    rt.settings.retention_high_water_percent, rt.settings.retention_low_water_percent = 60.0, 56.0
    _fill_to(small_fs, 70)
    now = T0 + 40 * DAY  # default policy: no max_days; only space can be a reason

    report = _sweeper(rt, now).run()
    (usage,) = report.volumes
    need = usage.used_bytes_before - int(usage.total_bytes * 0.56)
    order = [("cam2", 1)] + [x for n in range(2, 7) for x in (("cam1", n), ("cam2", n))]  # deletable, oldest first
    size = os.path.getsize(next(iter(_files(rt))))
    k = -(-need // size)  # the fewest oldest segments whose bytes cover the need
    assert 0 < k < len(order)
    assert _remaining(rt) == {("cam1", 1), ("cam1", 7), ("cam1", 8)} | set(order[k:])
    assert {c: v.reasons for c, v in report.cameras.items()} == {"cam1": {"space"}, "cam2": {"space"}}
    assert usage.used_bytes_after * 100 < 56 * usage.total_bytes
    _check_consistent(rt, after_resume=True)

    # Fuller than deleting everything deletable can fix: all of it goes, the protected segments stay.
    _fill_to(small_fs, 95)
    report = _sweeper(rt, now).run()
    assert _remaining(rt) == {("cam1", 1), ("cam1", 7), ("cam1", 8)}
    assert report.volumes[0].above_high_water_after is True
    _chains_verify(rt, ["cam1", "cam2"])
    assert _sweeper(rt, now).run().segments == 0


def test_below_the_critical_mark_space_is_freed_even_under_the_high_water_mark(runtime_on, small_fs: Path) -> None:
    """A reserve larger than the high-water slack: the recorder would stop (storage_full) while the volume is still
    under the high-water mark. The sweeper frees deletable footage until twice the reserve is free."""
    rt = runtime_on(small_fs)
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 8)
    add_segments(rt, "cam1", T0 + 39 * DAY, 2)  # seq 9, 10: still retained
    size = os.path.getsize(next(iter(_files(rt))))
    _fill_to(small_fs, 96)
    free = shutil.disk_usage(small_fs).free
    rt.settings.retention_high_water_percent, rt.settings.retention_low_water_percent = 99.5, 99.0
    rt.settings.volume_min_free_bytes = free + size  # just below the critical mark, far under high water
    report = _sweeper(rt, T0 + 40 * DAY).run()
    k = -(-(2 * rt.settings.volume_min_free_bytes - free) // size)  # the fewest oldest segments that free enough
    assert 0 < k < 8
    assert _remaining(rt) == {("cam1", n) for n in range(k + 1, 11)}
    assert report.cameras["cam1"].reasons == {"space"}
    assert shutil.disk_usage(small_fs).free >= 2 * rt.settings.volume_min_free_bytes
    _chains_verify(rt, ["cam1"])


# --- the command and the schedule -----------------------------------------------------------------------------------
def test_cli_dry_run_changes_nothing_and_the_sweep_is_audited_as_the_cli_user(runtime: Runtime, nvr_env) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    old = rt.clock.now_us() - 40 * DAY
    add_segments(rt, "cam1", old, 3)
    _policy(rt, max_days=30)
    nvr = [sys.executable, "-m", "nvr"]
    before = (_rows(rt), _files(rt), len(_sweep_events(rt)))

    out = subprocess.run(
        [*nvr, "retention", "sweep", "--dry-run", "--json"], env=nvr_env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["dry_run"] is True and data["segments"] == 3 and data["cameras"][0]["camera_id"] == "cam1"
    assert (_rows(rt), _files(rt), len(_sweep_events(rt))) == before
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(SweepBatch)) == 0

    out = subprocess.run([*nvr, "retention", "sweep"], env=nvr_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "cam1" in out.stdout and "3 segment" in out.stdout
    assert _rows(rt) == {} and _files(rt) == set()
    run, batch = _sweep_events(rt)
    for event in (run, batch):
        assert (event.actor_name or "").startswith("cli:") and event.user_agent == "nvr-cli"
    assert run.camera_id == "cam1" and batch.camera_id is None and run.bytes == batch.bytes


def test_scheduler_sweeps_at_start_and_when_woken(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    _policy(rt, max_days=30)
    clock = FakeClock(T0 + 40 * DAY)
    rt.settings.sweep_interval_seconds = 3600
    sched = SweepScheduler(rt.db, rt.settings, clock)
    sched.start()
    try:
        assert sched.wait_passes(1, timeout=30)
        assert _remaining(rt) == set()
        add_camera(rt, "cam2")
        add_segments(rt, "cam2", T0 + DAY, 1)
        clock.advance(2 * 86_400)
        sched.wake()
        assert sched.wait_passes(2, timeout=30)
        assert _remaining(rt) == set() and sched.last_report is not None and sched.last_report.segments == 1
    finally:
        sched.stop()
