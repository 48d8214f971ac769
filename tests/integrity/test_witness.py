"""Witness copies of the checkpoint chain: the local witness the server appends to, GET /api/v1/checkpoints and
`nvr checkpoints export` for auditors, and `nvr verify --against FILE`, which catches a rewrite even when it was
re-signed with the server's own key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import delete, func, select

from integrity import checkpoints, witness
from integrity.verify_archive import verify_archive
from nvr.models import Checkpoint, Segment
from nvr.runtime import Runtime
from tests.support.footage import add_camera, add_segments

T0 = 1_700_000_000_000_000


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True)


def test_every_committed_checkpoint_reaches_the_local_witness(runtime: Runtime) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    made = [checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock) for _ in range(3)]
    entries = witness.read(witness.local_path(rt.settings))
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert [e["hash"] for e in entries] == [checkpoints.body_hash(c.body) for c in made]
    assert entries[1]["prev_hash"] == entries[0]["hash"] and "body" not in entries[0]  # compact

    # All checkpoint rows deleted: the witness still names each one, and the next one continues the chain.
    with rt.db.session() as s:
        s.execute(delete(Checkpoint))
    report = verify_archive(rt.db, rt.settings)
    assert {(p.kind, p.subject) for p in report.problems} == {
        ("missing_checkpoint", f"checkpoint seq {n}") for n in (1, 2, 3)
    }
    nxt = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    assert nxt.seq == 4 and nxt.prev_hash == entries[-1]["hash"]


def test_an_auditors_copy_catches_a_rewrite_signed_with_the_servers_own_key(
    runtime: Runtime, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 5)
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    copy = tmp_path / "auditor-copy.jsonl"
    out = _nvr(nvr_env, "checkpoints", "export", "--out", str(copy))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in copy.read_text().splitlines()]
    assert "key_record" in lines[0] and lines[-1]["checkpoint"]["seq"] == 1 and "body" in lines[-1]["checkpoint"]

    # Root on the server: deletes the newest rows, then the checkpoints and the local witness, and re-signs.
    with rt.db.session() as s:
        s.execute(delete(Segment).where(Segment.camera_id == "cam1", Segment.seq >= 4))
        s.execute(delete(Checkpoint))
    witness.local_path(rt.settings).unlink()
    checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)) == 1
    kinds = {p.kind for p in verify_archive(rt.db, rt.settings).problems}
    assert "missing_checkpoint" not in kinds and "witness_mismatch" not in kinds  # nothing inside the server knows

    out = _nvr(nvr_env, "verify", "--json", "--no-progress", "--against", str(copy))
    assert out.returncode == 1, out.stderr
    found = {(p["kind"], p["camera_id"], p["seq"]) for p in json.loads(out.stdout)["problems"]}
    assert ("witness_mismatch", None, None) in found  # seq 1 was re-signed over other heads
    assert ("missing_row", "cam1", 4) in found  # the copy's checkpoint still names seq 5 of cam1

    out = _nvr(nvr_env, "verify", "--against", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2 and "no such file" in out.stderr
