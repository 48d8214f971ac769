"""``nvr verify`` finds and names every kind of tampering with the archive, and nothing on an intact one.

Real database, real segment files (tests/support/footage), real signed checkpoints; each tamper case asserts the
exact kind, camera and sequence number the check names.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from sqlalchemy import delete, select, update

from integrity import audit_log, chain, checkpoints, keys
from integrity.verify_archive import Report, hash_file, verify_archive
from nvr.clock import FakeClock
from nvr.models import AuditEvent, Checkpoint, RetentionPolicy, Segment, SegmentTombstone
from nvr.runtime import Runtime
from retention.sweeper import Sweeper
from tests.support.footage import CLIP_SECONDS, add_camera, add_segments, clip, segment_path
from tests.support.tamper import distinct_segments

DAY = 86_400_000_000
T0 = 1_700_000_000_000_000
SEG = CLIP_SECONDS * 1_000_000


# --- helpers -----------------------------------------------------------------------------------------------------
def _named(report: Report) -> set[tuple[str, str | None, int | None]]:
    return {(p.kind, p.camera_id, p.seq) for p in report.problems}


def _archive(rt: Runtime) -> None:
    for cam in ("cam1", "cam2"):
        add_camera(rt, cam)
        add_segments(rt, cam, T0, 5)


def _checkpoint(rt: Runtime) -> Checkpoint:
    with rt.db.session() as s:
        keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us())
    with rt.db.session() as s:
        signer = keys.active_signer(s, rt.settings.keys_dir)
        return checkpoints.make_checkpoint(s, signer, rt.clock.now_us(), rt.db.database_id())


# --- an intact archive ---------------------------------------------------------------------------------------------
def test_an_intact_archive_has_no_problems_and_every_byte_is_rehashed(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    _checkpoint(rt)
    add_segments(rt, "cam1", T0 + 5 * SEG, 2)  # recorded after the checkpoint: still fine
    # Files of a segment being written are not unknown files.
    d = segment_path(rt, "cam1", 1).parent
    (d / "0001800000000000000.mp4.partial").write_bytes(b"being written")
    (d / "0001800000000000000.json").write_text("{}")
    report = verify_archive(rt.db, rt.settings)
    assert report.problems == []
    assert report.segments == 12 and report.rows == 12 and report.checkpoints == 1 and report.files == 12
    assert report.bytes == 12 * clip().stat().st_size
    assert hash_file(clip()).sha256 == hashlib.sha256(clip().read_bytes()).hexdigest()


def test_tombstones_of_a_real_sweep_are_not_missing_rows(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    with rt.db.session() as s:  # before the checkpoint that signs the registry (edited afterwards: registry_mismatch)
        s.execute(update(RetentionPolicy).values(min_days=30, max_days=30))
    _checkpoint(rt)
    report = Sweeper(rt.db, rt.settings, FakeClock(T0 + 40 * DAY)).run()  # type: ignore[arg-type]
    assert report.segments == 10
    add_segments(rt, "cam1", T0 + 41 * DAY, 1)  # continues from the tombstone at seq 6
    with rt.db.session() as s:
        assert s.scalar(select(SegmentTombstone.last_seq).where(SegmentTombstone.camera_id == "cam1")) == 5
    assert verify_archive(rt.db, rt.settings).problems == []


# --- the six tamper cases ------------------------------------------------------------------------------------------
def test_a_flipped_byte_is_a_hash_mismatch(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    path = segment_path(rt, "cam2", 3)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_archive(rt.db, rt.settings)
    assert _named(report) == {("hash_mismatch", "cam2", 3)}
    (p,) = report.problems
    assert p.at_us == T0 + 2 * SEG and str(path) in p.detail


def test_a_deleted_segment_file_is_a_missing_file(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    segment_path(rt, "cam1", 4).unlink()
    report = verify_archive(rt.db, rt.settings)
    assert _named(report) == {("missing_file", "cam1", 4)}
    assert report.problems[0].at_us == T0 + 3 * SEG


def test_a_deleted_segment_row_is_a_missing_row(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    path = segment_path(rt, "cam1", 3)
    with rt.db.session() as s:
        s.execute(delete(Segment).where(Segment.camera_id == "cam1", Segment.seq == 3))
    report = verify_archive(rt.db, rt.settings)
    named = _named(report)
    assert ("missing_row", "cam1", 3) in named
    assert {k for k, c, _ in named if c == "cam2"} == set()
    unknown = [p for p in report.problems if p.kind == "unknown_file"]
    assert [(p.camera_id, p.subject) for p in unknown] == [("cam1", str(path))]  # its file is now nobody's


def test_the_newest_rows_deleted_after_a_checkpoint_are_missing_rows(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    _checkpoint(rt)
    with rt.db.session() as s:
        s.execute(delete(Segment).where(Segment.camera_id == "cam2", Segment.seq >= 4))
    report = verify_archive(rt.db, rt.settings)
    assert ("missing_row", "cam2", 4) in _named(report)
    assert {p.kind for p in report.problems} == {"missing_row", "unknown_file"}


def test_a_row_whose_times_were_edited_is_a_chain_break(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    with rt.db.session() as s:
        s.execute(
            update(Segment)
            .where(Segment.camera_id == "cam1", Segment.seq == 2)
            .values(start_us=Segment.start_us - 60_000_000, end_us=Segment.end_us - 60_000_000)
        )
    report = verify_archive(rt.db, rt.settings)
    assert _named(report) == {("chain_break", "cam1", 2)}


def test_a_segment_file_swapped_for_another_valid_segment_is_a_hash_mismatch(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    distinct_segments(rt, "cam1", T0, 4)
    assert verify_archive(rt.db, rt.settings).problems == []
    a, b = segment_path(rt, "cam1", 2), segment_path(rt, "cam1", 3)
    tmp = a.with_name("swap")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    assert _named(verify_archive(rt.db, rt.settings)) == {("hash_mismatch", "cam1", 2), ("hash_mismatch", "cam1", 3)}


def test_an_edited_audit_event_is_a_chain_break_of_the_audit_log(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    with rt.db.session() as s:
        for i in range(3):
            ev = audit_log.Event("footage.play", "allowed", camera_id="cam1", reason=f"play {i}")
            seq = audit_log.record(s, rt.clock.now_us(), audit_log.SYSTEM, audit_log.INTERNAL, ev)
    with rt.db.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == seq - 1).values(reason="nothing to see"))
    report = verify_archive(rt.db, rt.settings)
    assert [(p.kind, p.subject, p.camera_id) for p in report.problems] == [
        ("chain_break", f"audit event {seq - 1}", "cam1")
    ]


# --- checkpoints -------------------------------------------------------------------------------------------------
def test_a_checkpoint_whose_signature_does_not_verify_is_a_bad_signature(runtime: Runtime) -> None:
    rt = runtime
    _archive(rt)
    cp = _checkpoint(rt)
    body = json.loads(cp.body)
    body["cameras"]["cam1"]["seq"] = 4  # pretend cam1 had less footage then
    with rt.db.session() as s:
        s.execute(update(Checkpoint).where(Checkpoint.id == cp.id).values(body=json.dumps(body, sort_keys=True)))
    report = verify_archive(rt.db, rt.settings)
    assert [(p.kind, p.subject) for p in report.problems] == [("bad_signature", f"checkpoint seq {cp.seq}")]


def test_a_checkpoint_link_that_differs_from_the_row_is_a_chain_break(runtime: Runtime) -> None:
    """Rows rewritten consistently (every link recomputed) still contradict what the checkpoint signed."""
    rt = runtime
    _archive(rt)
    _checkpoint(rt)
    with rt.db.session() as s:
        rows = list(s.scalars(select(Segment).where(Segment.camera_id == "cam2").order_by(Segment.seq)))
        prev = rows[0].prev_link
        for r in rows:
            r.prev_link = prev
            if r.seq == 2:
                r.start_us -= 1
            r.link = f"{r.seq:064x}"  # placeholders first: links are unique while the rows are rewritten
        s.flush()
        for r in rows:
            r.prev_link = prev
            r.link = chain.link(prev, {f: getattr(r, f) for f in chain.LINKED_FIELDS})
            prev = r.link
    report = verify_archive(rt.db, rt.settings)
    assert _named(report) == {("chain_break", "cam2", 5)}


# --- the command -------------------------------------------------------------------------------------------------
def test_cli_verify_exit_codes_and_json(runtime: Runtime, nvr_env: dict[str, str]) -> None:
    rt = runtime
    _archive(rt)
    nvr = [sys.executable, "-m", "nvr", "verify"]
    out = subprocess.run([*nvr, "--json"], env=nvr_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["segments"] == 10 and data["problems"] == []

    segment_path(rt, "cam2", 5).unlink()
    out = subprocess.run([*nvr, "--no-progress", "--record"], env=nvr_env, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    first = out.stdout.splitlines()[0].split()
    assert first[:3] == ["missing_file", "cam2", "2023-11-14T22:13:28.000000Z"]
    assert "findings: 1 new" in out.stdout
    with rt.db.session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "integrity.verify")).one()
        assert ev.outcome == "failed" and "missing_file=1" in (ev.reason or "")


def test_a_half_restored_database_names_what_it_cannot_prove(runtime: Runtime) -> None:
    """A database restored without some tables (or with them damaged) is reported part by part as unverifiable;
    what can still be checked is checked, and nothing crashes."""
    from sqlalchemy import text

    rt = runtime
    _archive(rt)
    _checkpoint(rt)
    with rt.db.session() as s:
        s.execute(text("DROP TABLE segment_tombstones"))
        s.execute(text("DELETE FROM audit_head"))
    report = verify_archive(rt.db, rt.settings)
    unverifiable = {p.subject for p in report.problems if p.kind == "unverifiable"}
    assert {"segment chains", "tombstones", "audit log"} <= unverifiable
    assert report.segments == 10  # the files were still re-hashed against their rows
    assert not report.ok
