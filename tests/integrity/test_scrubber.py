"""The background scrubber finds a corrupted segment, records it once (a finding, an audit event, the alarm's
source), resolves it when the file is good again, and keeps to its read rate.

Real database and segment files; an injected clock and an injected sleep, so the rate limit is checked on the
pauses it asks for, not on wall time.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select, update

from integrity import audit_log, findings
from integrity.scrubber import Scrubber, load_state, metric_families
from integrity.verify_archive import open_findings
from nvr.clock import FakeClock
from nvr.errors import NvrError
from nvr.models import AuditEvent, IntegrityFinding, RetentionPolicy
from nvr.runtime import Runtime
from retention.sweeper import Sweeper
from storage.alarms import storage_alarms
from tests.support.footage import add_camera, add_segments, clip, segment_path

T0 = 1_700_000_000_000_000


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _scrubber(rt: Runtime, sleeps: list[float], mb_per_second: float = 1.0) -> Scrubber:
    rt.settings.scrub_read_mb_per_second = mb_per_second
    return Scrubber(rt.db, rt.settings, FakeClock(T0), sleep=sleeps.append)


def test_a_flipped_byte_is_found_once_alarmed_and_resolved_when_fixed(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 3)
    path = segment_path(rt, "cam1", 2)
    good = path.read_bytes()
    bad = bytearray(good)
    bad[100] ^= 0xFF
    path.write_bytes(bytes(bad))
    sleeps: list[float] = []
    scrubber = _scrubber(rt, sleeps)

    counts = scrubber.run_pass()
    assert counts is not None and counts.segments == 3 and counts.mismatch == 1 and counts.new_findings == 1
    with rt.db.session() as s:
        (finding,) = open_findings(s)
        assert (finding.kind, finding.camera_id, finding.seq, finding.source) == (
            "hash_mismatch",
            "cam1",
            2,
            "scrubber",
        )
        assert finding.at_us == T0 + 2_000_000 and str(path) in finding.detail
        alarms = storage_alarms(s, rt.settings, rt.db.database_id(), T0)
        assert "integrity_mismatch" in alarms.codes and alarms.as_dict()["integrity_findings"] == {"hash_mismatch": 1}
    (event,) = _events(rt, "integrity.scrub.mismatch")
    assert (event.outcome, event.camera_id, event.actor_name) == ("failed", "cam1", "system")
    assert (event.window_start_us, event.window_end_us) == (T0 + 2_000_000, T0 + 4_000_000)
    assert str(path) in (event.reason or "")

    # Found again on the next pass: still one open finding, no second event.
    scrubber.run_pass()
    with rt.db.session() as s:
        assert len(open_findings(s)) == 1
    assert len(_events(rt, "integrity.scrub.mismatch")) == 1

    # Repaired (restored from a copy): the next pass says it is intact again, but only a person resolves the
    # finding, with a note: a tampered archive is never "repaired" silently.
    path.write_bytes(good)
    counts = scrubber.run_pass()
    assert counts is not None and counts.resolved == 1 and counts.mismatch == 0
    with rt.db.session() as s:
        (f,) = open_findings(s)
        assert f.intact_us is not None and f.resolved_us is None
        assert "integrity_mismatch" in storage_alarms(s, rt.settings, rt.db.database_id(), T0).codes
    with rt.db.session() as s, pytest.raises(NvrError) as refused:
        findings.resolve(s, f.id, "  ", actor=audit_log.SYSTEM, meta=audit_log.CLI, now_us=T0)
    assert refused.value.code == "note_required"
    person = audit_log.Actor(7, "Auditor A", "HQ", "auditor")
    with rt.db.session() as s:
        findings.resolve(s, f.id, "restored from the offsite copy", actor=person, meta=audit_log.CLI, now_us=T0)
    with rt.db.session() as s, pytest.raises(NvrError) as twice:
        findings.resolve(s, f.id, "again", actor=person, meta=audit_log.CLI, now_us=T0)
    assert twice.value.code == "finding_resolved"
    with rt.db.session() as s:
        assert open_findings(s) == []
        assert "integrity_mismatch" not in storage_alarms(s, rt.settings, rt.db.database_id(), T0).codes
        (f,) = s.scalars(select(IntegrityFinding)).all()
        assert (f.resolved_by, f.resolution_note) == ("Auditor A", "restored from the offsite copy")
    (resolved,) = _events(rt, "integrity.finding.resolve")
    assert resolved.actor_name == "Auditor A" and "restored from the offsite copy" in (resolved.reason or "")
    passes = _events(rt, "integrity.scrub.pass")
    assert len(passes) == 3 and all(e.outcome == "ok" for e in passes)
    assert "hash_mismatch=1" in (passes[0].reason or "") and "resolved=1" in (passes[2].reason or "")


def test_the_read_rate_is_kept_by_sleeping(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 4)
    sleeps: list[float] = []
    counts = _scrubber(rt, sleeps, mb_per_second=0.5).run_pass()
    assert counts is not None and counts.bytes == 4 * clip().stat().st_size
    # The clock does not move while hashing here, so every byte must be paid for by sleeping at 0.5 MB/s.
    assert sum(sleeps) == pytest.approx(counts.bytes / 0.5e6)
    assert sleeps and max(sleeps) <= (1 << 20) / 0.5e6 + 1e-9


def test_the_thread_scrubs_a_missing_file_and_the_metrics_show_it(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    segment_path(rt, "cam1", 1).unlink()
    scrubber = _scrubber(rt, [])
    scrubber.start()
    try:
        assert scrubber.wait_passes(1, timeout=30)
    finally:
        scrubber.stop()
    with rt.db.session() as s:
        assert [(f.kind, f.seq) for f in open_findings(s)] == [("missing_file", 1)]
        state = load_state(s)
        assert state["segments_total"] >= 2 and state["passes_total"] >= 1 and not state["in_pass"]
        registry = CollectorRegistry(auto_describe=False)
        families = metric_families(s)
    registry.register(type("C", (), {"collect": lambda self: iter(families)})())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'nvr_integrity_findings_open{kind="missing_file"} 1.0' in text
    assert 'nvr_integrity_findings_open{kind="hash_mismatch"} 0.0' in text
    assert "nvr_scrub_segments_total" in text and "nvr_scrub_bytes_total" in text
    assert len(_events(rt, "integrity.scrub.missing")) == 1
    # The next pass is not due until the pass interval has passed.
    assert scrubber.due_in_seconds() > 0


def test_a_finding_of_a_segment_the_sweeper_deleted_stays_open(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    segment_path(rt, "cam1", 1).unlink()
    scrubber = _scrubber(rt, [])
    scrubber.run_pass()
    with rt.db.session() as s:
        assert [(f.kind, f.seq) for f in open_findings(s)] == [("missing_file", 1)]
        s.execute(update(RetentionPolicy).values(min_days=30, max_days=30))
    assert Sweeper(rt.db, rt.settings, FakeClock(T0 + 40 * 86_400_000_000)).run().segments == 2  # type: ignore[arg-type]
    counts = scrubber.run_pass()
    assert counts is not None and counts.resolved == 0
    with rt.db.session() as s:  # what was missing, and when, is still evidence until a person resolves it
        assert [(f.kind, f.seq) for f in open_findings(s)] == [("missing_file", 1)]


def test_an_encrypted_segments_lost_wrapped_key_is_a_missing_file_finding(runtime: Runtime) -> None:
    """The sidecar is outside the hash (re-wrapping must not touch footage), so the scrubber checks it is there:
    without it the segment can never be decrypted, which is as good as a deleted file."""
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 3, encrypt=True)
    path = segment_path(rt, "cam1", 3)
    sidecar = path.with_name(path.name + ".key")
    sidecar.unlink()
    counts = _scrubber(rt, []).run_pass()
    assert counts is not None and counts.segments == 3 and counts.missing == 1 and counts.mismatch == 0
    with rt.db.session() as s:
        (finding,) = open_findings(s)
        assert (finding.kind, finding.seq, finding.source) == ("missing_file", 3, "scrubber")
        assert str(sidecar) in finding.detail and "wrapped data key" in finding.detail
