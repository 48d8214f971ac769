"""Signing keys: files only the service can read, ids and fingerprints anyone can recompute with openssl, rotation
that keeps old public keys, a clear error when the active private key is lost, and the ``nvr keys`` commands."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from integrity import audit_log, keylog, keys, signing
from nvr.errors import Kind, NvrError
from nvr.models import AuditEvent
from nvr.runtime import Runtime

T0 = 1_700_000_000_000_000


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _openssl_fingerprint(pem_path: Path) -> str:
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(pem_path), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    out = subprocess.run(["sha256sum"], input=der, capture_output=True, check=True).stdout
    return out.decode().split()[0]


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def test_first_key_files_are_private_and_fingerprint_recomputes_with_openssl(runtime: Runtime) -> None:
    kd = runtime.settings.keys_dir
    with runtime.db.session() as s:
        row = keys.ensure_key(s, kd, T0)
    assert _mode(kd) == 0o700
    assert _mode(keys.private_path(kd, row.key_id)) == 0o600
    assert _mode(keys.public_path(kd, row.key_id)) == 0o644
    assert not list(kd.glob("*.tmp")) and not list(kd.glob(".*"))

    fp = _openssl_fingerprint(keys.public_path(kd, row.key_id))
    assert row.fingerprint == fp and row.key_id == fp[:16]
    # The stored PEM is the same key as the file, and the private file signs for it.
    assert keys.public_path(kd, row.key_id).read_text() == row.public_key_pem
    with runtime.db.session() as s:
        signer = keys.active_signer(s, kd)
    assert signing.verify(row.suite, row.public_key_pem, b"x", signer.sign(b"x"))

    # Idempotent: a second call returns the same key and writes no second creation event.
    with runtime.db.session() as s:
        assert keys.ensure_key(s, kd, T0 + 1).key_id == row.key_id
    created = _events(runtime, "keys.create")
    assert len(created) == 1 and created[0].object_id == row.key_id and row.fingerprint in (created[0].reason or "")
    # The private key never reaches the audit trail.
    assert "PRIVATE" not in (created[0].reason or "")


def test_a_loose_keys_folder_is_tightened(runtime: Runtime) -> None:
    kd = runtime.settings.keys_dir
    kd.mkdir(mode=0o755, parents=True)
    kd.chmod(0o755)
    with runtime.db.session() as s:
        keys.ensure_key(s, kd, T0)
    assert _mode(kd) == 0o700


def test_rotation_keeps_old_public_keys_and_deletes_the_old_private_key(runtime: Runtime) -> None:
    kd = runtime.settings.keys_dir
    with runtime.db.session() as s:
        first = keys.ensure_key(s, kd, T0)
    actor = audit_log.Actor(7, "alice", "Unit A", "admin")
    with runtime.db.session() as s:
        retired, new = keys.rotate(s, kd, T0 + 10, actor=actor, meta=audit_log.CLI)
    with runtime.db.session() as s:
        assert keys.purge_retired(s, kd) == [first.key_id]
    assert retired.key_id == first.key_id and retired.retired_us == T0 + 10 and new.retired_us is None
    assert new.key_id != first.key_id

    with runtime.db.session() as s:
        listed = keys.public_keys(s)
        assert [k.key_id for k in listed] == [first.key_id, new.key_id]
        assert set(keys.public_key_map(s)) == {first.key_id, new.key_id}
        assert keys.active_key(s).key_id == new.key_id  # type: ignore[union-attr]
        assert keys.active_signer(s, kd).key_id == new.key_id
    assert keys.public_path(kd, first.key_id).exists() and keys.public_path(kd, new.key_id).exists()
    assert not keys.private_path(kd, first.key_id).exists()
    assert _mode(keys.private_path(kd, new.key_id)) == 0o600

    (ev,) = _events(runtime, "keys.rotate")
    assert ev.actor_name == "alice" and ev.object_id == new.key_id and first.key_id in (ev.reason or "")
    ok, problem = 0, None
    with runtime.db.session() as s:
        ok, problem = audit_log.verify(s)
    assert problem is None and ok >= 2


def test_a_lost_private_key_is_named_with_what_to_do_and_rotation_recovers(runtime: Runtime) -> None:
    kd = runtime.settings.keys_dir
    with runtime.db.session() as s:
        row = keys.ensure_key(s, kd, T0)
    keys.private_path(kd, row.key_id).unlink()
    for call in (lambda s: keys.active_signer(s, kd), lambda s: keys.ensure_key(s, kd, T0)):
        with pytest.raises(NvrError) as err, runtime.db.session() as s:
            call(s)
        assert err.value.kind is Kind.FAILED_PRECONDITION and err.value.code == "signing_key_missing"
        assert row.key_id in err.value.message and "nvr keys rotate" in err.value.message
    with runtime.db.session() as s:
        _, new = keys.rotate(s, kd, T0 + 1)
    with runtime.db.session() as s:
        assert keys.active_signer(s, kd).key_id == new.key_id


def test_a_foreign_private_key_file_is_refused(runtime: Runtime) -> None:
    kd = runtime.settings.keys_dir
    with runtime.db.session() as s:
        row = keys.ensure_key(s, kd, T0)
    other_pem, _ = signing.generate()
    keys.private_path(kd, row.key_id).write_bytes(other_pem)
    with pytest.raises(NvrError) as err, runtime.db.session() as s:
        keys.active_signer(s, kd)
    assert err.value.code == "signing_key_mismatch"


def test_no_key_yet_is_a_clear_precondition(runtime: Runtime) -> None:
    with pytest.raises(NvrError) as err, runtime.db.session() as s:
        keys.active_signer(s, runtime.settings.keys_dir)
    assert err.value.code == "signing_key_missing" and "nvr init" in err.value.message
    with pytest.raises(NvrError) as err, runtime.db.session() as s:
        keys.rotate(s, runtime.settings.keys_dir, T0)
    assert err.value.kind is Kind.FAILED_PRECONDITION


def test_sm2_suite_key_and_unknown_suite(runtime: Runtime) -> None:
    """sm2-sm3 was reserved; it now makes a real SM2 key whose signatures verify. Unknown names are refused."""
    kd = runtime.settings.keys_dir
    with runtime.db.session() as s:
        row = keys.ensure_key(s, kd, T0, suite="sm2-sm3")
    assert row.suite == "sm2-sm3"
    assert _openssl_fingerprint(keys.public_path(kd, row.key_id)) == row.fingerprint
    with runtime.db.session() as s:
        signer = keys.active_signer(s, kd)
    assert signing.verify("sm2-sm3", row.public_key_pem, b"body", signer.sign(b"body"))
    with pytest.raises(NvrError) as err, runtime.db.session() as s:
        keys.rotate(s, kd, T0 + 1, suite="sm9-sm3")
    assert err.value.code == "suite_unknown"


# --- the command -------------------------------------------------------------------------------------------------
def _nvr(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True, input=stdin)


def test_cli_list_rotate_export(nvr_env: dict[str, str], tmp_path: Path) -> None:
    out = _nvr(nvr_env, "keys", "list")  # a fresh data folder: says so instead of an empty table
    assert out.returncode == 0 and "no signing key" in out.stdout, out.stderr
    out = _nvr(nvr_env, "keys", "export-public")
    assert out.returncode != 0 and "signing_key_missing" in out.stderr
    out = _nvr(nvr_env, "init")
    assert out.returncode == 0, out.stderr
    kd = tmp_path / "data" / "keys"

    out = _nvr(nvr_env, "keys", "list", "--json")
    assert out.returncode == 0, out.stderr
    if not json.loads(out.stdout)["keys"]:  # until `nvr init` makes the key, rotate makes the first one
        assert "no signing key" in _nvr(nvr_env, "keys", "list").stdout
        out = _nvr(nvr_env, "keys", "rotate", "--yes")
        assert out.returncode == 0, out.stderr
    (first,) = json.loads(_nvr(nvr_env, "keys", "list", "--json").stdout)["keys"]
    assert first["active"] is True
    assert first["fingerprint_groups"].replace(" ", "") == first["fingerprint"]
    listing = _nvr(nvr_env, "keys", "list").stdout
    assert first["key_id"] in listing and first["fingerprint_groups"] in listing

    # Without --yes and a "no" answer nothing changes.
    out = _nvr(nvr_env, "keys", "rotate", stdin="n\n")
    assert out.returncode != 0
    assert len(json.loads(_nvr(nvr_env, "keys", "list", "--json").stdout)["keys"]) == 1

    out = _nvr(nvr_env, "keys", "rotate", "--yes")
    assert out.returncode == 0, out.stderr
    old, new = json.loads(_nvr(nvr_env, "keys", "list", "--json").stdout)["keys"]
    assert old["key_id"] == first["key_id"] and old["active"] is False and old["retired"]
    assert new["active"] is True and new["key_id"] in out.stdout and new["fingerprint"] in out.stdout

    # export-public: the active key to stdout, fingerprint on stderr, matching openssl's.
    out = _nvr(nvr_env, "keys", "export-public")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in out.stdout + out.stderr
    assert new["fingerprint"] in out.stderr
    pem = tmp_path / "active.pem"
    pem.write_text(out.stdout)
    assert _openssl_fingerprint(pem) == new["fingerprint"]

    # The retired key, by id, to a file.
    dest = tmp_path / "old.pem"
    out = _nvr(nvr_env, "keys", "export-public", old["key_id"], "--out", str(dest))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and old["fingerprint"] in out.stderr
    assert _openssl_fingerprint(dest) == old["fingerprint"]

    out = _nvr(nvr_env, "keys", "export-public", "0123456789abcdef")
    assert out.returncode != 0 and "key_unknown" in out.stderr and "BEGIN" not in out.stdout

    assert sorted(p.name for p in kd.iterdir()) == sorted(
        [f"{old['key_id']}.pub.pem", f"{new['key_id']}.pub.pem", f"{new['key_id']}.key", "keylog.jsonl", "keylog.lock"]
    )
    # The rotation is pinned in the key log, countersigned by the old key: both keys are trusted from its root.
    pinned = keylog.load(kd)
    assert pinned.problems == []
    assert [r["action"] for r in map(lambda x: json.loads(x["body"]), pinned.records)] == ["genesis", "rotate"]
    assert set(pinned.keys) == {old["key_id"], new["key_id"]}


def test_processes_starting_together_make_one_key(runtime: Runtime) -> None:
    """Several servers starting at once on a new database (each calls ensure_key) end up with one active key."""
    import threading

    kd = runtime.settings.keys_dir
    barrier = threading.Barrier(4)
    made: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait()
            with runtime.db.session() as s:
                made.append(keys.ensure_key(s, kd, T0).key_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(made)) == 1
    with runtime.db.session() as s:
        assert len(keys.public_keys(s)) == 1
    assert len(_events(runtime, "keys.create")) == 1
