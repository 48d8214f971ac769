"""The master keys of encryption at rest as an operator meets them, through the real ``nvr`` command: made by
``nvr init`` when encryption is on, listed by ``nvr keys list`` with purpose ``master``, rotated (every data key
re-wrapped, no footage rewritten, the chain untouched) and retired, and checked by ``nvr verify`` with and without
them; ``nvr volume init --encrypt`` marks one volume for good."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from sqlalchemy import select

from nvr.models import AuditEvent, Volume
from nvr.runtime import Runtime
from storage import volumes as vol
from storage.keyring import Keyring, read_sidecar
from storage.segment_io import sidecar_path
from tests.support import footage


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True, timeout=120)


def test_init_list_rotate_retire_and_verify(settings_factory, nvr_env) -> None:
    env = dict(nvr_env, NVR_ENCRYPTION_AT_REST="true")
    out = _nvr(env, "init")
    assert out.returncode == 0, out.stderr
    assert "encryption at rest: master key" in out.stdout
    rt = Runtime.open(settings_factory(encryption_at_rest=True))
    try:
        ring = Keyring(rt.settings.master_keys_dir)
        (first,) = ring.master_keys()
        with rt.db.session() as s:
            assert vol.configured_volumes(s, rt.settings.effective_volumes)[0].encrypted
        footage.add_camera(rt, "cam-a")
        footage.add_segments(rt, "cam-a", rt.clock.now_us() - 3_600_000_000, 3, first_variant=0, encrypt=True)
        files = [footage.segment_path(rt, "cam-a", seq) for seq in (1, 2, 3)]
        before = {f: f.read_bytes() for f in files}

        listed = json.loads(_nvr(env, "keys", "list", "--json").stdout)
        purposes = [(k["purpose"], k.get("active")) for k in listed["keys"]]
        assert ("signing", True) in purposes and ("master", True) in purposes
        assert any(k["purpose"] == "master" and k["key_id"] == first.key_id for k in listed["keys"])

        out = _nvr(env, "keys", "master", "rotate", "--yes", "--retire-old", "--json")
        assert out.returncode == 0, out.stderr
        rotated = json.loads(out.stdout)
        assert (rotated["rewrapped"], rotated["retired"], rotated["problems"]) == (3, [first.key_id], [])
        (second,) = ring.master_keys()
        assert second.key_id == rotated["active"] != first.key_id
        assert [k.key_id for k in ring.retired_keys()] == [first.key_id]  # moved aside, never used for new wraps
        for f in files:
            assert f.read_bytes() == before[f]  # footage untouched
            wraps = read_sidecar(sidecar_path(f))["wraps"]
            assert [w["master_key_id"] for w in wraps] == [second.key_id]  # type: ignore[index]
        with rt.db.session() as s:
            actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("keys.master%"))))
        assert actions == ["keys.master_created", "keys.master_rotated"]

        out = _nvr(env, "verify", "--json", "--no-progress")
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert (report["encrypted"], report["plaintext_checked"]) == (3, 3)

        # The master-key folder gone: the server's check names every segment it can no longer open; an auditor's
        # stored-bytes check still passes and says what it did not check.
        shutil.rmtree(rt.settings.master_keys_dir)
        out = _nvr(env, "verify", "--json", "--no-progress")
        assert out.returncode == 1
        kinds = [(p["kind"], p["seq"]) for p in json.loads(out.stdout)["problems"]]
        assert kinds == [("missing_file", 1), ("missing_file", 2), ("missing_file", 3)]
        out = _nvr(env, "verify", "--json", "--no-progress", "--without-master-key")
        assert out.returncode == 0, out.stdout
        assert json.loads(out.stdout)["plaintext_unchecked"]
    finally:
        rt.db.dispose()


def test_volume_init_encrypt_marks_the_volume_for_good(settings_factory, nvr_env, tmp_path) -> None:
    extra = tmp_path / "vol2"
    assert _nvr(nvr_env, "init").returncode == 0
    out = _nvr(nvr_env, "volume", "init", str(extra), "--encrypt")
    assert out.returncode == 0, out.stderr
    assert "(encrypted at rest)" in out.stdout and "master key" in out.stdout
    identity = json.loads((extra / vol.IDENTITY_FILE).read_text())
    assert identity["encryption"] == "on"
    rt = Runtime.open(settings_factory(volumes=[extra]))
    try:
        with rt.db.session() as s:
            row = s.scalar(select(Volume).where(Volume.path == str(extra)))
            assert row is not None and row.encryption == "on"
            row.encryption = None  # an administrator's edit does not turn it off: the identity file still says so
        with rt.db.session() as s:
            (info,) = vol.configured_volumes(s, [extra])
        assert info.encrypted
        assert rt.recorder_context().volumes[0].encrypted
    finally:
        rt.db.dispose()
