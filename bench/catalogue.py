"""The synthetic segment catalogue that bench/playback.py and bench/retention_bench.py build, and the helpers both use
around it (not a benchmark of its own; imported by those two scripts).

A catalogue is described by a ``plan`` and a ``media`` mapping:

* ``plan``: ``cameras`` (ids), ``per_camera`` (rows per camera), ``segment_us`` (from one row's start to the next),
  ``cam_start_us`` (each camera's first start), ``built_us`` (``created_us`` of every row).
* ``media``: what every row says of its file: ``media_duration_us`` (a row ends that long after its start),
  ``bytes``, ``frames`` and ``sha256``.

Every row gets ``seq`` 1..n, ``codecs`` h264, ``retain_until`` = end + 30 days and a valid hash chain per camera:
the links are computed in worker processes (a ``fork`` pool of at most 2) with ``integrity.chain.link``, as
``storage.catalog.register_segment`` does. Its ``rel_path`` comes from the caller (``paths``: for a camera, the
paths of its rows in ``seq`` order).

Bulk load, schema already made (``nvr.runtime.Runtime``), the runtime's connections disposed of:

* ``bulk_sqlite``: ``executemany`` in one transaction with ``journal_mode=MEMORY`` / ``synchronous=OFF`` / a 1 GiB
  page cache on the build connection only (WAL is restored afterwards; the product uses its own pragmas).
* ``bulk_postgresql``: ``COPY`` with the segments table's secondary indexes and constraints dropped and recreated
  from their own definitions afterwards, then ``VACUUM ANALYZE`` (what autovacuum would reach on its own).

Also the scripts' common driver steps: ``fresh_catalogue``, ``drop_catalogue`` and ``write_result`` (the JSON
results file).

The scripts put the repository root on ``sys.path`` before they import this module (it does so too when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from integrity import chain  # noqa: E402

DAY_US = 86_400 * 1_000_000
COLUMNS = (
    "camera_id",
    "seq",
    "volume_id",
    "rel_path",
    "start_us",
    "end_us",
    "media_duration_us",
    "bytes",
    "frames",
    "codecs",
    "clock_offset_us",
    "sha256",
    "prev_link",
    "link",
    "recovered",
    "created_us",
    "retain_until_us",
)
Paths = Callable[[str], Iterable[str]]  # camera -> the rel_path of each of its rows, seq 1, 2, ...


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- catalogue -----------------------------------------------------------------------------------------------------
def chain_links(job: tuple[str, int, int, int, Mapping[str, Any]]) -> tuple[str, list[str]]:
    """(camera, links of seq 1..n): what register_segment would compute, row after row (runs in a worker)."""
    cam, t0, n, seg_us, media = job
    dur = media["media_duration_us"]
    prev = chain.genesis(cam)
    links = []
    row: dict[str, object] = {
        "camera_id": cam,
        "media_duration_us": dur,
        "bytes": media["bytes"],
        "frames": media["frames"],
        "codecs": "h264",
        "clock_offset_us": 0,
        "sha256": media["sha256"],
    }
    for seq in range(1, n + 1):
        start = t0 + (seq - 1) * seg_us
        row["seq"], row["start_us"], row["end_us"] = seq, start, start + dur
        prev = chain.link(prev, row)
        links.append(prev)
    return cam, links


def camera_rows(
    cam: str, links: list[str], plan: Mapping[str, Any], vol_id: str, media: Mapping[str, Any], paths: Iterable[str]
) -> Iterator[tuple]:
    """The rows of one camera, in ``COLUMNS`` order."""
    t0, seg_us, created = plan["cam_start_us"][cam], plan["segment_us"], plan["built_us"]
    dur, size, frames, digest = media["media_duration_us"], media["bytes"], media["frames"], media["sha256"]
    prev = chain.genesis(cam)
    rels = iter(paths)
    for i, link in enumerate(links):
        start = t0 + i * seg_us
        yield (
            cam, i + 1, vol_id, next(rels), start, start + dur, dur, size, frames, "h264", 0,
            digest, prev, link, False, created, start + dur + 30 * DAY_US,
        )  # fmt: skip
        prev = link


def link_jobs(plan: Mapping[str, Any], media: Mapping[str, Any]) -> Iterator[tuple[str, list[str]]]:
    jobs = [(c, plan["cam_start_us"][c], plan["per_camera"], plan["segment_us"], media) for c in plan["cameras"]]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, min(2, os.cpu_count() or 1))) as pool:
        yield from pool.imap(chain_links, jobs)


def bulk_sqlite(db_path: Path, plan: Mapping[str, Any], vol_id: str, media: Mapping[str, Any], paths: Paths) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1048576")
        conn.execute("BEGIN")
        sql = f"INSERT INTO segments ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
        for done, (cam, links) in enumerate(link_jobs(plan, media), start=1):
            conn.executemany(sql, camera_rows(cam, links, plan, vol_id, media, paths(cam)))
            if done % 10 == 0 or done == len(plan["cameras"]):
                log(f"  sqlite: {done}/{len(plan['cameras'])} cameras inserted")
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # the product's mode; synchronous is per connection
    finally:
        conn.close()


def _pg_text(value: object) -> str:
    if value is False:
        return "f"
    if value is True:
        return "t"
    return str(value)


def bulk_postgresql(
    url: str, plan: Mapping[str, Any], vol_id: str, media: Mapping[str, Any], paths: Paths
) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url, autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET maintenance_work_mem = '512MB'")
        # Secondary indexes and constraints are dropped for the load and recreated from their own definitions.
        cur.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'segments'::regclass AND contype <> 'p' ORDER BY contype DESC, conname"
        )
        constraints = cur.fetchall()
        cur.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = 'segments'::regclass AND NOT x.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
        )
        indexes = cur.fetchall()
        for name, _ in constraints:
            cur.execute(f'ALTER TABLE segments DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        with cur.copy(f"COPY segments ({','.join(COLUMNS)}) FROM STDIN") as copy:
            for done, (cam, links) in enumerate(link_jobs(plan, media), start=1):
                rows = camera_rows(cam, links, plan, vol_id, media, paths(cam))
                copy.write("".join("\t".join(map(_pg_text, row)) + "\n" for row in rows).encode())
                if done % 10 == 0 or done == len(plan["cameras"]):
                    log(f"  postgresql: {done}/{len(plan['cameras'])} cameras copied")
        t = time.perf_counter()
        for _, definition in indexes:
            cur.execute(definition)
        for name, definition in constraints:
            cur.execute(f'ALTER TABLE segments ADD CONSTRAINT "{name}" {definition}')
        conn.commit()
        reindex_s = time.perf_counter() - t
    with psycopg.connect(url, autocommit=True) as conn:
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        vacuum_s = time.perf_counter() - t
    return {
        "recreated_constraints": [n for n, _ in constraints],
        "recreated_indexes": [n for n, _ in indexes],
        "index_and_constraint_seconds": round(reindex_s, 1),
        "vacuum_analyze_seconds": round(vacuum_s, 1),
    }


# --- databases and the machine -------------------------------------------------------------------------------------
def settings_for(db_dir: Path, url: str | None, **kw: Any) -> Any:
    from nvr.config import Settings

    return Settings(data_dir=db_dir, database_url=url, log_level="WARNING", **kw)


def pg_url(admin_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def pg_admin(admin_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def postgres_version(admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def database_size(args: argparse.Namespace, kind: str, db_dir: Path) -> int:
    """Bytes of the catalogue: the SQLite files, or the PostgreSQL database ``--pg-database``."""
    if kind == "sqlite":
        return sum(p.stat().st_size for p in db_dir.glob("nvr.db*"))
    import psycopg

    with psycopg.connect(pg_url(args.pg_admin_url, args.pg_database)) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        total_kib = int(fh.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(total_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": os.getloadavg(),
    }


# --- driver --------------------------------------------------------------------------------------------------------
def fresh_catalogue(args: argparse.Namespace, kind: str, db_dir: Path) -> None:
    """An empty ``db_dir`` and, for PostgreSQL, the database ``--pg-database`` dropped and created empty."""
    shutil.rmtree(db_dir, ignore_errors=True)
    db_dir.mkdir(parents=True)
    if kind == "postgresql":
        pg_admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
        pg_admin(args.pg_admin_url, f'CREATE DATABASE "{args.pg_database}"')


def drop_catalogue(args: argparse.Namespace, kind: str, *, ignore_errors: bool = False) -> None:
    """Remove ``--data-dir``/kind and, for PostgreSQL, the database ``--pg-database`` (errors of the DROP raised
    unless ``ignore_errors``)."""
    shutil.rmtree(args.data_dir / kind, ignore_errors=True)
    if kind == "postgresql":
        with contextlib.suppress(Exception) if ignore_errors else contextlib.nullcontext():
            pg_admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')


def write_result(
    benchmark: str, out_pattern: str, kind: str, mach: dict[str, Any], result: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """The results file of one database: ``out_pattern`` with ``{db}`` = kind; returns (what it holds, its path)."""
    result = {
        "benchmark": benchmark,
        "command": " ".join([".venv/bin/python", f"bench/{benchmark}.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": mach,
        **result,
    }
    out = Path(out_pattern.format(db=kind))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result, out
