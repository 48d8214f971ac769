"""An archive made with the ``sm2-sm3`` suite: segment digests, chain links, audit events and checkpoints use SM3,
each record says so, and the whole archive verifies; a suite switch mid-archive keeps one chain that verifies."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from sqlalchemy import select

from integrity import audit_log, chain, checkpoints, keys
from integrity.verify_archive import verify_archive
from nvr.models import AuditEvent, Checkpoint, Segment
from nvr.runtime import Runtime
from tests.support.footage import add_camera, add_segments, segment_path

MIN = 60_000_000


def _openssl_sm3(path: str) -> str:
    out = subprocess.run(["openssl", "dgst", "-sm3", "-r", path], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def _lines(rt: Runtime) -> str:
    report = verify_archive(rt.db, rt.settings)
    return "\n".join(p.line() for p in report.problems) or ""


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_an_sm2_sm3_archive_hashes_with_sm3_and_verifies(runtime: Runtime, nvr_env: dict[str, str]) -> None:
    rt = runtime
    with rt.db.session() as s:
        key = keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), suite="sm2-sm3")
        assert key.suite == "sm2-sm3"
    add_camera(rt, "cam1")
    base = (rt.clock.now_us() - 10 * MIN) // 1_000_000 * 1_000_000
    add_segments(rt, "cam1", base, 3)
    cp = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        rows = list(s.scalars(select(Segment).order_by(Segment.seq)))
        assert [r.hash_alg for r in rows] == ["sm3"] * 3
        assert rows[0].prev_link == chain.genesis("cam1", "sm3")
        for r in rows:
            assert _openssl_sm3(str(segment_path(rt, "cam1", r.seq))) == r.sha256
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        assert events and all(e.hash_alg == "sm3" for e in events), [(e.seq, e.hash_alg) for e in events]
        assert events[0].prev_hash == audit_log.audit_chain.genesis("sm3")
        assert audit_log.verify(s)[1] is None
        row = s.get(Checkpoint, cp.id)
        assert row is not None and row.suite == "sm2-sm3"
        assert row.hash == checkpoints.body_hash(row.body, "sm3") != checkpoints.body_hash(row.body)
        assert checkpoints.verify_checkpoint(row, keys.trusted_keys(s, rt.settings)) is None
    report = verify_archive(rt.db, rt.settings)
    assert report.ok and report.segments == 3, _lines(rt)

    r = subprocess.run(
        [sys.executable, "-m", "nvr", "verify", "--no-progress"],
        env=nvr_env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    # A flipped byte is named with the algorithm that found it.
    path = segment_path(rt, "cam1", 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    report = verify_archive(rt.db, rt.settings)
    (p,) = [p for p in report.problems if p.kind == "hash_mismatch"]
    assert p.seq == 2 and "sm3 " in p.detail, p.line()


def test_a_suite_switch_keeps_one_chain_that_verifies(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    base = (rt.clock.now_us() - 20 * MIN) // 1_000_000 * 1_000_000
    add_segments(rt, "cam1", base, 2)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        keys.rotate(s, rt.settings.keys_dir, rt.clock.now_us(), suite="sm2-sm3")
    with rt.db.session() as s:
        keys.purge_retired(s, rt.settings.keys_dir)
    add_segments(rt, "cam1", base + 4_000_000, 2)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        algs = [a for (a,) in s.execute(select(Segment.hash_alg).order_by(Segment.seq))]
        assert algs == ["sha256", "sha256", "sm3", "sm3"]
        ev_algs = [a for (a,) in s.execute(select(AuditEvent.hash_alg).order_by(AuditEvent.seq))]
        assert ev_algs[0] is None and ev_algs[-1] == "sm3", ev_algs
        suites_ = [c for (c,) in s.execute(select(Checkpoint.suite).order_by(Checkpoint.seq))]
        assert suites_ == ["ed25519-sha256", "sm2-sm3"]
    report = verify_archive(rt.db, rt.settings)
    assert report.ok and report.rows == 4 and report.checkpoints == 2, _lines(rt)
