"""Verify benchmark: a full verify of 4.3 million rows and 1,000 signed checkpoints (seconds), on SQLite and on
PostgreSQL.

Catalogue (built fresh for every run, dropped afterwards unless ``--keep``):

* ``--cameras`` cameras (``bench-000`` ...) registered with ``nvr.registry.add`` (a registry record
  whose digest every checkpoint signs; the audit log holds one event, ``keys.create``), ``--rows-per-camera``
  touching ``--segment-seconds`` segments each, ending at build time:
  100 x 43,200 (30 days of 60 s) = 4,320,000 rows by default, bench/playback.py's plan. Camera phases are spread
  over the segment length. Every row has ``seq`` 1..n and a valid hash chain; links computed in worker processes
  with ``integrity.chain.link`` and bulk-loaded by bench/catalogue.py (SQLite ``executemany`` in one transaction;
  PostgreSQL ``COPY`` with secondary indexes and constraints recreated, then ``VACUUM ANALYZE``). The rows name
  files that do not exist (``<camera>/bench/<seq>.mp4``): file re-hashing is not part of this benchmark (see
  bench/export.py and bench/hashing.py for that). ``camera_chain_heads`` gets each camera's last row, as
  ``storage.catalog.register_segment`` leaves it.

Checkpoints (``--checkpoints`` of them, 1,000 by default), written the way ``integrity.checkpoints.make_checkpoint``
writes one but with heads that advance through the catalogue (``make_checkpoint`` always signs the *current*
heads, so it cannot write the history of a camera that has recorded for 30 days):

1. ``integrity.keys.ensure_key`` creates the signing key (``keys.create`` audit event) and starts the pinned key
   log in ``<data_dir>/keys``; ``keys.active_signer`` loads it.
2. The real link of every named head is read from the rows: checkpoint k (1..N) names, for every camera, seq
   ``q_k = max(1, round(k / N * rows_per_camera))`` (checkpoint N names the last row) with that row's ``link``.
3. Each body has ``make_body``'s structure and is encoded with ``integrity.chain.canonical_json``: ``type``
   ``nvr-checkpoint``, ``v`` 2, ``seq`` k, ``prev_hash`` (``checkpoints.body_hash`` of checkpoint k-1's body; None
   for the first), ``created_us``, ``database_id`` (``Database.database_id()``), ``cameras`` ``{id: {seq, link}}``,
   ``audit`` ``{seq, hash}`` of the ``audit_head`` row, ``registry`` = ``integrity.records.registry_digests``.
   ``created_us`` is the clock after the key was made plus (k - 1) ms: increasing, and after every audit event
   the audit head covers (``checkpoint_verify`` reports events dated after the checkpoint that covers them).
4. It is signed with the active signer and stored as a ``Checkpoint`` row (``key_id``, ``suite``, ``body``, hex
   ``signature``, ``seq``, ``prev_hash``, ``hash``) exactly as ``make_checkpoint`` stores it; all rows are
   committed in one transaction, then ``integrity.witness.catch_up`` appends them to the local witness (what
   ``sign_checkpoint`` and the scheduler do after each commit), so the verify compares against it too.

Measurement (``--reps`` times, all in this process, with the product's settings and database pragmas):
``integrity.verify_archive.verify_archive`` itself, with only its file re-hashing step (``_rehash``) replaced by a
no-op (the rows have no files), and timers wrapped around its two big steps:

* ``chain``: ``verify_archive._camera_chain`` for every camera (recompute every row's link, keyset batches);
* ``checkpoints``: ``integrity.checkpoint_verify.check(db, settings, heads)`` over every checkpoint (signatures by
  the pinned key, the checkpoint chain, the witness, every named head looked up in the rows, audit heads,
  registry changes); asserted to report no problem and to have seen every checkpoint;
* ``total``: the whole ``verify_archive`` call (also the volume walk, the registry, tombstone and audit-log
  checks); its report must be clean (``ok``) and count every row and checkpoint.

Usage (from the repository root)::

    .venv/bin/python bench/verify.py --db both            # build, measure, drop (SQLite, then PostgreSQL)
    .venv/bin/python bench/verify.py --db sqlite --keep   # keep the catalogue in --data-dir
    .venv/bin/python bench/verify.py --quick              # 2 cameras x 2,000 rows, 20 checkpoints: a few seconds

``--quick`` (SQLite unless ``--db`` says otherwise) also checks that the benchmark is not vacuous: after the clean
run it alters the link of one row a checkpoint names and expects ``checkpoint_verify.check`` to report it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project, ahead of bench/ (this script's folder, where catalogue.py is)

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

US = 1_000_000
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
QUICK = {"cameras": 2, "rows_per_camera": 2_000, "checkpoints": 20}
IN_CHUNK = 500


# --- catalogue -----------------------------------------------------------------------------------------------------
def head_seqs(n_checkpoints: int, per_camera: int) -> list[int]:
    """The seq every camera's head is at in checkpoint k = 1..N: advancing evenly, the last one at the last row."""
    return [max(1, round(k * per_camera / n_checkpoints)) for k in range(1, n_checkpoints + 1)]


def build(args: argparse.Namespace, kind: str, db_dir: Path, url: str) -> dict[str, Any]:
    from sqlalchemy import insert, select

    from nvr import registry
    from nvr.models import CameraChainHead, Segment, Volume
    from nvr.runtime import Runtime

    fresh_catalogue(args, kind, db_dir)
    t_total = time.perf_counter()
    rt = Runtime.open(settings_for(db_dir, url))
    rt.init_default_volume()
    now = rt.clock.now_us()
    seg_us = args.segment_seconds * US
    per_camera = args.rows_per_camera
    end_us = now - now % seg_us
    first_us = end_us - per_camera * seg_us
    cams = [f"bench-{i:03d}" for i in range(args.cameras)]
    plan: dict[str, Any] = {
        "cameras": cams,
        "per_camera": per_camera,
        "segment_us": seg_us,
        "built_us": now,
        "cam_start_us": {c: first_us + i * (seg_us // len(cams)) for i, c in enumerate(cams)},
    }
    # What a 60 s segment at 500 kbit/s would say of its file; no file exists (nothing here re-hashes files).
    media = {
        "media_duration_us": seg_us,
        "bytes": 3_750_000,
        "frames": 25 * args.segment_seconds,
        "sha256": hashlib.sha256(b"nvr bench/verify: no such file").hexdigest(),
    }
    with rt.db.session() as s:
        vol_id = s.scalars(select(Volume.id)).one()
        for c in cams:
            registry.add(
                s, c,
                registry.CameraFields(name=f"Bench camera {c}", stream_url=f"rtsp://127.0.0.1:8554/{c}",
                                      managing_unit="Bench", share_class="authorized"),
                actor="bench", now_us=now,
            )  # fmt: skip
    rt.db.dispose()
    log(f"{kind}: inserting {per_camera * len(cams):,} rows ({len(cams)} cameras x {per_camera:,})")
    t_rows = time.perf_counter()

    def paths(cam: str) -> Iterator[str]:
        return (f"{cam}/bench/{seq:07d}.mp4" for seq in range(1, per_camera + 1))

    extra: dict[str, Any] = {}
    if kind == "sqlite":
        bulk_sqlite(db_dir / "nvr.db", plan, vol_id, media, paths)
    else:
        extra = bulk_postgresql(url, plan, vol_id, media, paths)
    rows_s = time.perf_counter() - t_rows
    with rt.db.session() as s:  # what register_segment keeps beside the rows: each camera's newest issued head
        last = s.execute(select(Segment.camera_id, Segment.link).where(Segment.seq == per_camera)).all()
        s.execute(insert(CameraChainHead), [{"camera_id": c, "seq": per_camera, "link": k} for c, k in last])
    rt.db.dispose()
    log(f"{kind}: {per_camera * len(cams):,} rows in {rows_s:.1f} s; writing {args.checkpoints:,} checkpoints")
    cps = write_checkpoints(rt, cams, per_camera, args.checkpoints)
    rt.db.dispose()
    return {
        "rows": per_camera * len(cams),
        "cameras": len(cams),
        "rows_per_camera": per_camera,
        "segment_seconds": args.segment_seconds,
        "checkpoints": args.checkpoints,
        "build": {
            "rows_seconds": round(rows_s, 1),
            "rows_per_second": round(per_camera * len(cams) / rows_s),
            **cps,
            "total_seconds": round(time.perf_counter() - t_total, 1),
            **extra,
        },
    }


def write_checkpoints(rt: Any, cams: list[str], per_camera: int, n: int) -> dict[str, Any]:
    """The N signed checkpoints of the module docstring, committed in one transaction, then the witness."""
    from sqlalchemy import select

    from integrity import checkpoints, keys, records, witness
    from integrity.chain import canonical_json
    from nvr.models import AuditHead, Checkpoint, Segment

    db, settings = rt.db, rt.settings
    t0 = time.perf_counter()
    with db.session() as s:
        keys.ensure_key(s, settings.keys_dir, rt.clock.now_us())
    database_id = db.database_id()
    seqs = head_seqs(n, per_camera)
    wanted = sorted(set(seqs))
    links: dict[str, dict[int, str]] = {c: {} for c in cams}
    with db.session() as s:
        for cam in cams:
            for i in range(0, len(wanted), IN_CHUNK):
                part = wanted[i : i + IN_CHUNK]
                for q, k in s.execute(
                    select(Segment.seq, Segment.link).where(Segment.camera_id == cam, Segment.seq.in_(part))
                ):
                    links[cam][int(q)] = str(k)
    read_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    body_bytes = 0
    with db.session() as s:
        signer = keys.active_signer(s, settings.keys_dir)
        head_seq, head_hash = s.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
        registry = records.registry_digests(s)
        start_us = rt.clock.now_us()
        prev: str | None = None
        for k, q in enumerate(seqs, start=1):
            created = start_us + (k - 1) * 1000
            body = canonical_json(
                {
                    "type": checkpoints.BODY_TYPE,
                    "v": 2,
                    "seq": k,
                    "prev_hash": prev,
                    "created_us": created,
                    "database_id": database_id,
                    "cameras": {c: {"seq": q, "link": links[c][q]} for c in sorted(cams)},
                    "audit": {"seq": int(head_seq), "hash": str(head_hash)},
                    "registry": registry,
                }
            ).decode("ascii")
            digest = checkpoints.body_hash(body)
            s.add(
                Checkpoint(
                    created_us=created,
                    key_id=signer.key_id,
                    suite=signer.suite,
                    body=body,
                    signature=signer.sign(body.encode("ascii")).hex(),
                    seq=k,
                    prev_hash=prev,
                    hash=digest,
                )
            )
            body_bytes += len(body)
            prev = digest
            if k % 200 == 0:
                s.flush()
    sign_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    appended = witness.catch_up(db, settings)
    witness_s = time.perf_counter() - t2
    return {
        "checkpoint_head_lookup_seconds": round(read_s, 2),
        "checkpoint_sign_and_insert_seconds": round(sign_s, 2),
        "witness_catch_up_seconds": round(witness_s, 2),
        "witness_appended": appended,
        "checkpoint_body_bytes_mean": round(body_bytes / max(n, 1)),
        "signing_suite": signer.suite,
    }


# --- measurement ---------------------------------------------------------------------------------------------------
class Timed:
    """Wraps ``module.name`` with a timer for the duration of a ``with`` block."""

    def __init__(self, module: Any, name: str, replacement: Callable[..., Any] | None = None) -> None:
        self.module, self.name, self.replacement = module, name, replacement
        self.seconds, self.calls, self.results = 0.0, 0, []  # type: ignore[var-annotated]

    def __enter__(self) -> Timed:
        if not hasattr(self.module, self.name):
            raise SystemExit(f"{self.module.__name__}.{self.name} is gone: bench/verify.py needs updating")
        self.original = getattr(self.module, self.name)
        inner = self.replacement or self.original

        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                out = inner(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1
            self.results.append(out)
            return out

        setattr(self.module, self.name, wrapper)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.original)


def verify_once(db: Any, settings: Any) -> dict[str, Any]:
    from integrity import checkpoint_verify, verify_archive

    with (
        Timed(verify_archive, "_rehash", lambda *a, **kw: []) as rehash,
        Timed(verify_archive, "_camera_chain") as chain_step,
        Timed(checkpoint_verify, "check") as check_step,
    ):
        t = time.perf_counter()
        report = verify_archive.verify_archive(db, settings)
        total = time.perf_counter() - t
    assert rehash.calls == 1, "verify_archive no longer calls _rehash once: the file step is not excluded"
    assert check_step.calls == 1, f"checkpoint_verify.check called {check_step.calls} times"
    cps = check_step.results[0]
    return {
        "report": report,
        "check": cps,
        "chain_seconds": chain_step.seconds,
        "chain_calls": chain_step.calls,
        "checkpoints_seconds": check_step.seconds,
        "total_seconds": total,
        "loadavg_after": os.getloadavg(),
    }


def problems_text(problems: list[Any], n: int = 5) -> str:
    return "; ".join(f"{p.kind} {p.subject}: {p.detail}" for p in problems[:n])


def tamper_check(db: Any, settings: Any, heads: dict[str, tuple[int, str]], per_camera: int, n: int) -> str:
    """Alter the link of a row the middle checkpoint names: check must report a chain_break for it."""
    from sqlalchemy import update

    from integrity import checkpoint_verify
    from nvr.models import Segment

    cam = sorted(heads)[0]
    q = head_seqs(n, per_camera)[n // 2]
    with db.session() as s:
        s.execute(update(Segment).where(Segment.camera_id == cam, Segment.seq == q).values(link="0" * 64))
    res = checkpoint_verify.check(db, settings, heads)
    hit = [p for p in res.problems if p.kind == "chain_break" and p.camera_id == cam and p.seq == q]
    assert hit, f"altered link of {cam} #{q} not reported by checkpoint_verify.check: {problems_text(res.problems)}"
    return f"{hit[0].kind} {hit[0].subject}: {hit[0].detail}"


def summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def run_one(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    from nvr.db import Database

    db_dir = args.data_dir / kind
    url = pg_url(args.pg_admin_url, args.pg_database) if kind == "postgresql" else f"sqlite:///{db_dir / 'nvr.db'}"
    log(f"{kind}: building the catalogue in {db_dir}")
    cat = build(args, kind, db_dir, url)
    cat["database_bytes"] = database_size(args, kind, db_dir)
    log(f"{kind}: built in {cat['build']['total_seconds']} s; database {cat['database_bytes'] / 2**20:,.0f} MiB")
    settings = settings_for(db_dir, url)
    db = Database(url)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(1, args.reps + 1):
            log(f"{kind}: verify {rep}/{args.reps}")
            r = verify_once(db, settings)
            report, cps = r["report"], r["check"]
            if cps.problems:
                raise SystemExit(f"{kind}: checkpoint_verify.check found problems: {problems_text(cps.problems)}")
            if not report.ok:
                raise SystemExit(f"{kind}: verify_archive found problems: {problems_text(report.problems)}")
            if (
                report.rows != cat["rows"]
                or report.checkpoints != cat["checkpoints"]
                or cps.checkpoints != cat["checkpoints"]
            ):
                raise SystemExit(
                    f"{kind}: verify saw {report.rows:,} rows and {report.checkpoints} checkpoints, "
                    f"expected {cat['rows']:,} and {cat['checkpoints']}"
                )
            log(
                f"{kind}: chain {r['chain_seconds']:.1f} s ({report.rows / r['chain_seconds']:,.0f} rows/s), "
                f"checkpoints {r['checkpoints_seconds']:.2f} s, total {r['total_seconds']:.1f} s; clean"
            )
            runs.append(r)
        tampered = None
        if args.quick:
            heads = {c: (cat["rows_per_camera"], "") for c in (f"bench-{i:03d}" for i in range(cat["cameras"]))}
            tampered = tamper_check(db, settings, heads, cat["rows_per_camera"], cat["checkpoints"])
            log(f"{kind}: tamper check: {tampered}")
    finally:
        db.dispose()
    rows, n_cp = cat["rows"], cat["checkpoints"]
    chain_s = [r["chain_seconds"] for r in runs]
    check_s = [r["checkpoints_seconds"] for r in runs]
    total_s = [r["total_seconds"] for r in runs]
    database = (
        f"SQLite {sqlite3.sqlite_version}" if kind == "sqlite" else f"PostgreSQL {postgres_version(args.pg_admin_url)}"
    )
    return {
        "db": kind,
        "database": database,
        "catalogue": cat,
        "method": "verify_archive with _rehash replaced by a no-op (no files); timers around _camera_chain and "
        "checkpoint_verify.check; every run asserted clean",
        "reps": args.reps,
        "figures": {
            "chain_seconds": summary(chain_s),
            "chain_rows_per_second": round(rows / min(chain_s)),
            "checkpoints_seconds": summary(check_s),
            "checkpoints_per_second": round(n_cp / min(check_s)),
            "checkpoint_heads_per_second": round(n_cp * cat["cameras"] / min(check_s)),
            "total_seconds": summary(total_s),
            "total_rows_per_second": round(rows / min(total_s)),
            "other_steps_seconds": summary([t - a - b for t, a, b in zip(total_s, chain_s, check_s, strict=True)]),
        },
        "runs": [
            {
                "chain_seconds": round(r["chain_seconds"], 3),
                "chain_calls": r["chain_calls"],
                "checkpoints_seconds": round(r["checkpoints_seconds"], 3),
                "total_seconds": round(r["total_seconds"], 3),
                "report": {k: v for k, v in r["report"].as_dict().items() if k != "problems"},
                "witnesses_compared": r["check"].witnesses,
                "loadavg_after": [round(x, 2) for x in r["loadavg_after"]],
            }
            for r in runs
        ],
        "tamper_check": tampered,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--db", choices=("sqlite", "postgresql", "both"), default=None, help="default: both (--quick: sqlite)"
    )
    p.add_argument("--cameras", type=int, default=100)
    p.add_argument("--rows-per-camera", type=int, default=43_200, help="default: 30 days of 60 s segments")
    p.add_argument("--segment-seconds", type=int, default=60)
    p.add_argument("--checkpoints", type=int, default=1_000)
    p.add_argument("--reps", type=int, default=1, help="verify runs on the one catalogue")
    p.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK['cameras']} cameras x {QUICK['rows_per_camera']:,} rows, {QUICK['checkpoints']} checkpoints, "
        "plus a tamper check; results under --data-dir unless --out",
    )  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None, help="default: $TMPDIR/nvr-bench-verify[-quick]")
    p.add_argument("--keep", action="store_true", help="keep the catalogue (SQLite folder, PostgreSQL database)")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="an existing database to create the bench one from")
    p.add_argument("--pg-database", default=None, help="default: nvr_bench_verify[_quick]")
    p.add_argument(
        "--out", default=None, help="'{db}' becomes sqlite/postgresql; default bench/results/verify-{db}.json"
    )
    args = p.parse_args()
    suffix = "-quick" if args.quick else ""
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    args.db = args.db or ("sqlite" if args.quick else "both")
    args.data_dir = (args.data_dir or Path(tempfile.gettempdir()) / f"nvr-bench-verify{suffix}").expanduser().absolute()
    args.pg_database = args.pg_database or f"nvr_bench_verify{suffix.replace('-', '_')}"
    if args.out is None:
        args.out = str(args.data_dir / "verify-{db}.json") if args.quick else "bench/results/verify-{db}.json"
    if args.checkpoints < 1 or args.rows_per_camera < 1 or args.cameras < 1:
        raise SystemExit("--cameras, --rows-per-camera and --checkpoints must be at least 1")
    mach = machine()
    for kind in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        try:
            result = run_one(args, kind)
        finally:
            if not args.keep:
                drop_catalogue(args, kind, ignore_errors=True)
        result, out = write_result("verify", args.out, kind, mach, result)
        f = result["figures"]
        print(
            f"\n{kind}: {result['catalogue']['rows']:,} rows, {result['catalogue']['checkpoints']:,} checkpoints: "
            f"chain {f['chain_seconds']['min']} s ({f['chain_rows_per_second']:,} rows/s), checkpoints "
            f"{f['checkpoints_seconds']['min']} s, total {f['total_seconds']['min']} s "
            f"({f['total_rows_per_second']:,} rows/s); clean; results in {out}\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
