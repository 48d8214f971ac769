"""Issue 11, "Evidence that survives an insider": the tamper matrix.

Every case builds the same small archive (2 cameras x 5 real segment files, a few audit events, one signed
checkpoint) and checks that it verifies clean, so a detection is never a pre-existing problem. Then it tampers the
way an insider with the database (and, where said, the data folder or the server's key) would, and asserts that the
check *names* what was done: the finding kind and the camera and seq, or the subject (``audit event N``,
``checkpoint N``).

Each case runs in two modes:

- ``stopped``: tamper, then verify;
- ``restarted``: tamper, then sign a new checkpoint exactly as a server start does
  (``integrity.checkpoints.sign_checkpoint``), then verify. A checkpoint signed over the tampered state must not
  launder it.

The cases built from the ``archive`` fixture run under both crypto suites (``ed25519-sha256`` and ``sm2-sm3``: SM3
segment digests, links, audit events and checkpoint hashes, SM2 signatures): the same matrix passes on either.

Wave 1 are the cases ``nvr verify`` already caught; wave 2 is the issue's list. Playback of a damaged segment
(issue item 11) is tested with the API in tests/api.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select, update

from integrity import audit_log, chain, checkpoints, keys
from integrity.verify_archive import Report, verify_archive
from nvr.clock import FakeClock
from nvr.errors import NvrError
from nvr.models import AuditEvent, Camera, Checkpoint, RetentionPolicy, Segment, SegmentTombstone
from nvr.runtime import Runtime
from retention import policies
from retention.sweeper import Sweeper
from tests.support import tamper
from tests.support.footage import CLIP_SECONDS, add_camera, add_segments, segment_path

if TYPE_CHECKING:
    from integrity.problems import Problem

MODES = pytest.mark.parametrize("mode", ["stopped", "restarted"])
SUITES = pytest.mark.parametrize("suite", ["ed25519-sha256", "sm2-sm3"])
"""For the cases that build their own archive (the ``archive`` fixture is parametrised the same way)."""
CAMS = ("cam1", "cam2")
SEG = CLIP_SECONDS * 1_000_000
MIN = 60_000_000
DAY = 86_400_000_000
CHECKPOINT_KINDS = {"missing_checkpoint", "checkpoint_chain_break", "witness_mismatch"}


# --- verifying: the one place to adjust when verify_archive's signature changes ------------------------------------
def _verify(rt: Runtime, against: Path | None = None) -> Report:
    copies = [] if against is None else [against]  # verify_archive takes the copies as a list (--against, repeated)
    try:
        return verify_archive(rt.db, settings=rt.settings, against=copies)  # type: ignore[call-arg]
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        return verify_archive(rt.db)  # type: ignore[call-arg]  # before it took settings


def _restart(rt: Runtime) -> Checkpoint | None:
    """What a server start does: sign a checkpoint of the archive as it is. A start that refuses to sign (and logs
    why, as the scheduler does) is a start too: the verification afterwards must still name the tampering."""
    try:
        return checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    except NvrError as exc:
        warnings.warn(f"the restart signed no checkpoint: {exc.code}: {exc.message}", stacklevel=2)
        return None


def _after(rt: Runtime, mode: str, against: Path | None = None) -> Report:
    if mode == "restarted":
        _restart(rt)
    return _verify(rt, against)


def _lines(report: Report) -> str:
    return "\n".join(p.line() for p in report.problems) or "(no problems)"


def _named(report: Report) -> set[tuple[str, str | None, int | None]]:
    return {(p.kind, p.camera_id, p.seq) for p in report.problems}


def _expect(
    report: Report, kind: str | Iterable[str], camera_id: str | None, seq: int | Iterable[int] | None
) -> Problem:
    """The first problem of ``kind`` (one of them) naming ``camera_id`` and ``seq`` (one of them); fails listing
    everything the check said otherwise."""
    kinds = {kind} if isinstance(kind, str) else set(kind)
    seqs = None if seq is None else ({seq} if isinstance(seq, int) else set(seq))
    for p in report.problems:
        if p.kind in kinds and p.camera_id == camera_id and (seqs is None or p.seq in seqs):
            return p
    want = f"{'/'.join(sorted(kinds))} for {camera_id} seq {'any' if seqs is None else sorted(seqs)}"
    pytest.fail(f"not detected: expected {want}; the check said:\n{_lines(report)}")


def _numbers(p: Problem) -> set[int]:
    """Checkpoint numbers a problem names in its subject (``checkpoint 3``, ``checkpoint seq 3``, ``checkpoint id 3``,
    ``checkpoints 3..4``) or its seq."""
    out: set[int] = set()
    pattern = r"checkpoints?\s+(?:seq\s+|id\s+)?#?(\d+)(?:\s*(?:\.\.|-)\s*#?(\d+))?"
    for m in re.finditer(pattern, p.subject):
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.update(range(lo, hi + 1))
    if p.camera_id is None and p.seq is not None:
        out.add(p.seq)
    return out


def _expect_checkpoint(report: Report, kinds: set[str], numbers: set[int]) -> Problem:
    for p in report.problems:
        if p.kind in kinds and _numbers(p) & numbers:
            return p
    pytest.fail(
        f"not detected: expected {'/'.join(sorted(kinds))} naming checkpoint(s) {sorted(numbers)}; "
        f"the check said:\n{_lines(report)}"
    )


def _audit_numbers(p: Problem) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"audit event\s+#?(\d+)", p.subject)}


def _expect_audit(report: Report, seqs: list[int]) -> Problem:
    """A chain break naming one of the audit events ``seqs`` (or a checkpoint chain break about the audit head)."""
    for p in report.problems:
        if p.kind == "chain_break" and _audit_numbers(p) & set(seqs):
            return p
        if p.kind == "checkpoint_chain_break" and ("audit" in p.subject or "audit" in p.detail):
            return p
    pytest.fail(f"not detected: expected chain_break naming audit event {seqs}; the check said:\n{_lines(report)}")


def _chain_holds(rt: Runtime, camera_id: str) -> bool:
    """The camera's chain recomputes from genesis across its tombstones (what the attacker aims for)."""
    T = SegmentTombstone
    with rt.db.session() as s:
        cols = [getattr(Segment, f) for f in (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS, "prev_link", "link")]
        rows = [dict(r) for r in s.execute(select(*cols).where(Segment.camera_id == camera_id)).mappings()]
        tombs = [
            dict(r)
            for r in s.execute(
                select(T.first_seq, T.last_seq, T.prev_link, T.last_link).where(T.camera_id == camera_id)
            ).mappings()
        ]
    return chain.verify_with_tombstones(camera_id, rows, tombs) == []


def _untouched(report: Report, camera_id: str) -> None:
    wrong = [p for p in report.problems if p.camera_id == camera_id]
    assert not wrong, f"{camera_id} was not touched, yet:\n" + "\n".join(p.line() for p in wrong)


def _said(r: subprocess.CompletedProcess[str]) -> str:
    """The last lines a command printed (an error's message is last), for a failure message."""
    lines = [x for x in (r.stdout + "\n" + r.stderr).splitlines() if x.strip()]
    return " | ".join(lines[-3:])


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# --- the archive every case starts from ---------------------------------------------------------------------------
@dataclass
class Archive:
    rt: Runtime
    base_us: int
    checkpoint: Checkpoint
    audit_seqs: list[int] = field(default_factory=list)
    """The events recorded by the test (footage.play), oldest first."""


def _build(
    rt: Runtime,
    *,
    distinct: bool = False,
    before_checkpoint: Callable[[Runtime, int], None] | None = None,
    make_camera: Callable[[Runtime, str], None] = add_camera,
    suite: str | None = None,
) -> Archive:
    """cam1 and cam2, 5 touching 2 s segments each, recorded minutes ago; three audit events; one signed checkpoint.
    ``suite``: the first signing key's suite (made first, so everything is hashed with it). Verifies clean before
    anything is touched."""
    if suite is not None:
        with rt.db.session() as s:
            keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), suite=suite)
    base = (rt.clock.now_us() - 10 * MIN) // 1_000_000 * 1_000_000
    for cam in CAMS:
        make_camera(rt, cam)
        if distinct:
            tamper.distinct_segments(rt, cam, base, 5)
        else:
            add_segments(rt, cam, base, 5)
    seqs = []
    with rt.db.session() as s:
        for i, cam in enumerate(("cam1", "cam2", "cam1")):
            ev = audit_log.Event(
                "footage.play",
                "allowed",
                camera_id=cam,
                window_start_us=base,
                window_end_us=base + 5 * SEG,
                purpose="incident review",
                reason=f"play {i}",
            )
            seqs.append(audit_log.record(s, rt.clock.now_us(), audit_log.SYSTEM, audit_log.INTERNAL, ev))
    if before_checkpoint is not None:
        before_checkpoint(rt, base)
    cp = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    report = _verify(rt)
    assert report.ok, f"the archive is not clean before tampering:\n{_lines(report)}"
    return Archive(rt, base, cp, seqs)


@pytest.fixture(params=["ed25519-sha256", "sm2-sm3"])
def archive(runtime: Runtime, request: pytest.FixtureRequest) -> Archive:
    arc = _build(runtime, suite=request.param)
    with runtime.db.session() as s:
        want = "sm3" if request.param == "sm2-sm3" else "sha256"
        assert set(s.scalars(select(Segment.hash_alg))) == {want}
    return arc


# === wave 1: detected today; must stay detected in both modes =======================================================
@MODES
def test_flipped_byte_is_a_hash_mismatch(archive: Archive, mode: str) -> None:
    rt = archive.rt
    path = segment_path(rt, "cam2", 3)
    tamper.flip_byte(path)
    report = _after(rt, mode)
    p = _expect(report, "hash_mismatch", "cam2", 3)
    assert str(path) in p.detail and p.at_us == archive.base_us + 2 * SEG
    _untouched(report, "cam1")


@MODES
def test_deleted_segment_file_is_a_missing_file(archive: Archive, mode: str) -> None:
    rt = archive.rt
    segment_path(rt, "cam1", 4).unlink()
    report = _after(rt, mode)
    _expect(report, "missing_file", "cam1", 4)
    _untouched(report, "cam2")


@MODES
def test_deleted_middle_row_is_a_missing_row(archive: Archive, mode: str) -> None:
    rt = archive.rt
    (path,) = tamper.delete_rows(rt, "cam1", [3], files=False)
    report = _after(rt, mode)
    _expect(report, "missing_row", "cam1", 3)
    unknown = {p.subject for p in report.problems if p.kind == "unknown_file" and p.camera_id == "cam1"}
    assert str(path) in unknown, _lines(report)
    _untouched(report, "cam2")


@MODES
def test_edited_row_times_are_a_chain_break(archive: Archive, mode: str) -> None:
    rt = archive.rt
    with rt.db.session() as s:
        s.execute(
            update(Segment)
            .where(Segment.camera_id == "cam1", Segment.seq == 2)
            .values(start_us=Segment.start_us - MIN, end_us=Segment.end_us - MIN)
        )
    report = _after(rt, mode)
    _expect(report, "chain_break", "cam1", 2)
    _untouched(report, "cam2")


@MODES
@SUITES
def test_file_swapped_for_another_cameras_segment_is_a_hash_mismatch(runtime: Runtime, mode: str, suite: str) -> None:
    arc = _build(
        runtime, distinct=True, suite=suite
    )  # every file differs, so the swap really changes what each row names
    rt = arc.rt
    tamper.swap_files(segment_path(rt, "cam1", 2), segment_path(rt, "cam2", 4))
    report = _after(rt, mode)
    _expect(report, "hash_mismatch", "cam1", 2)
    _expect(report, "hash_mismatch", "cam2", 4)


@MODES
def test_edited_audit_event_is_a_chain_break(archive: Archive, mode: str) -> None:
    rt = archive.rt
    target = archive.audit_seqs[1]
    with rt.db.session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == target).values(reason="nothing to see"))
    report = _after(rt, mode)
    p = _expect_audit(report, [target])
    assert p.subject == f"audit event {target}" and p.camera_id == "cam2", _lines(report)


@MODES
def test_bad_checkpoint_signature(archive: Archive, mode: str) -> None:
    rt = archive.rt
    cp = archive.checkpoint
    body = json.loads(cp.body)
    body["cameras"]["cam1"]["seq"] = 4  # pretend cam1 had less footage then
    with rt.db.session() as s:
        s.execute(update(Checkpoint).where(Checkpoint.id == cp.id).values(body=json.dumps(body, sort_keys=True)))
    report = _after(rt, mode)
    _expect_checkpoint(report, {"bad_signature"}, {cp.id})


# === wave 2: the list =======================================================================================
@MODES
def test_1_rewritten_chain_tail_contradicts_the_checkpoint(archive: Archive, mode: str) -> None:
    """The newest two rows moved in time, their links recomputed: the chain holds by itself, the signed head not."""
    rt = archive.rt
    tamper.rechain_tail(rt, "cam1", [4, 5], shift_us=1_000_000)
    assert _chain_holds(rt, "cam1")  # the attack is consistent on its own
    report = _after(rt, mode)
    _expect(report, "chain_break", "cam1", {4, 5})
    _untouched(report, "cam2")


@MODES
def test_2_deleted_newest_rows_are_missing_and_their_numbers_never_reused(archive: Archive, mode: str) -> None:
    rt = archive.rt
    paths = tamper.delete_rows(rt, "cam1", [4, 5], files=False)
    new_seq = None
    if mode == "restarted":
        _restart(rt)
        (start,) = add_segments(rt, "cam1", archive.base_us + 5 * SEG, 1)  # the recorder goes on after the restart
        with rt.db.session() as s:
            new_seq = s.scalar(select(Segment.seq).where(Segment.camera_id == "cam1", Segment.start_us == start))
    report = _verify(rt)
    _expect(report, "missing_row", "cam1", 4)
    unknown = {p.subject for p in report.problems if p.kind == "unknown_file" and p.camera_id == "cam1"}
    assert {str(p) for p in paths} <= unknown, _lines(report)
    _untouched(report, "cam2")
    if mode == "restarted":
        assert new_seq == 6, f"the segment recorded after the restart got seq {new_seq}: a deleted number was reused"


@pytest.mark.parametrize("by", ["verify_archive", "nvr_audit_verify"])
@MODES
def test_3_rechained_audit_tail(archive: Archive, mode: str, by: str, nvr_env: dict[str, str]) -> None:
    """The newest three events edited and their chain and the head row recomputed: the log holds by itself."""
    rt = archive.rt
    edited = tamper.rechain_audit_tail(rt, 3)
    with rt.db.session() as s:
        assert audit_log.verify(s)[1] is None  # the attack is consistent on its own
    if by == "verify_archive":
        _expect_audit(_after(rt, mode), edited)
    else:
        if mode == "restarted":
            _restart(rt)
        r = _nvr(nvr_env, "audit", "verify")
        assert r.returncode != 0, f"nvr audit verify exit {r.returncode}: {_said(r)}"


@pytest.mark.parametrize("by", ["verify_archive", "nvr_audit_verify"])
@MODES
def test_4_truncated_audit_tail(archive: Archive, mode: str, by: str, nvr_env: dict[str, str]) -> None:
    rt = archive.rt
    gone = tamper.truncate_audit_tail(rt, 3)
    with rt.db.session() as s:
        assert audit_log.verify(s)[1] is None
    if by == "verify_archive":
        _expect_audit(_after(rt, mode), gone)
    else:
        if mode == "restarted":
            _restart(rt)
        r = _nvr(nvr_env, "audit", "verify")
        assert r.returncode != 0, f"nvr audit verify exit {r.returncode}: {_said(r)}"


@pytest.mark.parametrize("which", ["middle", "newest", "all"])
@MODES
def test_5_deleted_checkpoints_are_missing(archive: Archive, mode: str, which: str) -> None:
    rt = archive.rt
    for _ in range(3):
        checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    ids = tamper.checkpoint_ids(rt)
    assert len(ids) == 4
    assert _verify(rt).ok
    gone = {"middle": [ids[1]], "newest": ids[2:], "all": ids}[which]
    tamper.delete_checkpoints(rt, gone)
    report = _after(rt, mode)
    _expect_checkpoint(report, {"missing_checkpoint"}, set(gone))


@MODES
def test_6_a_key_of_your_own_in_signing_keys_is_untrusted(archive: Archive, mode: str) -> None:
    rt = archive.rt
    add_segments(rt, "cam1", archive.base_us + 5 * SEG, 1)  # seq 6: only the forged checkpoint will cover it
    signer = tamper.insert_foreign_key(rt)
    forged = tamper.forge_checkpoint(rt, signer)
    report = _after(rt, mode)
    _expect_checkpoint(report, {"untrusted_key"}, {forged})
    # The keys exports are checked against must not include it...
    with rt.db.session() as s:
        trusted = keys.trusted_keys(s, rt.settings)
    assert archive.checkpoint.key_id in trusted
    assert signer.key_id not in trusted, f"the inserted key {signer.key_id} is trusted"
    # ...and the checkpoint an export job picks for seq 6 (api.export_jobs) is never the forged one.
    with rt.db.session() as s:
        picked = checkpoints.covering(s, "cam1", 6, trusted)  # type: ignore[arg-type,call-arg,unused-ignore]
        assert picked is None or picked.key_id != signer.key_id, f"an export would rest on forged checkpoint {forged}"


@MODES
def test_7_tombstone_written_by_hand_is_forged(archive: Archive, mode: str) -> None:
    """Rows minutes old (nowhere near their retention) replaced by a tombstone whose links join the chain."""
    rt = archive.rt
    tamper.forge_tombstone(rt, "cam1", 1, 2)
    assert _chain_holds(rt, "cam1")  # the chain joins across it: only what a real sweep leaves behind can tell
    report = _after(rt, mode)
    p = _expect(report, "forged_tombstone", "cam1", None)
    assert p.seq in (1, 2, None) and (p.seq is not None or "#1" in p.subject), p.line()
    _untouched(report, "cam2")


def _second_policy(rt: Runtime, base: int) -> None:
    with rt.db.session() as s:
        change = policies.Change(rt.settings, rt.clock.now_us(), audit_log.SYSTEM, audit_log.INTERNAL)
        policies.create(s, change, "short", min_days=30, max_days=30)


def _cli_camera(env: dict[str, str]) -> Callable[[Runtime, str], None]:
    """Cameras made the way an operator makes them (``nvr camera add``), so each has its audited history."""

    def make(rt: Runtime, camera_id: str) -> None:
        r = _nvr(
            env, "camera", "add", camera_id, "--name", f"Camera {camera_id}", "--url",
            f"rtsp://admin:secret@10.0.0.1/{camera_id}", "--unit", "Unit A", "--share-class", "authorized",
            "--address", "1 Exact Street", "--yes",
        )  # fmt: skip
        assert r.returncode == 0, f"nvr camera add {camera_id}: exit {r.returncode}: {_said(r)}"

    return make


@pytest.mark.parametrize("column", ["share_class", "managing_unit", "policy_id"])
@MODES
@SUITES
def test_8_edited_camera_record_is_a_registry_mismatch(
    runtime: Runtime, mode: str, column: str, nvr_env: dict[str, str], suite: str
) -> None:
    """A camera record edited by SQL, past the service functions that audit every change with its digest."""
    arc = _build(runtime, before_checkpoint=_second_policy, make_camera=_cli_camera(nvr_env), suite=suite)
    rt = arc.rt
    with rt.db.session() as s:
        short = s.scalar(select(RetentionPolicy.id).where(RetentionPolicy.name == "short"))
        value = {"share_class": "unconditional", "managing_unit": "Unit Z", "policy_id": short}[column]
        s.execute(update(Camera).where(Camera.id == "cam1").values({column: value}))
    report = _after(rt, mode)
    _expect(report, "registry_mismatch", "cam1", None)
    _untouched(report, "cam2")


def _month_policy(rt: Runtime, base: int) -> None:
    with rt.db.session() as s:
        change = policies.Change(rt.settings, rt.clock.now_us(), audit_log.SYSTEM, audit_log.INTERNAL)
        policies.create(s, change, "month", min_days=30, max_days=30)
        policies.assign(s, change, "cam1", "month")


@MODES
@SUITES
def test_9_a_clock_40_days_ahead_deletes_nothing(runtime: Runtime, mode: str, suite: str) -> None:
    arc = _build(runtime, before_checkpoint=_month_policy, suite=suite)
    rt = arc.rt
    if mode == "restarted":
        _restart(rt)
    with rt.db.session() as s:
        before = int(s.scalar(select(func.count()).select_from(Segment)) or 0)
    ahead = FakeClock(rt.clock.now_us() + 40 * DAY)
    swept = Sweeper(rt.db, rt.settings, ahead).run()  # type: ignore[arg-type]
    with rt.db.session() as s:
        after = int(s.scalar(select(func.count()).select_from(Segment)) or 0)
        tombs = int(s.scalar(select(func.count()).select_from(SegmentTombstone)) or 0)
        flagged = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "clock.untrusted"))
    assert swept.segments == 0 and after == before == 10 and tombs == 0, (
        f"a clock 40 days ahead of the newest checkpoint made the sweeper delete {swept.segments} segment(s)"
    )
    in_report = getattr(swept, "clock_untrusted", False) or any("clock_untrusted" in e for e in swept.errors)
    assert flagged or in_report, "no clock.untrusted audit event and no flag in the sweep report"
    deletions = {"missing_row", "missing_file", "forged_tombstone", "chain_break", "unknown_file"}
    report = _verify(rt)
    assert not [p for p in report.problems if p.kind in deletions], _lines(report)


@MODES
def test_10_history_rewritten_with_the_real_key_contradicts_a_witness_copy(
    archive: Archive, mode: str, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    """An attacker holding the server's key file (and its keys folder) deletes cam1's newest footage, deletes the
    checkpoints that recorded it, rolls the keys folder back, and signs a fresh checkpoint with the real key. Only a
    copy of the checkpoint chain kept elsewhere can tell."""
    rt = archive.rt
    folder = tmp_path / "keys-backup"
    tamper.snapshot_dir(rt.settings.keys_dir, folder)  # the keys folder as it was after checkpoint 1
    add_segments(rt, "cam1", archive.base_us + 5 * SEG, 2)  # seq 6, 7
    later = [checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock).id for _ in range(2)]
    assert _verify(rt).ok

    witness = tmp_path / "witness" / "checkpoints.jsonl"
    witness.parent.mkdir()
    r = _nvr(nvr_env, "checkpoints", "export")
    if r.returncode == 0 and r.stdout.strip():
        witness.write_text(r.stdout)
    else:
        r2 = _nvr(nvr_env, "checkpoints", "export", "--out", str(witness))
        assert r2.returncode == 0 and witness.is_file(), (
            f"nvr checkpoints export failed (exit {r.returncode}, with --out {r2.returncode}): {_said(r)}"
        )
    lines = [json.loads(x) for x in witness.read_text().splitlines() if x.strip()]
    assert len(lines) >= 3

    # The rewrite.
    tamper.delete_rows(rt, "cam1", [6, 7], files=True)
    tamper.set_issued_head(rt, "cam1", 5)
    tamper.delete_checkpoints(rt, later)
    tamper.roll_back_dir(rt.settings.keys_dir, folder)
    fresh = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)

    report = _after(rt, mode, against=witness)
    numbers = {*later, fresh.id}
    for p in report.problems:
        if p.kind in CHECKPOINT_KINDS and (_numbers(p) & numbers or p.camera_id == "cam1"):
            break
    else:
        pytest.fail(f"not detected against the witness copy {witness}; the check said:\n{_lines(report)}")

    if mode == "stopped":
        r = _nvr(nvr_env, "verify", "--no-progress", "--against", str(witness))
        assert r.returncode == 1, f"nvr verify --against exit {r.returncode}: {_said(r)}"
        assert any(k in r.stdout for k in CHECKPOINT_KINDS), r.stdout
