"""Sequence numbers are issued once: storage.catalog continues a camera's chain from the newest of its issued head
(camera_chain_heads), its last row, its last tombstone and the newest signed checkpoint, and advances the issued
head in the registering transaction with one conditional statement, so deleted rows are never re-numbered and two
writers never fork a chain."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, func, select, update

from integrity import checkpoints
from nvr.errors import Kind, NvrError
from nvr.models import CameraChainHead, Checkpoint, Segment, Volume
from nvr.runtime import Runtime
from storage import catalog
from tests.support.footage import CLIP_SECONDS, add_camera, add_segments

T0 = 1_700_000_000_000_000
STEP = CLIP_SECONDS * 1_000_000


def _rows(rt: Runtime, camera_id: str) -> dict[int, tuple[str, str]]:
    """seq -> (prev_link, link) of the camera's rows."""
    with rt.db.session() as s:
        return {
            int(seq): (prev, link)
            for seq, prev, link in s.execute(
                select(Segment.seq, Segment.prev_link, Segment.link).where(Segment.camera_id == camera_id)
            )
        }


def _issued(rt: Runtime, camera_id: str) -> tuple[int, str] | None:
    with rt.db.session() as s:
        row = s.get(CameraChainHead, camera_id)
        return None if row is None else (row.seq, row.link)


def _delete_newest(rt: Runtime, camera_id: str, from_seq: int) -> None:
    """What someone with write access to the database can do: delete the newest rows."""
    with rt.db.session() as s:
        s.execute(delete(Segment).where(Segment.camera_id == camera_id, Segment.seq >= from_seq))


def _register(rt: Runtime, camera_id: str, start_us: int) -> Segment:
    """One segment row without a file (the catalogue does not look at files)."""
    with rt.db.session() as s:
        vol = s.scalars(select(Volume)).first()
        assert vol is not None
        return catalog.register_segment(
            s,
            camera_id=camera_id,
            volume_id=vol.id,
            rel_path=f"{camera_id}/x/{start_us}.mp4",
            start_us=start_us,
            media_duration_us=STEP,
            size=1000,
            frames=50,
            codecs="h264",
            clock_offset_us=0,
            sha256="ab" * 32,
            recovered=False,
            now_us=rt.clock.now_us(),
            floor_days=rt.settings.retention_floor_days,
        )


def test_the_issued_head_follows_every_registered_segment(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    assert _issued(rt, "cam1") is None
    add_segments(rt, "cam1", T0, 3)
    rows = _rows(rt, "cam1")
    assert _issued(rt, "cam1") == (3, rows[3][1])
    with rt.db.session() as s:
        assert catalog.chain_head(s, "cam1") == (3, rows[3][1])
        assert catalog.verify_chain(s, "cam1") == []


def test_deleted_newest_rows_are_not_reissued(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 5)
    link5 = _rows(rt, "cam1")[5][1]
    _delete_newest(rt, "cam1", 4)

    add_segments(rt, "cam1", T0 + 5 * STEP, 1)

    rows = _rows(rt, "cam1")
    assert sorted(rows) == [1, 2, 3, 6]
    assert rows[6][0] == link5  # continues from the issued head, not from the last remaining row
    assert _issued(rt, "cam1") == (6, rows[6][1])
    with rt.db.session() as s:
        problems = catalog.verify_chain(s, "cam1")
    # The deleted rows show as missing numbers before seq 6, never as seq 4 and 5 with other content.
    assert {(p.seq, p.kind) for p in problems} == {(6, "seq_gap"), (6, "chain_break")}
    assert "expected seq 4, found 6" in next(p.detail for p in problems if p.kind == "seq_gap")


@pytest.mark.parametrize("tamper", ["rolled_back", "deleted"])
def test_the_newest_checkpoint_is_a_floor_when_the_issued_head_was_tampered_with(runtime: Runtime, tamper: str) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 5)
    before = _rows(rt, "cam1")
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)  # signs cam1 at seq 5
    _delete_newest(rt, "cam1", 4)
    with rt.db.session() as s:  # the issued head hidden too, by hand
        if tamper == "rolled_back":
            s.execute(
                update(CameraChainHead).where(CameraChainHead.camera_id == "cam1").values(seq=3, link=before[3][1])
            )
        else:
            s.execute(delete(CameraChainHead).where(CameraChainHead.camera_id == "cam1"))

    add_segments(rt, "cam1", T0 + 5 * STEP, 1)

    rows = _rows(rt, "cam1")
    assert sorted(rows) == [1, 2, 3, 6] and rows[6][0] == before[5][1]
    assert _issued(rt, "cam1") == (6, rows[6][1])


def test_a_newer_checkpoint_replaces_the_cached_one(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)  # cam1 at 2; read and cached by the next register
    add_segments(rt, "cam1", T0 + 2 * STEP, 2)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)  # cam1 at 4
    link4 = _rows(rt, "cam1")[4][1]
    _delete_newest(rt, "cam1", 3)
    with rt.db.session() as s:
        s.execute(delete(CameraChainHead))

    row = _register(rt, "cam1", T0 + 4 * STEP)
    assert (row.seq, row.prev_link) == (5, link4)


def test_an_unreadable_checkpoint_body_does_not_stop_registering(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    cp = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        s.execute(update(Checkpoint).where(Checkpoint.id == cp.id).values(body="not json", signature="00"))
    assert _register(rt, "cam1", T0 + 2 * STEP).seq == 3
    with rt.db.session() as s:
        assert catalog.verify_chain(s, "cam1") == []


@pytest.mark.parametrize("first", [True, False], ids=["insert", "update"])
def test_a_writer_that_read_a_stale_head_gets_a_conflict(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """Between reading the head and advancing it, another writer registers and commits: the slower writer's
    conditional UPDATE (or its INSERT of the first head) finds the head moved and fails with CONFLICT."""
    rt = runtime
    add_camera(rt, "cam1")
    if not first:
        add_segments(rt, "cam1", T0, 2)
    real = catalog._heads
    raced: list[Segment] = []
    racing_now = False

    def racing(session, camera_id):  # type: ignore[no-untyped-def]
        nonlocal racing_now
        heads = real(session, camera_id)
        if not racing_now:
            racing_now = True
            raced.append(_register(rt, camera_id, T0 + 10 * STEP))  # the other writer, committed in between
        return heads

    monkeypatch.setattr(catalog, "_heads", racing)
    with pytest.raises(NvrError) as err:
        _register(rt, "cam1", T0 + 20 * STEP)
    assert err.value.kind is Kind.CONFLICT and err.value.code == "segment_chain_conflict"

    rows = _rows(rt, "cam1")
    assert sorted(rows) == ([1] if first else [1, 2, 3])
    assert _issued(rt, "cam1") == (raced[0].seq, raced[0].link)
    monkeypatch.undo()
    assert _register(rt, "cam1", T0 + 30 * STEP).seq == raced[0].seq + 1


def test_two_concurrent_writers_never_fork_a_chain(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    attempts, writers = 20, 2
    barrier = threading.Barrier(writers)
    outcomes: list[str] = []
    unexpected: list[BaseException] = []

    def writer(k: int) -> None:
        for i in range(attempts):
            try:
                barrier.wait(timeout=60)
            except threading.BrokenBarrierError:
                return
            try:
                _register(rt, "cam1", T0 + (k * 1000 + i) * STEP)
                outcomes.append("ok")
            except NvrError as exc:
                if exc.code != "segment_chain_conflict":
                    unexpected.append(exc)
                outcomes.append("conflict")
            except BaseException as exc:  # an IntegrityError here would mean the head did not serialise them
                unexpected.append(exc)
                barrier.abort()
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert unexpected == []
    assert len(outcomes) == attempts * writers
    ok = outcomes.count("ok")
    assert ok >= attempts  # a writer only loses a round to one that won it (about half the rounds race)
    with rt.db.session() as s:
        seqs = list(s.scalars(select(Segment.seq).where(Segment.camera_id == "cam1").order_by(Segment.seq)))
        assert s.scalar(select(func.count(func.distinct(Segment.prev_link))).where(Segment.camera_id == "cam1")) == ok
        assert catalog.verify_chain(s, "cam1") == []
        assert catalog.chain_head(s, "cam1")[0] == ok
    assert seqs == list(range(1, ok + 1))
    assert _issued(rt, "cam1") == (ok, _rows(rt, "cam1")[ok][1])
