"""Recording under the ``sm2-sm3`` suite: the recorder hashes each segment with SM3 while writing it, and the row,
its chain link and ``nvr verify`` all say and use SM3."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from integrity import chain, keys
from integrity.verify_archive import verify_archive
from storage.catalog import linked_fields
from tests.support.recording import add_camera, segments, wait_for


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_recorded_segments_are_sm3_hashed_and_verify(runtime, demo_server, supervisor_factory) -> None:
    with runtime.db.session() as s:
        keys.ensure_key(s, runtime.settings.keys_dir, runtime.clock.now_us(), suite="sm2-sm3")
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    sup = supervisor_factory()
    wait_for(lambda: len(segments(runtime, "cam1")) >= 2, 20, "two segments")
    sup.stop()
    rows = segments(runtime, "cam1")
    assert {seg.hash_alg for seg, _ in rows} == {"sm3"}
    assert rows[0][0].prev_link == chain.genesis("cam1", "sm3")
    linked = [dict(linked_fields(seg), prev_link=seg.prev_link, link=seg.link) for seg, _ in rows]
    assert chain.verify_rows("cam1", linked) == []
    for seg, path in rows:
        out = subprocess.run(["openssl", "dgst", "-sm3", "-r", str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.split()[0] == seg.sha256, f"segment {seg.seq}"
    report = verify_archive(runtime.db, runtime.settings)
    assert report.ok, "\n".join(p.line() for p in report.problems)
