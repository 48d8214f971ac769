"""``nvr backup DEST``: a consistent online copy of the database (SQLite's backup API, or pg_dump) plus the keys
folder's public material, a manifest with each file's hash, and ``nvr verify`` working on a restored copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from integrity import audit_log, checkpoints
from nvr.cli import backup as cli_backup
from nvr.models import AuditHead, Segment
from nvr.runtime import Runtime
from tests.support.footage import CLIP_SECONDS, add_camera, add_segments

PG_URL = os.environ.get("TEST_DATABASE_URL")
T0 = 1_700_000_000_000_000
STEP = CLIP_SECONDS * 1_000_000
# Each runs in exactly one of the suite's two passes (tests/conftest.py deselects it in the other, so neither pass
# reports it as skipped): SQLite's backup API in the SQLite pass, pg_dump in the PostgreSQL pass.
sqlite_only = pytest.mark.database("sqlite")
pg_only = pytest.mark.database("postgresql")


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True, timeout=300)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Writer(threading.Thread):
    """The server at work: a segment, an audit event and now and then a signed checkpoint, over and over."""

    def __init__(self, rt: Runtime, camera_id: str, start_us: int) -> None:
        super().__init__(daemon=True)
        self.rt, self.camera_id, self.start_us = rt, camera_id, start_us
        self.stop = threading.Event()
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                add_segments(self.rt, self.camera_id, self.start_us + self.done * STEP, 1)
                with self.rt.db.session() as s:
                    audit_log.record(
                        s,
                        self.rt.clock.now_us(),
                        audit_log.SYSTEM,
                        audit_log.INTERNAL,
                        audit_log.Event("test.tick", "ok"),
                    )
                if self.done % 3 == 2:
                    checkpoints.sign_checkpoint(self.rt.db, self.rt.settings, self.rt.clock)
                self.done += 1
        except BaseException as exc:
            self.error = exc

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.done < n and self.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.error is None, self.error
        assert self.done >= n, f"writer made only {self.done} rounds"

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)
        assert self.error is None, self.error


@pytest.fixture
def live(runtime: Runtime) -> Iterator[Writer]:
    """A camera with 3 segments and a signed checkpoint, and a writer thread that keeps going."""
    add_camera(runtime, "cam1")
    add_segments(runtime, "cam1", T0, 3)
    checkpoints.sign_checkpoint(runtime.db, runtime.settings, runtime.clock)
    writer = Writer(runtime, "cam1", T0 + 3 * STEP)
    writer.start()
    writer.wait_for(2)
    yield writer
    writer.stop.set()
    writer.join(timeout=60)


def _committed(rt: Runtime) -> tuple[int, int]:
    """(newest segment seq, audit head seq) committed now."""
    with rt.db.session() as s:
        seg = s.scalar(select(func.max(Segment.seq)).where(Segment.camera_id == "cam1"))
        head = s.scalar(select(AuditHead.seq).where(AuditHead.id == 1))
    return int(seg or 0), int(head or 0)


def _check_manifest(dest: Path, with_private_key: bool = False) -> dict:
    manifest = json.loads((dest / "BACKUP.json").read_text())
    assert manifest["type"] == "nvr-backup" and manifest["complete"] is True
    listed = {f["path"] for f in manifest["files"]}
    assert listed == set(_tree(dest)) - {"BACKUP.json"}
    for f in manifest["files"]:
        assert f["sha256"] == _sha256(dest / f["path"]) and f["bytes"] == (dest / f["path"]).stat().st_size
    keys = {p for p in listed if p.startswith("keys/")}
    assert any(p.endswith(".pub.pem") for p in keys)
    assert any(p.endswith(".key") for p in keys) is with_private_key
    return manifest


def _restore_keys(dest: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    shutil.copytree(dest / "keys", data_dir / "keys")
    os.chmod(data_dir / "keys", 0o700)


def _verify(env: dict[str, str], data_dir: Path, url: str) -> dict:
    run_env = {**env, "NVR_DATA_DIR": str(data_dir), "NVR_DATABASE_URL": url}
    out = _nvr(run_env, "verify", "--json", "--no-progress")
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is (out.returncode == 0)
    return report


# --- SQLite -----------------------------------------------------------------------------------------------------
@sqlite_only
def test_sqlite_backup_of_a_live_database_is_consistent_and_verifies(
    runtime: Runtime, live: Writer, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    rt = runtime
    seg_before, audit_before = _committed(rt)
    dest = tmp_path / "backup"
    result = cli_backup.make_backup(rt.db, rt.settings, dest, now_us=rt.clock.now_us())
    live.wait_for(live.done + 2)  # the server kept writing through the backup
    live.finish()

    manifest = _check_manifest(dest)
    assert manifest["database_id"] == rt.db.database_id() == result.database_id
    assert manifest["database"]["integrity_check"] == "ok"
    assert not (dest / "nvr.db-wal").exists() and not (dest / "nvr.db-shm").exists()
    assert stat.S_IMODE((dest / "nvr.db").stat().st_mode) == 0o600
    copy = sqlite3.connect(dest / "nvr.db")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        seqs = [r[0] for r in copy.execute("SELECT seq FROM segments WHERE camera_id = 'cam1' ORDER BY seq")]
        audit = [r[0] for r in copy.execute("SELECT seq FROM audit_events ORDER BY seq")]
        newest_cp = copy.execute("SELECT id FROM checkpoints ORDER BY created_us DESC, id DESC LIMIT 1").fetchone()
    finally:
        copy.close()
    # Every row committed before the backup started is in the copy, numbered without holes (one snapshot).
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= seg_before
    assert audit == list(range(1, len(audit) + 1)) and len(audit) >= audit_before
    assert manifest["counts"]["segments"] == len(seqs) and manifest["counts"]["audit_events"] == len(audit)
    assert manifest["newest_checkpoint"]["id"] == newest_cp[0]
    assert _committed(rt)[0] > len(seqs)  # a snapshot, not a moving target

    # Restored: the copy, a data folder with the keys copied back. The volume is where it was.
    restored = tmp_path / "restored"
    _restore_keys(dest, restored)
    url = f"sqlite:///{dest / 'nvr.db'}"
    report = _verify(nvr_env, restored, url)
    assert report["rows"] == len(seqs) and report["segments"] == len(seqs)
    kinds = {p["kind"] for p in report["problems"]}
    assert kinds <= {"unknown_file"}, report["problems"]  # files recorded after the backup are not in the copy
    assert len(report["problems"]) == live.done + 3 - len(seqs)

    # The volumes gone too: every row's file is named missing, nothing crashes.
    shutil.move(str(rt.settings.data_dir / "volumes"), str(tmp_path / "volumes-elsewhere"))
    report = _verify(nvr_env, restored, url)
    missing = [p for p in report["problems"] if p["kind"] == "missing_file"]
    assert {p["kind"] for p in report["problems"]} == {"missing_file"}
    assert sorted(p["seq"] for p in missing) == seqs
    assert all("not mounted" in p["detail"] for p in missing)


@sqlite_only
def test_copying_nvr_db_without_its_wal_loses_rows_the_backup_keeps(runtime: Runtime, tmp_path: Path) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    with rt.db.engine.connect() as c:
        c.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    add_segments(rt, "cam1", T0, 3)  # committed, and only in nvr.db-wal so far
    naive = tmp_path / "naive.db"
    shutil.copyfile(str(make_url(rt.db.url).database), naive)
    cli_backup.make_backup(rt.db, rt.settings, tmp_path / "backup", now_us=rt.clock.now_us())

    def count(path: Path) -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0])
        finally:
            conn.close()

    assert count(naive) == 0
    assert count(tmp_path / "backup" / "nvr.db") == 3


# --- both databases ---------------------------------------------------------------------------------------------
def test_cli_backup_copies_public_keys_and_the_private_key_only_when_asked(
    runtime: Runtime, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    rt = runtime
    add_camera(rt, "cam1")
    add_segments(rt, "cam1", T0, 2)
    cp = checkpoints.sign_checkpoint(rt.db, rt.settings, rt.clock)
    (rt.settings.keys_dir / ".abc.key.123.tmp").write_text("half-written")

    out = _nvr(nvr_env, "backup", str(tmp_path / "public"), "--json")
    assert out.returncode == 0, out.stderr
    manifest = _check_manifest(tmp_path / "public")
    assert json.loads(out.stdout)["files"] == manifest["files"]
    assert manifest["newest_checkpoint"]["id"] == cp.id and manifest["newest_checkpoint"]["created_us"] == cp.created_us
    assert manifest["with_private_key"] is False and "private key" not in out.stderr
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert any(p.endswith(".key") and "--with-private-key" in r for p, r in skipped.items())
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "public").rglob("*"))

    out = _nvr(nvr_env, "backup", str(tmp_path / "private"), "--with-private-key")
    assert out.returncode == 0, out.stderr
    assert "warning: the backup holds the server's private signing key" in out.stderr
    manifest = _check_manifest(tmp_path / "private", with_private_key=True)
    for f in manifest["files"]:
        if f["path"].endswith(".key"):
            assert f["private"] is True
            assert stat.S_IMODE((tmp_path / "private" / f["path"]).stat().st_mode) == 0o600
    with rt.db.session() as s:
        actions = [r[0] for r in s.execute(text("SELECT action FROM audit_events ORDER BY seq"))]
    assert actions.count("backup.create") == 2


def test_a_non_empty_destination_is_refused_and_left_alone(
    runtime: Runtime, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "nvr.db").write_bytes(b"an older backup")
    (dest / "notes.txt").write_text("keep me")
    before = _tree(dest)

    out = _nvr(nvr_env, "backup", str(dest))
    assert out.returncode != 0
    assert "backup_destination_not_empty" in out.stderr and "not empty" in out.stderr
    assert "Traceback" not in out.stderr
    assert _tree(dest) == before and sorted(p.name for p in dest.iterdir()) == ["notes.txt", "nvr.db"]

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = _nvr(nvr_env, "backup", str(a_file))
    assert out.returncode != 0 and "backup_destination_invalid" in out.stderr
    assert a_file.read_text() == "x"


def test_an_empty_destination_folder_is_accepted(runtime: Runtime, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    result = cli_backup.make_backup(runtime.db, runtime.settings, dest, now_us=runtime.clock.now_us())
    assert result.complete and (dest / "BACKUP.json").is_file()


def test_pg_dump_command_uses_a_libpq_url_and_keeps_the_password_off_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "nvr.pgdump"
    argv, env = cli_backup.pg_dump_command(
        "postgresql+psycopg://nvr:s3cret@db.example:5433/archive?sslmode=require", out
    )
    assert argv == [
        "pg_dump",
        "--format=custom",
        "--file",
        str(out),
        "postgresql://nvr@db.example:5433/archive?sslmode=require",
    ]
    assert env == {"PGPASSWORD": "s3cret"} and "s3cret" not in " ".join(argv)
    argv, env = cli_backup.pg_dump_command("postgresql://postgres@127.0.0.1/test", out)
    assert argv[-1] == "postgresql://postgres@127.0.0.1/test" and env == {}


# --- PostgreSQL -------------------------------------------------------------------------------------------------
def _fresh_pg(base: str) -> tuple[str, str]:
    name = f"nvr_restore_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(base).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base).set(database=name).render_as_string(hide_password=False), name


def _drop_pg(base: str, name: str) -> None:
    admin = create_engine(make_url(base).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pg_only
def test_postgresql_backup_is_a_pg_dump_that_pg_restore_reads_and_verifies(
    runtime: Runtime, live: Writer, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    assert PG_URL is not None
    rt = runtime
    seg_before, audit_before = _committed(rt)
    dest = tmp_path / "backup"
    result = cli_backup.make_backup(rt.db, rt.settings, dest, now_us=rt.clock.now_us())
    live.finish()
    manifest = _check_manifest(dest)
    assert manifest["database"]["file"] == "nvr.pgdump" and "pg_dump" in manifest["database"]["pg_dump_version"]
    assert result.database_id == rt.db.database_id()

    listing = subprocess.run(["pg_restore", "--list", str(dest / "nvr.pgdump")], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "TABLE public segments" in listing.stdout and "TABLE public camera_chain_heads" in listing.stdout

    url, name = _fresh_pg(PG_URL)
    try:
        restore = subprocess.run(
            ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", url, str(dest / "nvr.pgdump")],
            capture_output=True,
            text=True,
        )
        assert restore.returncode == 0, restore.stderr
        engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        with engine.connect() as c:
            seqs = list(c.scalars(text("SELECT seq FROM segments WHERE camera_id = 'cam1' ORDER BY seq")))
            audit = list(c.scalars(text("SELECT seq FROM audit_events ORDER BY seq")))
        engine.dispose()
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= seg_before
        assert audit == list(range(1, len(audit) + 1)) and len(audit) >= audit_before

        restored = tmp_path / "restored"
        _restore_keys(dest, restored)
        report = _verify(nvr_env, restored, url)
        assert report["rows"] == len(seqs)
        assert {p["kind"] for p in report["problems"]} <= {"unknown_file"}, report["problems"]
    finally:
        _drop_pg(PG_URL, name)


@pg_only
def test_postgresql_without_pg_dump_prints_the_command_and_still_copies_the_keys(
    runtime: Runtime, nvr_env: dict[str, str], tmp_path: Path
) -> None:
    checkpoints.sign_checkpoint(runtime.db, runtime.settings, runtime.clock)
    dest = tmp_path / "backup"
    out = _nvr({**nvr_env, "PATH": str(tmp_path / "no-such-bin")}, "backup", str(dest))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "backup_database_not_copied" in out.stderr
    assert f"pg_dump --format=custom --file {dest / 'nvr.pgdump'} postgresql://" in out.stderr
    manifest = json.loads((dest / "BACKUP.json").read_text())
    assert manifest["complete"] is False and manifest["database"]["copied"] is False
    assert not (dest / "nvr.pgdump").exists()
    assert any(f["path"].endswith(".pub.pem") for f in manifest["files"])
    for f in manifest["files"]:
        assert f["sha256"] == _sha256(dest / f["path"])
