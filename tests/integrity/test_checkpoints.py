"""Signed checkpoints: the body names every camera's chain head and the audit head, an edited body or a foreign
signature fails, old checkpoints verify after a key rotation, covering() finds the earliest checkpoint that proves
a segment, and the scheduler writes on its interval by the injected clock."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, update

from integrity import audit_log, checkpoints, keys, records, signing
from integrity.chain import canonical_json
from nvr.clock import FakeClock
from nvr.errors import NvrError
from nvr.models import AuditHead, Checkpoint, Segment, SegmentTombstone
from nvr.runtime import Runtime
from storage import catalog
from tests.support.footage import add_camera, add_segments

T0 = 1_700_000_000_000_000
MIN = 60_000_000


def _checkpoint(rt: Runtime, now_us: int) -> Checkpoint:
    with rt.db.session() as s:
        keys.ensure_key(s, rt.settings.keys_dir, now_us)
    with rt.db.session() as s:
        return checkpoints.make_checkpoint(s, keys.active_signer(s, rt.settings.keys_dir), now_us, rt.db.database_id())


def _keys(rt: Runtime) -> dict[str, object]:
    with rt.db.session() as s:
        return keys.trusted_keys(s, rt.settings)  # type: ignore[return-value]


def test_body_names_each_camera_head_and_the_audit_head(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_camera(rt, "cam2")
    add_camera(rt, "idle")  # never recorded: left out
    add_segments(rt, "cam1", T0, 3)
    add_segments(rt, "cam2", T0, 2)
    cp = _checkpoint(rt, T0 + MIN)

    body = checkpoints.parse_body(cp.body)
    assert cp.body == canonical_json(body).decode("ascii")  # the signed text is the canonical form
    assert body["type"] == "nvr-checkpoint" and body["v"] == 2 and body["created_us"] == cp.created_us == T0 + MIN
    # The first of the chain, and it signs every registry record's digest.
    assert body["seq"] == cp.seq == 1 and body["prev_hash"] is None and cp.hash == checkpoints.body_hash(cp.body)
    with rt.db.session() as s:
        assert body["registry"] == records.registry_digests(s) and set(body["registry"]["cameras"]) == {
            "cam1",
            "cam2",
            "idle",
        }
    nxt = _checkpoint(rt, T0 + 2 * MIN)
    assert nxt.seq == 2 and checkpoints.parse_body(nxt.body)["prev_hash"] == cp.hash
    assert body["database_id"] == rt.db.database_id()
    with rt.db.session() as s:
        for cam in ("cam1", "cam2"):
            seq, link = catalog.chain_head(s, cam)
            assert body["cameras"][cam] == {"seq": seq, "link": link}
        head = s.get(AuditHead, 1)
        assert head is not None and body["audit"] == {"seq": head.seq, "hash": head.hash}
    assert set(body["cameras"]) == {"cam1", "cam2"} and body["cameras"]["cam1"]["seq"] == 3
    assert checkpoints.verify_checkpoint(cp, _keys(rt)) is None  # type: ignore[arg-type]
    assert cp.key_id in _keys(rt) and bytes.fromhex(cp.signature) and len(bytes.fromhex(cp.signature)) == 64


def test_head_continues_across_tombstones(runtime: Runtime) -> None:
    """Once retention removed a camera's newest rows, its head is the tombstone's last link, as the chain says."""
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 3)
    with rt.db.session() as s:
        last = s.scalars(select(Segment).where(Segment.camera_id == "cam1").order_by(Segment.seq.desc())).first()
        assert last is not None
        s.add(
            SegmentTombstone(
                camera_id="cam1", first_seq=3, last_seq=3, prev_link=last.prev_link, last_link=last.link,
                start_us=last.start_us, end_us=last.end_us, segments=1, bytes=last.bytes, deleted_us=T0,
                last_batch_id=0,
            )
        )  # fmt: skip
        s.delete(last)
    body = checkpoints.parse_body(_checkpoint(rt, T0 + MIN).body)
    with rt.db.session() as s:
        assert body["cameras"]["cam1"] == dict(zip(("seq", "link"), catalog.chain_head(s, "cam1"), strict=True))
    assert body["cameras"]["cam1"]["seq"] == 3


def test_edited_body_or_swapped_signature_fails(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    cp = _checkpoint(rt, T0 + MIN)
    ks = _keys(rt)
    body = json.loads(cp.body)
    body["cameras"]["cam1"]["seq"] = 1
    edited = Checkpoint(id=cp.id, created_us=cp.created_us, key_id=cp.key_id, suite=cp.suite,
                        body=canonical_json(body).decode(), signature=cp.signature)  # fmt: skip
    problem = checkpoints.verify_checkpoint(edited, ks)  # type: ignore[arg-type]
    assert problem is not None and "signature" in problem
    # A whitespace-only change of the signed text is an edit too.
    spaced = Checkpoint(id=cp.id, created_us=cp.created_us, key_id=cp.key_id, suite=cp.suite,
                        body=cp.body + " ", signature=cp.signature)  # fmt: skip
    assert checkpoints.verify_checkpoint(spaced, ks) is not None  # type: ignore[arg-type]
    # Signed by a key the server never had.
    _, stranger = signing.generate()
    forged = Checkpoint(id=cp.id, created_us=cp.created_us, key_id=stranger.key_id, suite=cp.suite, body=cp.body,
                        signature=stranger.sign(cp.body.encode()).hex())  # fmt: skip
    problem = checkpoints.verify_checkpoint(forged, ks)  # type: ignore[arg-type]
    assert problem is not None and "not a pinned signing key" in problem
    # Stored time moved away from the signed time.
    moved = Checkpoint(id=cp.id, created_us=cp.created_us + 1, key_id=cp.key_id, suite=cp.suite, body=cp.body,
                       signature=cp.signature)  # fmt: skip
    assert checkpoints.verify_checkpoint(moved, ks) is not None  # type: ignore[arg-type]
    # The stored row, edited in the database, fails when read back.
    with rt.db.session() as s:
        s.execute(update(Checkpoint).where(Checkpoint.id == cp.id).values(body=edited.body))
    with rt.db.session() as s:
        row = s.get(Checkpoint, cp.id)
        assert row is not None and checkpoints.verify_checkpoint(row, keys.public_key_map(s)) is not None


def test_parse_body_refuses_what_is_not_a_checkpoint() -> None:
    for text in ("", "[]", '{"type":"x","v":1}', canonical_json({"type": "nvr-checkpoint", "v": 2}).decode()):
        with pytest.raises(NvrError) as err:
            checkpoints.parse_body(text)
        assert err.value.code == "checkpoint_invalid"


def test_old_checkpoints_verify_after_rotation(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 1)
    old = _checkpoint(rt, T0 + MIN)
    with rt.db.session() as s:
        retired, new = keys.rotate(s, rt.settings.keys_dir, T0 + 2 * MIN)
    with rt.db.session() as s:
        keys.purge_retired(s, rt.settings.keys_dir)
    later = _checkpoint(rt, T0 + 3 * MIN)
    assert old.key_id == retired.key_id and later.key_id == new.key_id
    ks = _keys(rt)
    assert checkpoints.verify_checkpoint(old, ks) is None  # type: ignore[arg-type]
    assert checkpoints.verify_checkpoint(later, ks) is None  # type: ignore[arg-type]
    # Verified by a key it was not signed with, it fails.
    swapped = Checkpoint(id=old.id, created_us=old.created_us, key_id=new.key_id, suite=old.suite, body=old.body,
                         signature=old.signature)  # fmt: skip
    assert checkpoints.verify_checkpoint(swapped, ks) is not None  # type: ignore[arg-type]


def test_covering_picks_the_earliest_covering_checkpoint(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_camera(rt, "cam2")
    add_segments(rt, "cam1", T0, 2)  # seq 1, 2
    cp1 = _checkpoint(rt, rt.clock.now_us() + MIN)
    add_segments(rt, "cam1", T0 + 10 * MIN, 2)  # seq 3, 4
    cp2 = _checkpoint(rt, rt.clock.now_us() + 2 * MIN)
    cp3 = _checkpoint(rt, rt.clock.now_us() + 3 * MIN)
    with rt.db.session() as s:
        assert checkpoints.covering(s, "cam1", 1).id == cp1.id  # type: ignore[union-attr]
        assert checkpoints.covering(s, "cam1", 2).id == cp1.id  # type: ignore[union-attr]
        assert checkpoints.covering(s, "cam1", 3).id == cp2.id  # type: ignore[union-attr]
        assert checkpoints.covering(s, "cam1", 4).id == cp2.id  # type: ignore[union-attr]
        assert checkpoints.covering(s, "cam1", 5) is None  # not recorded yet
        assert checkpoints.covering(s, "cam2", 1) is None  # recorded nothing
    assert cp3.id > cp2.id
    add_segments(rt, "cam1", T0 + 20 * MIN, 1)  # seq 5: only a checkpoint made after it proves it
    with rt.db.session() as s:
        assert checkpoints.covering(s, "cam1", 5) is None
    cp4 = _checkpoint(rt, rt.clock.now_us() + 4 * MIN)
    with rt.db.session() as s:
        assert checkpoints.covering(s, "cam1", 5).id == cp4.id  # type: ignore[union-attr]


def test_covering_stays_right_past_the_walk_and_for_swept_rows(runtime: Runtime, monkeypatch) -> None:
    """Beyond the short forward walk (many checkpoints after the row, or no row left) the search still finds the
    earliest covering one."""
    rt = runtime
    add_camera(rt, "cam1")
    add_camera(rt, "cam2")
    add_segments(rt, "cam1", T0, 1)
    with rt.db.session() as s:
        made = s.scalar(select(Segment.created_us).where(Segment.camera_id == "cam1", Segment.seq == 1))
    assert made is not None
    monkeypatch.setattr(checkpoints, "WALK", 2)
    # Checkpoints made "after" the row by the clock that do not yet cover seq 2 (as after a long clock step).
    made_cps = [_checkpoint(rt, made + i * MIN) for i in range(1, 8)]
    add_segments(rt, "cam1", T0 + MIN, 1)  # seq 2
    with rt.db.session() as s:
        s.execute(update(Segment).where(Segment.camera_id == "cam1", Segment.seq == 2).values(created_us=made))
    covering = [_checkpoint(rt, made + i * MIN) for i in range(8, 12)]
    with rt.db.session() as s:
        assert checkpoints.covering(s, "cam1", 2).id == covering[0].id  # type: ignore[union-attr]
        assert checkpoints.covering(s, "cam1", 1).id == made_cps[0].id  # type: ignore[union-attr]
        s.execute(update(Segment).where(Segment.camera_id == "cam1").values(camera_id="cam2"))  # row "gone"
        assert checkpoints.covering(s, "cam1", 2).id == covering[0].id  # type: ignore[union-attr]
        s.rollback()


# --- the scheduler ---------------------------------------------------------------------------------------------------
def _count(rt: Runtime) -> int:
    with rt.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Checkpoint)) or 0)


def test_scheduler_writes_at_start_and_on_its_interval_by_the_injected_clock(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 1)
    rt.settings.checkpoint_interval_minutes = 10
    clock = FakeClock(T0 + MIN)
    sched = checkpoints.CheckpointScheduler(rt.db, rt.settings, clock, rt.settings.keys_dir)
    sched.start()
    try:
        assert sched.wait_passes(1, timeout=30)
        assert sched.written == 1 and _count(rt) == 1 and sched.last_error is None
        with rt.db.session() as s:
            assert keys.active_key(s) is not None  # made the first key itself
        clock.advance(9 * 60)
        sched.wake()
        assert sched.wait_passes(2, timeout=30)
        assert _count(rt) == 1  # not due yet
        add_segments(rt, "cam1", T0 + MIN, 1)
        clock.advance(60)
        sched.wake()
        assert sched.wait_passes(3, timeout=30)
        assert _count(rt) == 2
        with rt.db.session() as s:
            newest = s.scalars(select(Checkpoint).order_by(Checkpoint.id.desc())).first()
            assert newest is not None and newest.created_us == T0 + 11 * MIN
            assert checkpoints.parse_body(newest.body)["cameras"]["cam1"]["seq"] == 2
            assert checkpoints.verify_checkpoint(newest, keys.public_key_map(s)) is None
        sched.request()  # an explicit request writes one now
        assert sched.wait_passes(4, timeout=30)
        assert _count(rt) == 3
    finally:
        sched.stop()


def test_scheduler_survives_a_lost_key_and_resumes(runtime: Runtime, caplog) -> None:
    rt = runtime
    kd = rt.settings.keys_dir
    with rt.db.session() as s:
        row = keys.ensure_key(s, kd, T0)
    keys.private_path(kd, row.key_id).unlink()
    clock = FakeClock(T0 + MIN)
    sched = checkpoints.CheckpointScheduler(rt.db, rt.settings, clock, kd)
    sched.start()
    try:
        assert sched.wait_passes(1, timeout=30)
        assert _count(rt) == 0 and sched.last_error is not None and "signing_key_missing" in sched.last_error
        sched.wake()
        assert sched.wait_passes(2, timeout=30)  # still alive
        with rt.db.session() as s:
            keys.rotate(s, kd, clock.now_us(), actor=audit_log.SYSTEM, meta=audit_log.INTERNAL)
        sched.wake()
        assert sched.wait_passes(3, timeout=30)
        assert _count(rt) == 1 and sched.last_error is None
    finally:
        sched.stop()
    assert any("signing_key_missing" in r.getMessage() for r in caplog.records)


def test_checkpoints_that_stopped_raise_an_alarm(runtime: Runtime) -> None:
    """Footage recorded while no checkpoint can be signed is covered by no signature: /health must say so."""
    from storage.alarms import storage_alarms

    rt = runtime
    with rt.db.session() as s:
        assert "checkpoints_stale" not in storage_alarms(s, rt.settings, rt.db.database_id(), T0).codes  # none yet
        keys.ensure_key(s, rt.settings.keys_dir, T0)
    with rt.db.session() as s:
        checkpoints.make_checkpoint(s, keys.active_signer(s, rt.settings.keys_dir), T0, rt.db.database_id())
    interval = int(rt.settings.checkpoint_interval_minutes * MIN)
    with rt.db.session() as s:
        assert "checkpoints_stale" not in storage_alarms(s, rt.settings, rt.db.database_id(), T0 + 3 * interval).codes
        late = storage_alarms(s, rt.settings, rt.db.database_id(), T0 + 3 * interval + MIN)
        assert "checkpoints_stale" in late.codes and late.as_dict()["newest_checkpoint"] is not None
