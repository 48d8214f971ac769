"""Retention benchmark: sweeping one day out of a 100-camera x 31-day catalogue with real files, and a dry run over
the whole catalogue, on SQLite and on PostgreSQL.

Catalogue (built fresh for every run: the sweep consumes it):

* ``--cameras`` cameras (``bench-000`` ...) with one policy, ``min_days`` 30 and ``max_days`` 30; ``--days`` of
  touching ``--segment-seconds`` segments per camera (100 x 31 x 1440 = 4,464,000 rows), camera phases spread over
  the segment length so cameras' segments interleave in time as they would live.
* Every row has the recorder's path (``<camera>/<YYYY>/<MM>/<DD>/<HH>/<start_us>.mp4``), ``retain_until`` = end +
  30 days and a valid hash chain (links computed in worker processes with ``integrity.chain.link``, as
  ``storage.catalog.register_segment`` does; the first camera's chain is verified after the build). The rows of
  the **first day** (``--sweep-days``) get a real file each (``--file-bytes`` bytes, the size and SHA-256 in every
  row): 144,000 files in some 2,500 hour folders. The other days have rows only: the sweeper never touches them.
* Chain links and bulk load are bench/catalogue.py's, shared with bench/playback.py: SQLite ``executemany`` in one
  transaction (``journal_mode=MEMORY``, ``synchronous=OFF`` on the build connection only; WAL restored); PostgreSQL
  ``COPY`` with the segments table's secondary indexes and constraints dropped and recreated, then
  ``VACUUM ANALYZE``.

Measurement, with the clock (``FakeClock``) at the moment the first day's last segment passes 30 days, all through
``retention.sweeper.Sweeper`` with the product's settings and database pragmas:

* ``dry_run``: ``Sweeper.run(dry_run=True)`` over the whole catalogue (``--dry-runs`` times): must find exactly the
  first day (reason ``max_age``). Also ``dry_run_space``: the same catalogue with ``max_days`` removed and the
  high-water mark at 1 % (every deletable segment is then a ``space`` candidate: the window-function plan).
* ``sweep``: ``Sweeper.run()``: segments deleted per second (files unlinked, directories fsynced and removed,
  rows marked, re-checked and deleted, tombstones, one audit event per batch), with the time per step from the
  sweeper's step hook. Afterwards: rows left, files left, tombstones, audit events, chain of the first camera.

Usage (from the repository root; as root, nothing else running)::

    .venv/bin/python bench/retention_bench.py --db both
    .venv/bin/python bench/retention_bench.py --db sqlite --cameras 4 --days 3     # a quick trial
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench/catalogue.py
sys.path.insert(0, str(ROOT))  # the project first (no bench script is named like a project package: see bench/README)

from catalogue import (  # noqa: E402
    bulk_postgresql,
    bulk_sqlite,
    database_size,
    drop_catalogue,
    fresh_catalogue,
    log,
    machine,
    pg_url,
    postgres_version,
    settings_for,
    write_result,
)

from integrity import chain  # noqa: E402

US = 1_000_000
DAY_US = 86_400 * US
HOUR_US = 3_600 * US
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
GOALS = {"sweep_segments_per_second": 2_000, "dry_run_seconds": 5.0}


# --- catalogue -----------------------------------------------------------------------------------------------------
def rel_path(cam: str, start_us: int, dirs: dict[tuple[str, int], str]) -> str:
    """storage.layout.stem_for(cam, start) + '.mp4', with the hour folder computed once per hour."""
    from storage import layout

    key = (cam, start_us // HOUR_US)
    d = dirs.get(key)
    if d is None:
        d = dirs[key] = str(layout.segment_dir(cam, start_us))
    return f"{d}/{start_us:016d}.mp4"


def row_paths(cam: str, plan: dict[str, Any]) -> Iterator[str]:
    """The rel_path of each of the camera's rows, seq 1, 2, ...: one file per segment, in the recorder's layout."""
    dirs: dict[tuple[str, int], str] = {}
    start = plan["cam_start_us"][cam]
    while True:
        yield rel_path(cam, start, dirs)
        start += plan["segment_us"]


def write_files(vol_path: Path, plan: dict[str, Any], cutoff_us: int) -> int:
    """One real file per row of the day to be swept (rows ending at or before ``cutoff_us``)."""
    body = plan["file_body"]
    n = 0
    for cam in plan["cameras"]:
        dirs: dict[tuple[str, int], str] = {}
        made: set[str] = set()
        start = plan["cam_start_us"][cam]
        while start + plan["segment_us"] <= cutoff_us:
            rel = rel_path(cam, start, dirs)
            folder = rel.rsplit("/", 1)[0]
            if folder not in made:
                (vol_path / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            with open(vol_path / rel, "wb") as fh:
                fh.write(body)
            n += 1
            start += plan["segment_us"]
    return n


def build(args: argparse.Namespace, kind: str, db_dir: Path, url: str) -> dict[str, Any]:
    import hashlib

    from sqlalchemy import select, update

    from nvr import registry
    from nvr.models import Camera, RetentionPolicy, Segment, Volume
    from nvr.runtime import Runtime

    fresh_catalogue(args, kind, db_dir)
    t_total = time.perf_counter()
    rt = Runtime.open(settings_for(db_dir, url))
    rt.init_default_volume()
    now = rt.clock.now_us()
    seg_us = args.segment_seconds * US
    per_camera = args.days * DAY_US // seg_us
    end_us = now - now % seg_us
    first_us = end_us - per_camera * seg_us
    cams = [f"bench-{i:03d}" for i in range(args.cameras)]
    body = (b"nvr-bench-retention " * (args.file_bytes // 20 + 1))[: args.file_bytes]
    plan: dict[str, Any] = {
        "cameras": cams,
        "per_camera": per_camera,
        "segment_us": seg_us,
        "built_us": now,
        "cam_start_us": {c: first_us + i * (seg_us // len(cams)) for i, c in enumerate(cams)},
        "file_body": body,
    }
    # every row's file is the same body: its size and SHA-256 in every row
    digest = hashlib.sha256(body).hexdigest()
    media = {"media_duration_us": seg_us, "bytes": len(body), "frames": 1500, "sha256": digest}
    with rt.db.session() as s:
        vol = s.scalars(select(Volume)).one()
        vol_id, vol_path = vol.id, Path(vol.path)
        for c in cams:
            registry.add(
                s, c,
                registry.CameraFields(name=f"Bench {c}", stream_url=f"rtsp://127.0.0.1/{c}", managing_unit="Bench",
                                      share_class="authorized"),
                actor="bench", now_us=now,
            )  # fmt: skip
        policy = RetentionPolicy(name="bench-30", min_days=30, max_days=30, created_us=now, updated_us=now)
        s.add(policy)
        s.flush()
        s.execute(update(Camera).values(policy_id=policy.id))
    rt.db.dispose()
    log(f"{kind}: inserting {per_camera * len(cams):,} rows")
    t_rows = time.perf_counter()

    def paths(cam: str) -> Iterator[str]:
        return row_paths(cam, plan)

    if kind == "sqlite":
        extra = bulk_sqlite(db_dir / "nvr.db", plan, vol_id, media, paths)
    else:  # of the shared loader's figures, only the one this script has always reported
        loaded = bulk_postgresql(url, plan, vol_id, media, paths)
        extra = {"vacuum_analyze_seconds": loaded["vacuum_analyze_seconds"]}
    rows_s = time.perf_counter() - t_rows
    # The day to sweep: every camera's first sweep-days of segments; the clock when the last of them passes 30 days.
    cutoff_us = first_us + args.sweep_days * DAY_US + seg_us - 1
    t_files = time.perf_counter()
    files = write_files(vol_path, plan, cutoff_us)
    os.sync()
    files_s = time.perf_counter() - t_files
    log(f"{kind}: {files:,} files written in {files_s:.1f} s")
    with rt.db.session() as s:
        sample = [
            {f: getattr(o, f) for f in (*chain.LINKED_FIELDS, "prev_link", "link")}
            for o in s.scalars(select(Segment).where(Segment.camera_id == cams[0]).order_by(Segment.seq).limit(5000))
        ]
    if chain.verify_rows(cams[0], sample):
        raise SystemExit(f"the bulk-built chain of {cams[0]} does not verify")
    rt.db.dispose()
    return {
        "rows": per_camera * len(cams),
        "cameras": len(cams),
        "days": args.days,
        "segment_seconds": args.segment_seconds,
        "files": files,
        "file_bytes": len(body),
        "volume": str(vol_path),
        "first_us": first_us,
        "sweep_now_us": cutoff_us + 30 * DAY_US,
        "build": {
            "rows_seconds": round(rows_s, 1),
            "files_seconds": round(files_s, 1),
            "total_seconds": round(time.perf_counter() - t_total, 1),
            **(extra or {}),
        },
    }


# --- measurement -----------------------------------------------------------------------------------------------------
def query_plan(db: Any, now_us: int, volume_id: str) -> list[str]:
    """The database's plan for the max_age candidate query (it must range-scan retain_until, not the table)."""
    from sqlalchemy import text

    from retention.sweeper import max_age_candidates

    q = max_age_candidates([volume_id], now_us, 30, db.dialect)
    sql = str(q.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if db.dialect == "sqlite" else "EXPLAIN "
    with db.engine.connect() as conn:
        return [str(r[-1] if db.dialect == "sqlite" else r[0]) for r in conn.execute(text(prefix + sql))]


def measure(args: argparse.Namespace, kind: str, db_dir: Path, url: str, cat: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import func, select, update

    from nvr.clock import FakeClock
    from nvr.db import Database
    from nvr.models import AuditEvent, RetentionPolicy, Segment, SegmentTombstone, SweepBatch
    from retention.sweeper import Sweeper
    from storage import catalog

    settings = settings_for(db_dir, url, sweep_batch_size=args.batch_size)
    db = Database(settings.effective_database_url)
    now = cat["sweep_now_us"]
    expected = cat["cameras"] * args.sweep_days * DAY_US // (cat["segment_seconds"] * US)
    out: dict[str, Any] = {"expected_segments": expected}
    try:
        with db.session() as s:
            volume_id = s.scalar(select(Segment.volume_id).limit(1))
        out["candidate_query_plan"] = query_plan(db, now, volume_id)
        dry = []
        for i in range(args.dry_runs):
            t = time.perf_counter()
            report = Sweeper(db, settings, FakeClock(now)).run(dry_run=True)
            dry.append(round(time.perf_counter() - t, 3))
            assert report.segments == expected, (report.segments, expected)
            log(
                f"{kind}: dry run {i + 1}: {dry[-1]:.2f} s, {report.segments:,} segments, {len(report.cameras)} cameras"
            )
        out["dry_run_seconds"] = dry
        with db.session() as s:
            s.execute(update(RetentionPolicy).values(max_days=None))
        space = settings_for(db_dir, url, retention_high_water_percent=1.0, retention_low_water_percent=0.5)
        t = time.perf_counter()
        report = Sweeper(db, space, FakeClock(now)).run(dry_run=True)
        out["dry_run_space_seconds"] = round(time.perf_counter() - t, 3)
        assert report.segments == expected, (report.segments, expected)
        log(f"{kind}: dry run, space reason: {out['dry_run_space_seconds']:.2f} s, {report.segments:,} segments")
        with db.session() as s:
            s.execute(update(RetentionPolicy).values(max_days=30))

        steps: dict[str, float] = defaultdict(float)
        last = [time.perf_counter()]

        def hook(name: str) -> None:
            t = time.perf_counter()
            steps[name] += t - last[0]
            last[0] = t

        os.sync()
        t = time.perf_counter()
        last[0] = t
        report = Sweeper(db, settings, FakeClock(now), step_hook=hook).run()
        sweep_s = time.perf_counter() - t
        rate = report.segments / sweep_s
        log(f"{kind}: swept {report.segments:,} segments in {sweep_s:.1f} s: {rate:,.0f} segments/s")
        with db.session() as s:
            left = s.scalar(select(func.count()).select_from(Segment))
            tombs = s.scalar(select(func.count()).select_from(SegmentTombstone))
            batches = s.scalar(select(func.count()).select_from(SweepBatch).where(SweepBatch.state == "done"))
            events = s.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "retention.sweep")
            )
            t = time.perf_counter()
            problems = catalog.verify_chain(s, "bench-000")
            verify_s = time.perf_counter() - t
        files_left = sum(1 for _ in Path(cat["volume"]).rglob("*.mp4"))
        out.update(
            {
                "sweep": {
                    "segments": report.segments,
                    "bytes": report.bytes,
                    "seconds": round(sweep_s, 2),
                    "segments_per_second": round(rate),
                    "batches": len(report.batches),
                    "batch_size": args.batch_size,
                    "step_seconds": {k: round(v, 2) for k, v in steps.items()},
                    "step_seconds_meaning": {
                        "marked": "reading candidates (once per 50 batches) + insert batch + mark UPDATE + commit",
                        "rechecked": "re-check UPDATE + state + commit",
                        "unlinking": "unlink the first half of the batch's files (incl. the volume identity check)",
                        "unlinked": "unlink the rest, fsync the folders, remove empty ones, commit 'unlinked'",
                        "removed": "tombstones + DELETE rows + batch done + audit event + commit",
                    },
                },
                "after": {
                    "rows_left": left,
                    "rows_expected_left": cat["rows"] - expected,
                    "files_left": files_left,
                    "tombstones": tombs,
                    "done_batches": batches,
                    "audit_events": events,
                    "chain_bench_000_problems": len(problems),
                    "chain_bench_000_verify_seconds": round(verify_s, 2),
                },
            }
        )
        assert report.segments == expected and left == cat["rows"] - expected and files_left == 0 and not problems
        assert events == batches == len(report.batches)
    finally:
        db.dispose()
    out["goals"] = {
        "sweep_segments_per_second": {"goal": GOALS["sweep_segments_per_second"], "met": rate >= 2_000},
        "dry_run_seconds": {"goal": GOALS["dry_run_seconds"], "met": max(dry) < GOALS["dry_run_seconds"]},
    }
    return out


def run_one(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    db_dir = args.data_dir / kind
    url = pg_url(args.pg_admin_url, args.pg_database) if kind == "postgresql" else f"sqlite:///{db_dir / 'nvr.db'}"
    log(f"{kind}: building the catalogue in {db_dir}")
    cat = build(args, kind, db_dir, url)
    cat["database_bytes"] = database_size(args, kind, db_dir)
    size_mib = cat["database_bytes"] / 2**20
    log(f"{kind}: built {cat['rows']:,} rows in {cat['build']['total_seconds']} s; database {size_mib:,.0f} MiB")
    figures = measure(args, kind, db_dir, url, cat)
    database = (
        f"SQLite {sqlite3.sqlite_version}" if kind == "sqlite" else f"PostgreSQL {postgres_version(args.pg_admin_url)}"
    )
    return {"db": kind, "database": database, "catalogue": cat, **figures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--cameras", type=int, default=100)
    p.add_argument("--days", type=int, default=31)
    p.add_argument("--sweep-days", type=int, default=1, help="days at the old end that are past retention")
    p.add_argument("--segment-seconds", type=int, default=60)
    p.add_argument("--file-bytes", type=int, default=4096, help="size of each real file of the swept day")
    p.add_argument("--batch-size", type=int, default=1000, help="sweep_batch_size")
    p.add_argument("--dry-runs", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "nvr-bench-retention")
    p.add_argument("--keep", action="store_true", help="keep the catalogue (SQLite folder, PostgreSQL database)")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="an existing database to create the bench one from")
    p.add_argument("--pg-database", default="nvr_bench_retention")
    p.add_argument("--out", default="bench/results/retention-{db}.json", help="'{db}' becomes sqlite/postgresql")
    args = p.parse_args()
    args.data_dir = args.data_dir.expanduser().absolute()
    mach = machine()
    for kind in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        try:
            result = run_one(args, kind)
        finally:
            if not args.keep:
                drop_catalogue(args, kind, ignore_errors=True)
        result, out = write_result("retention", args.out, kind, mach, result)
        sw = result["sweep"]
        print(
            f"\n{kind}: {result['catalogue']['rows']:,} rows; dry run {result['dry_run_seconds']} s "
            f"(space reason {result['dry_run_space_seconds']} s); swept {sw['segments']:,} segments in "
            f"{sw['seconds']} s = {sw['segments_per_second']:,}/s; steps {sw['step_seconds']}; results in {out}\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
