"""``nvr backup DEST``: a consistent online copy of the database plus the keys folder's public material.

- **SQLite**: the copy is made with SQLite's online backup API (:meth:`sqlite3.Connection.backup`, in one step, so
  it reads one snapshot: rows committed in the WAL are included, and the server keeps writing meanwhile) into
  ``DEST/nvr.db``, switched to a self-contained file (``journal_mode=DELETE``: no ``-wal`` beside it) and checked
  with ``PRAGMA integrity_check``. Copying ``nvr.db`` with ``cp`` is not a backup: committed rows still in
  ``nvr.db-wal`` are missing from such a copy, or it is torn mid-checkpoint.
- **PostgreSQL**: ``pg_dump --format=custom --file DEST/nvr.pgdump <url>`` (one snapshot too), when ``pg_dump`` is
  on PATH; otherwise the exact command is printed for the operator to run and the keys are still copied.
- **Keys** (``<data_dir>/keys``): every file except private keys (``*.key``), transient ``*.tmp`` files and
  ``*.lock`` files; private keys only with ``--with-private-key``, mode 0600. The checkpoint witness
  (``*witness*``) is copied *before* the database, so the copy never lags behind it; everything else (public
  keys, the pinned key log) *after*, so every key the copied database refers to is in the copy. A JSON-lines
  file caught mid-append is copied up to its last complete line.
- ``DEST/BACKUP.json`` comes last (a folder without it is incomplete): every file with size and SHA-256, the
  database id, the newest checkpoint, row counts and the time. A ``backup.create`` audit event records who copied
  what, where (after the copy, so the copy itself does not contain it).

``DEST`` must not exist or be an empty folder; nothing in it is ever overwritten (files are created ``O_EXCL``).
See docs/integrity/backup.md for restoring and verifying a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select, text
from sqlalchemy.engine import URL, make_url

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime
from nvr.clock import iso
from nvr.config import Settings
from nvr.db import Database, redact_db_url
from nvr.errors import Kind, NvrError
from storage.volumes import fsync_dir

BACKUP_TYPE = "nvr-backup"
BACKUP_VERSION = 1
MANIFEST = "BACKUP.json"
SQLITE_FILE = "nvr.db"
PGDUMP_FILE = "nvr.pgdump"
KEYS = "keys"
DIR_MODE = 0o700
PRIVATE_MODE = 0o600
DB_MODE = 0o600
"""The database holds camera stream credentials and password hashes: the copy is readable by its owner only."""
COUNTED = ("cameras", "segments", "segment_tombstones", "audit_events", "checkpoints", "signing_keys")
PRIVATE_WARNING = (
    "the backup holds the server's private signing key: whoever reads it can sign checkpoints and export bundles "
    "as this server; keep it as safe as the server itself"
)


@dataclass
class Backup:
    """What :func:`make_backup` did; :meth:`manifest` is ``BACKUP.json``."""

    dest: Path
    created_us: int
    dialect: str
    source: str
    """The database URL, password hidden."""
    database: dict[str, Any] = field(default_factory=dict)
    database_id: str | None = None
    newest_checkpoint: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    with_private_key: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.database.get("copied"))

    def manifest(self) -> dict[str, Any]:
        return {
            "type": BACKUP_TYPE,
            "v": BACKUP_VERSION,
            "created_us": self.created_us,
            "created": iso(self.created_us),
            "complete": self.complete,
            "source": {"dialect": self.dialect, "database": self.source},
            "database": self.database,
            "database_id": self.database_id,
            "newest_checkpoint": self.newest_checkpoint,
            "counts": self.counts,
            "files": self.files,
            "skipped": self.skipped,
            "with_private_key": self.with_private_key,
            "warnings": self.warnings,
        }


# --- the command ------------------------------------------------------------------------------------------------
@app.command("backup")
def backup(
    dest: Annotated[Path, typer.Argument(help="A new or empty folder to write the copy into.")],
    with_private_key: Annotated[
        bool,
        typer.Option(
            "--with-private-key",
            help="Also copy the private signing key (*.key, mode 0600): the backup is then as sensitive as the server.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy the database consistently while the server runs (SQLite: the online backup API into DEST/nvr.db;
    PostgreSQL: pg_dump into DEST/nvr.pgdump) plus the keys folder's public material, and write DEST/BACKUP.json
    with each file's size and SHA-256. Restore and verify: docs/integrity/backup.md."""
    from integrity import audit_log

    rt = runtime(migrate=False)
    result = make_backup(rt.db, rt.settings, dest, now_us=rt.clock.now_us(), with_private_key=with_private_key)
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    db = result.database
    what = f"database {db['file']} sha256 {db['sha256']}" if result.complete else "database not copied"
    newest = result.newest_checkpoint
    reason = (
        f"{len(result.files)} file(s); {what}; private key {'included' if with_private_key else 'not included'}"
        + (f"; newest checkpoint {newest['id']}" if newest else "")
    )
    try:
        with rt.db.session() as s:
            audit_log.record(
                s,
                rt.clock.now_us(),
                cli_actor(),
                audit_log.CLI,
                audit_log.Event(
                    "backup.create",
                    "ok" if result.complete else "failed",
                    destination=str(result.dest),
                    reason=reason,
                    bytes=sum(int(f["bytes"]) for f in result.files),
                ),
            )
    except Exception as exc:  # the copy is made; say so rather than hide it behind a failed audit write
        typer.echo(f"warning: backup made but its audit event could not be written: {exc.__class__.__name__}", err=True)
    data = result.manifest()
    emit(data, as_json, human(result))
    if not result.complete:
        typer.echo(
            f"error: backup_database_not_copied: {db.get('reason')}; run this to finish the backup:\n"
            f"  {db.get('command')}",
            err=True,
        )
        raise typer.Exit(1)


def human(result: Backup) -> str:
    lines = [f"backup in {result.dest} ({result.dialect}, database id {result.database_id})"]
    for f in result.files:
        lines.append(f"  {f['path']:<48} {f['bytes']:>12} bytes  sha256 {f['sha256']}")
    for sk in result.skipped:
        lines.append(f"  skipped {sk['path']}: {sk['reason']}")
    cp = result.newest_checkpoint
    lines.append(
        f"newest checkpoint: {cp['id']} (seq {cp['seq']}, {cp['created']})" if cp else "no signed checkpoint yet"
    )
    if not result.complete:
        lines.append(f"database NOT copied: {result.database.get('reason')}")
    if result.database.get("integrity_check"):
        lines.append(f"integrity_check of the copy: {result.database['integrity_check']}")
    lines.append(f"manifest: {result.dest / MANIFEST}")
    return "\n".join(lines)


# --- the copy -------------------------------------------------------------------------------------------------
def make_backup(db: Database, settings: Settings, dest: Path, *, now_us: int, with_private_key: bool = False) -> Backup:
    """Copy the database and the keys folder into ``dest`` (new or empty) and write ``BACKUP.json``.

    Raises NvrError: ``backup_destination_not_empty`` (CONFLICT), ``backup_destination_invalid``,
    ``database_not_found``, ``backup_failed`` / ``backup_integrity_check_failed`` (DATA_LOSS), ``pg_dump_failed``.
    On an error everything this call wrote is removed again (and ``dest`` itself, if it made it).
    A PostgreSQL database without ``pg_dump`` on PATH is not an error here: ``database["copied"]`` is False and
    ``database["command"]`` the command to run.
    """
    dest = dest.expanduser().absolute()
    keys_dir = settings.keys_dir.absolute()
    if dest == keys_dir or keys_dir in dest.parents:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "backup_destination_invalid", f"{dest} is inside the keys folder {keys_dir}"
        )
    made_dest = _claim(dest)
    created: list[Path] = []
    dialect = make_url(db.url).get_backend_name()
    result = Backup(dest, now_us, dialect, redact_db_url(db.url), with_private_key=with_private_key)
    try:
        keys = _key_files(keys_dir, result, with_private_key)
        witnesses = [p for p in keys if "witness" in p.name]
        for p in witnesses:  # before the database: the copied database is never behind its witness
            _copy_key(p, keys_dir, dest, result, created)
        if dialect == "sqlite":
            _sqlite_copy(db, dest, result, created)
        elif dialect == "postgresql":
            _pg_copy(db, dest, result, created)
        else:
            raise NvrError(Kind.FAILED_PRECONDITION, "backup_unsupported", f"cannot back up a {dialect} database")
        for p in keys:  # after the database: every key it refers to is in the copy
            if p not in witnesses:
                _copy_key(p, keys_dir, dest, result, created)
        if with_private_key:
            result.warnings.append(PRIVATE_WARNING)
        result.files.sort(key=lambda f: str(f["path"]))
        manifest = json.dumps(result.manifest(), indent=2, sort_keys=True).encode() + b"\n"
        _write_new(dest / MANIFEST, [manifest], 0o644, created)
        for d in {dest, *(p.parent for p in created)}:
            fsync_dir(d)
    except BaseException:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.unlink()
        for d in sorted({p.parent for p in created if p.parent != dest}, key=lambda d: -len(d.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        if made_dest:
            with contextlib.suppress(OSError):
                dest.rmdir()
        raise
    return result


def _claim(dest: Path) -> bool:
    """Make ``dest`` (True) or accept it when it is an empty folder (False); refuse anything else."""
    try:
        dest.mkdir(mode=DIR_MODE, parents=True)
        return True
    except FileExistsError:
        pass
    if not dest.is_dir():
        raise NvrError(
            Kind.INVALID_ARGUMENT, "backup_destination_invalid", f"{dest} exists and is not a folder"
        ) from None
    if any(dest.iterdir()):
        raise NvrError(
            Kind.CONFLICT,
            "backup_destination_not_empty",
            f"{dest} is not empty; give a new or empty folder (nothing was written)",
        ) from None
    return False


# --- SQLite -----------------------------------------------------------------------------------------------------
def _sqlite_copy(db: Database, dest: Path, result: Backup, created: list[Path]) -> None:
    src_path = make_url(db.url).database
    if src_path in (None, "", ":memory:"):
        raise NvrError(Kind.FAILED_PRECONDITION, "backup_unsupported", "an in-memory database cannot be backed up")
    src_file = Path(src_path).absolute()
    if not src_file.is_file():
        raise NvrError(Kind.FAILED_PRECONDITION, "database_not_found", f"no database file at {src_file}")
    target = dest / SQLITE_FILE
    partial = dest / (SQLITE_FILE + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), DB_MODE)
    os.close(fd)
    created.append(partial)
    # mode=rw: never create an empty database where the real one should be.
    src = sqlite3.connect(f"{src_file.as_uri()}?mode=rw", uri=True, timeout=30)
    try:
        copy = sqlite3.connect(str(partial))
        try:
            # pages=-1: the whole database in one step, i.e. from one read snapshot (WAL readers do not block the
            # writer); a stepwise copy would restart whenever the server commits.
            src.backup(copy, pages=-1)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            check = [str(r[0]) for r in copy.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise NvrError(
                    Kind.DATA_LOSS,
                    "backup_integrity_check_failed",
                    f"the copy fails PRAGMA integrity_check: {'; '.join(check[:5])}",
                )
            _describe_sqlite(copy, result)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise NvrError(Kind.UNAVAILABLE, "backup_failed", f"cannot copy {src_file}: {exc}") from None
    finally:
        src.close()
    for leftover in (partial.with_name(partial.name + "-wal"), partial.with_name(partial.name + "-shm")):
        leftover.unlink(missing_ok=True)
    _fsync_file(partial)
    if target.exists():  # nothing is ever overwritten
        raise NvrError(Kind.CONFLICT, "backup_destination_not_empty", f"{target} appeared while copying")
    os.rename(partial, target)
    created[created.index(partial)] = target
    size, digest = _hash(target)
    result.database = {
        "copied": True,
        "file": SQLITE_FILE,
        "method": "sqlite3 online backup API (one snapshot), then journal_mode=DELETE",
        "integrity_check": "ok",
        "bytes": size,
        "sha256": digest,
    }
    result.files.append({"path": SQLITE_FILE, "bytes": size, "sha256": digest, "mode": f"{DB_MODE:04o}"})


def _describe_sqlite(conn: sqlite3.Connection, result: Backup) -> None:
    """The copy's identity, newest checkpoint and row counts, read from the copy itself."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    result.database_id = None if row is None else str(row[0])
    cp = conn.execute("SELECT id, seq, created_us FROM checkpoints ORDER BY created_us DESC, id DESC LIMIT 1")
    result.newest_checkpoint = _checkpoint(cp.fetchone())
    result.counts = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in COUNTED}  # noqa: S608


def _checkpoint(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    cid, seq, created_us = row
    return {
        "id": int(cid),
        "seq": None if seq is None else int(seq),
        "created_us": int(created_us),
        "created": iso(created_us),
    }


# --- PostgreSQL -------------------------------------------------------------------------------------------------
def pg_dump_program() -> str | None:
    return shutil.which("pg_dump")


def pg_dump_command(url: str, out: Path, program: str = "pg_dump") -> tuple[list[str], dict[str, str]]:
    """``pg_dump --format=custom --file OUT URL`` for an SQLAlchemy URL (``postgresql+psycopg://`` and the like
    become libpq's ``postgresql://``); the password goes in ``PGPASSWORD`` (returned), never on the command line."""
    parsed = make_url(url)
    password = parsed.password
    plain = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    libpq_url = plain.render_as_string(hide_password=False)
    env = {"PGPASSWORD": str(password)} if password is not None else {}
    return [program, "--format=custom", "--file", str(out), libpq_url], env


def _pg_copy(db: Database, dest: Path, result: Backup, created: list[Path]) -> None:
    from nvr.models import Checkpoint, Meta

    # Read before the dump starts: the dump's snapshot holds at least these rows and this checkpoint.
    with db.session() as s:
        result.database_id = s.scalar(select(Meta.value).where(Meta.key == "database_id"))
        row = s.execute(
            select(Checkpoint.id, Checkpoint.seq, Checkpoint.created_us)
            .order_by(Checkpoint.created_us.desc(), Checkpoint.id.desc())
            .limit(1)
        ).first()
        result.newest_checkpoint = _checkpoint(row)
        result.counts = {t: int(s.scalar(text(f"SELECT COUNT(*) FROM {t}")) or 0) for t in COUNTED}  # noqa: S608
    out = dest / PGDUMP_FILE
    program = pg_dump_program()
    argv, env = pg_dump_command(db.url, out, program or "pg_dump")
    shown = shlex.join(argv) + (" (password: set PGPASSWORD or use ~/.pgpass)" if env else "")
    if program is None:
        result.database = {
            "copied": False,
            "file": PGDUMP_FILE,
            "reason": "pg_dump is not on PATH (install the PostgreSQL client of the server's major version)",
            "command": shown,
        }
        return
    if out.exists():
        raise NvrError(Kind.CONFLICT, "backup_destination_not_empty", f"{out} exists")
    created.append(out)
    try:
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise NvrError(Kind.UNAVAILABLE, "pg_dump_failed", f"cannot run {program}: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.strip().replace(str(env.get("PGPASSWORD", "\0")), "***") or f"exit {done.returncode}"
        raise NvrError(Kind.UNAVAILABLE, "pg_dump_failed", f"pg_dump failed: {why}")
    version = subprocess.run([program, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    os.chmod(out, DB_MODE)
    _fsync_file(out)
    size, digest = _hash(out)
    result.database = {
        "copied": True,
        "file": PGDUMP_FILE,
        "method": "pg_dump --format=custom (one snapshot)",
        "pg_dump_version": version,
        "command": shown,
        "bytes": size,
        "sha256": digest,
        "counts_note": "counts were read just before the dump started; the dump holds at least these rows",
    }
    result.files.append({"path": PGDUMP_FILE, "bytes": size, "sha256": digest, "mode": f"{DB_MODE:04o}"})


# --- keys -------------------------------------------------------------------------------------------------------
def _key_files(keys_dir: Path, result: Backup, with_private_key: bool) -> list[Path]:
    """The files of the keys folder to copy, sorted; what is left out goes to ``result.skipped``."""
    if not keys_dir.is_dir():
        result.warnings.append(
            f"no keys folder at {keys_dir}: a restored copy has no pinned keys to check signatures against"
        )
        return []
    out = []
    for p in sorted(keys_dir.rglob("*")):
        rel = str(p.relative_to(keys_dir))
        if p.is_symlink() or not p.is_file():
            if p.is_symlink():
                result.skipped.append({"path": f"{KEYS}/{rel}", "reason": "symbolic link"})
            continue
        if p.name.endswith(".tmp"):
            result.skipped.append({"path": f"{KEYS}/{rel}", "reason": "transient file being written"})
        elif p.name.endswith(".lock"):
            result.skipped.append({"path": f"{KEYS}/{rel}", "reason": "lock file"})
        elif p.name.endswith(".key") and not with_private_key:
            result.skipped.append({"path": f"{KEYS}/{rel}", "reason": "private key (--with-private-key copies it)"})
        else:
            out.append(p)
    return out


def _copy_key(src: Path, keys_dir: Path, dest: Path, result: Backup, created: list[Path]) -> None:
    rel = src.relative_to(keys_dir)
    target = dest / KEYS / rel
    for d in reversed([*target.parent.relative_to(dest).parents, target.parent.relative_to(dest)]):
        folder = dest / d
        if str(d) != "." and not folder.exists():
            folder.mkdir(mode=DIR_MODE)
    private = src.name.endswith(".key")
    mode = PRIVATE_MODE if private else stat.S_IMODE(src.stat().st_mode)
    data = src.read_bytes()
    if src.suffix == ".jsonl" and data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # caught mid-append: keep the complete lines
    _write_new(target, [data], mode, created)
    entry = {
        "path": f"{KEYS}/{rel}",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "mode": f"{mode:04o}",
    }
    if private:
        entry["private"] = True
    result.files.append(entry)


# --- files ------------------------------------------------------------------------------------------------------
def _write_new(path: Path, chunks: list[bytes], mode: int, created: list[Path]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    created.append(path)
    try:
        for c in chunks:
            view = memoryview(c)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)  # whatever the umask
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash(path: Path) -> tuple[int, str]:
    from integrity.verify_archive import hash_file

    h = hash_file(path)
    return h.size, h.sha256


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
