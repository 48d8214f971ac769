"""Playback benchmark: time to first byte of playback, recordings-listing latency, and the per-request cost of the
grant check plus the audit write, on a large synthetic catalogue, on SQLite and on PostgreSQL.

Catalogue (built once per database and parameters, reused from ``--data-dir`` when it is still there):

* ``--cameras`` cameras (``bench-000`` ...), unit "Bench", share class ``authorized``; ``--days`` of touching
  ``--segment-seconds`` segments per camera ending at build time: 100 x 30 x 1440 = 4,320,000 rows by default.
* The rows point at ``--files`` (8) real files, ``<volume>/clips/clip-K.mp4``, row ``seq`` n at K = (n - 1) mod 8,
  so a 5-minute window reads 5 or 6 distinct files: copies of one cached clip, a 60 s H.264 fragmented MP4 made
  with PyAV and the recorder's muxer flags, 320x180, 25 fps, a keyframe (one fragment) per second, ~500 kbit/s.
  ``bytes``, ``frames``, ``media_duration_us`` and ``sha256`` are the real file's, so playback reads, checks and
  splices real media; ``seq``, ``prev_link`` and ``link`` form a valid chain per camera (the first camera's chain
  is verified after the build).
* Bulk path (bench/catalogue.py, shared with bench/retention_bench.py): chain links are computed in worker processes
  (``integrity.chain.link``, as ``storage.catalog.register_segment`` does); SQLite gets ``executemany`` in one
  transaction with ``journal_mode=MEMORY`` / ``synchronous=OFF`` / a 1 GiB page cache on the build connection only
  (WAL is restored afterwards; the server uses the product's own pragmas); PostgreSQL gets ``COPY`` with the
  segments table's secondary indexes and constraints dropped and recreated from their own definitions afterwards,
  then ``VACUUM ANALYZE`` (what autovacuum would reach on its own).
* Users through ``api.people`` (an approver and an officer with a personal token), one grant through
  ``api.grants.create``: all cameras, ``playback``, footage window the last 31 days, valid 364 days, 16 streams.

Measurement (``--requests`` each, after ``--warmup`` discarded requests of each kind):

* The real API, ``nvr api``, runs as a **subprocess** (uvicorn, one process), so client and server do not share a
  GIL. The client is one ``httpx.Client``, one request at a time.
* ``playback_ttfb``: ``GET /cameras/{id}/playback`` for a random 5-minute window of a random camera: time from
  sending the request until the first body byte has arrived (the response headers' time is kept too); then the
  stream is closed, as a player seeking away would. ``playback_ttfb_cold_files``: the same with the segment files
  dropped from the page cache (``posix_fadvise(DONTNEED)``) before each request; the database stays cached.
* ``range_ttfb``: seeking. Eight players each open a playback session on a random 5-minute window
  (``Range: bytes=0-``, as Chromium's first request), then ``--requests`` mid-window range requests
  (``bytes=N-``, N uniform in the middle half of the stream) go to them in turn, each joining its player's
  session: time until the first body byte. Each answer's ``Content-Range`` is checked, and before that one
  window's ranges are checked byte for byte against its full response (``range_check``).
* ``listing_24h`` / ``listing_5min``: ``GET /cameras/{id}/recordings`` for a random window; time until the whole
  JSON body has been read. ``http_me_floor``: ``GET /me`` (token look-up and framework, no grant, no audit).
* ``segment_hashing_ms``: what the per-segment integrity check costs (playback reads every segment whole and
  hashes it against its row before sending any of it): ``storage.reader._load`` warm and cold, and ``hashlib``
  alone, for the catalogue's clip and for 22.5 MB and 60 MB files (60 s at 3 and 8 Mbit/s).
* ``--clip 3mbit`` makes the rows point at a typical camera's 60 s segment instead (640x360 noise at 3 Mbit/s,
  ~22.7 MB), so the time to first byte includes reading and hashing a segment of real size.
* In this process, server stopped: ``grant_audit``, per iteration one session as the API does:
  ``grants.authorize(...)`` + ``audit.record(...)`` + commit; ``authorize_only`` and ``authenticate`` (the bearer
  token look-up every request also pays) in their own loops. Then the stages of a playback request and of a 24 h
  listing, timed one by one with the service calls the routes make, to show where the time goes.

Usage (from the repository root)::

    .venv/bin/python bench/playback.py --db both              # build, measure, drop the catalogues
    .venv/bin/python bench/playback.py --db both --keep       # keep them: the next run skips the build
    .venv/bin/python bench/playback.py --db sqlite --cameras 4 --days 2 --requests 50   # a quick trial
    .venv/bin/python bench/playback.py --db sqlite --clip 3mbit --data-dir /tmp/nvr-bench-playback-3mbit
    .venv/bin/python bench/playback.py --quick   # 2 cameras, 2 days, 20 requests; tests/test_bench_quick.py runs it
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project, ahead of bench/ (this script's folder, where catalogue.py is)

import av  # noqa: E402
import httpx  # noqa: E402
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
from nvr.clock import iso  # noqa: E402

NVR = str(Path(sys.executable).with_name("nvr"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
US = 1_000_000
DAY_US = 86_400 * US
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
MANIFEST = "bench-manifest.json"
CLIP_FPS = 25
CLIPS: dict[str, dict[str, Any]] = {
    # the catalogue's default clip: a drifting pattern, ~500 kbit/s (3.8 MB a minute), what the figures below use
    "small": {"width": 320, "height": 180, "kbps": 500, "picture": "pattern", "preset": "veryfast"},
    # a typical camera's 60 s segment: moving noise held at 3 Mbit/s by the VBV (~22.7 MB, as bench/export.py)
    "3mbit": {"width": 640, "height": 360, "kbps": 3000, "picture": "noise", "preset": "ultrafast"},
}
HASH_SIZES = {"60 s at 3 Mbit/s (22.5 MB)": 22_500_000, "60 s at 8 Mbit/s (60 MB)": 60_000_000}
GOALS = {
    "playback_ttfb": {"p50": 50.0, "p99": 150.0},
    "playback_ttfb_cold_files": {"p50": 50.0, "p99": 150.0},
    "range_ttfb": {"p50": 50.0, "p99": 150.0},
    "listing_24h": {"p50": 50.0, "p99": 150.0},
    "listing_5min": {"p50": 50.0, "p99": 150.0},
    "grant_audit": {"p50": 2.0},
}
PURPOSE = "benchmark: playback latency"


# --- the clip ------------------------------------------------------------------------------------------------------
def make_clip(data_dir: Path, seconds: int, kind: str = "small") -> dict[str, Any]:
    """A real ``seconds`` s fragmented MP4 (cached): the file every catalogue row points at."""
    from nvr.recorder.recovery import probe
    from storage.fmp4 import scan
    from storage.writer import MOVFLAGS

    c = CLIPS[kind]
    w, h, kbps = c["width"], c["height"], c["kbps"]
    suffix = "" if kind == "small" else f"-{kbps}k-{c['picture']}"
    path = data_dir / f"clip-{seconds}s-{w}x{h}-{CLIP_FPS}fps{suffix}.mp4"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return json.loads(info_path.read_text())
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    x264 = f"keyint={CLIP_FPS}:min-keyint={CLIP_FPS}:scenecut=0:bframes=0"
    if c["picture"] == "noise":
        x264 += f":vbv-maxrate={kbps}:vbv-bufsize={kbps}"
    with av.open(str(tmp), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        st = out.add_stream("libx264", rate=CLIP_FPS)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.bit_rate = kbps * 1000
        st.codec_context.gop_size = CLIP_FPS
        st.codec_context.options = {"x264-params": x264, "preset": c["preset"]}
        st.codec_context.time_base = Fraction(1, CLIP_FPS)
        patterns: dict[tuple[int, int], bytes] = {}
        noise = os.urandom(w * h * 2) if c["picture"] == "noise" else b""
        for i in range(seconds * CLIP_FPS):
            frame = av.VideoFrame(w, h, "yuv420p")
            for k, plane in enumerate(frame.planes):
                n = plane.buffer_size
                if noise:  # the encoder spends its whole budget on noise
                    off = (i * 7919 + k * 1000) % (len(noise) - n)
                    plane.update(noise[off : off + n])
                    continue
                if (k, n) not in patterns:  # a diagonal pattern that drifts: every frame differs
                    patterns[(k, n)] = bytes(((x * 7) // 5 + (x // plane.line_size) * 3) % 256 for x in range(n)) * 2
                shift = (i * 4 + k * 50) % n
                plane.update(patterns[(k, n)][shift : shift + n])
            frame.pts = i
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    frames, duration_us = probe(tmp)
    result = scan(tmp)
    assert result.tail == "clean" and result.fragments, "the clip did not scan clean"
    info = {
        "file": path.name,
        "seconds": seconds,
        "width": w,
        "height": h,
        "fps": CLIP_FPS,
        "gop_frames": CLIP_FPS,
        "target_bitrate": kbps * 1000,
        "picture": c["picture"],
        "bytes": tmp.stat().st_size,
        "sha256": hashlib.sha256(tmp.read_bytes()).hexdigest(),
        "frames": frames,
        "media_duration_us": duration_us,
        "fragments": len(result.fragments),
    }
    os.replace(tmp, path)
    info_path.write_text(json.dumps(info, indent=2))
    return info


# --- what playback's per-segment check costs -------------------------------------------------------------------------
def measure_hashing(data_dir: Path, clip: dict[str, Any], reps: int) -> dict[str, Any]:
    """What playback adds per segment since it hashes every segment before sending it: ``storage.reader._load``
    (open, size check, read the whole file into one buffer, SHA-256 of that buffer, compare with the row), page
    cache warm and with the file evicted first, and ``hashlib.sha256`` over the same bytes in memory (the CPU part),
    for the catalogue's clip and for files of typical segment sizes (random bytes: SHA-256 speed does not depend on
    the content). Medians and maxima of ``reps`` runs, in ms."""
    from storage.reader import SegmentRef, _load

    files = {f"catalogue clip ({clip['bytes'] / 1e6:.1f} MB)": data_dir / clip["file"]}
    for name, size in HASH_SIZES.items():
        path = data_dir / f"hash-{size}.bin"
        if not path.exists() or path.stat().st_size != size:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(os.urandom(size))
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        files[name] = path
    out: dict[str, Any] = {}
    for name, path in files.items():
        data = path.read_bytes()
        ref = SegmentRef(path, 1, 0, 1, len(data), sha256=hashlib.sha256(data).hexdigest())
        runs: dict[str, list[float]] = {"hashlib_in_memory": [], "read_and_hash_warm": [], "read_and_hash_cold": []}
        for _ in range(reps):
            t0 = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            runs["hashlib_in_memory"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            _load(ref)
            runs["read_and_hash_warm"].append((time.perf_counter() - t0) * 1000)
            evict([str(path)])
            t0 = time.perf_counter()
            _load(ref)
            runs["read_and_hash_cold"].append((time.perf_counter() - t0) * 1000)
        entry: dict[str, Any] = {"bytes": len(data)}
        for k, v in runs.items():
            v.sort()
            entry[k] = {"p50": round(percentile(v, 0.5), 2), "max": round(v[-1], 2)}
        entry["hashlib_gb_per_s"] = round(len(data) / 1e6 / entry["hashlib_in_memory"]["p50"], 2)
        out[name] = entry
    return out


# --- catalogue -----------------------------------------------------------------------------------------------------
def camera_ids(n: int) -> list[str]:
    return [f"bench-{i:03d}" for i in range(n)]


def pg_exists(admin_url: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def wanted(args: argparse.Namespace, clip: dict[str, Any]) -> dict[str, Any]:
    return {
        "cameras": args.cameras,
        "days": args.days,
        "segment_seconds": args.segment_seconds,
        "clip_sha256": clip["sha256"],
        "files": args.files,
        "format": 2,
    }


def database_url(args: argparse.Namespace, kind: str, db_dir: Path) -> str:
    return pg_url(args.pg_admin_url, args.pg_database) if kind == "postgresql" else f"sqlite:///{db_dir / 'nvr.db'}"


def catalogue_present(args: argparse.Namespace, kind: str, db_dir: Path, want: dict[str, Any]) -> dict | None:
    """The manifest of a usable catalogue with the same parameters, or None."""
    try:
        manifest = json.loads((db_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != want:
        return None
    if kind == "postgresql" and not pg_exists(args.pg_admin_url, args.pg_database):
        return None
    if kind == "sqlite" and not (db_dir / "nvr.db").exists():
        return None
    from sqlalchemy import func, select

    from nvr.db import Database
    from nvr.models import Segment

    db = Database(database_url(args, kind, db_dir))
    try:
        with db.session() as s:
            rows = s.scalar(select(func.count()).select_from(Segment))
    except Exception:
        return None
    finally:
        db.dispose()
    if rows != manifest["rows"]:
        return None
    if manifest["token_expires_us"] < time.time_ns() // 1000 + DAY_US:
        return None
    return manifest


def build_catalogue(args: argparse.Namespace, kind: str, db_dir: Path, clip: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import func, select

    from api import grants, people
    from api.grants import GrantSpec
    from nvr import registry
    from nvr.models import Segment, Volume
    from nvr.runtime import Runtime

    fresh_catalogue(args, kind, db_dir)
    url = database_url(args, kind, db_dir)
    t_total = time.perf_counter()
    rt = Runtime.open(settings_for(db_dir, url))
    rt.init_default_volume()
    now = rt.clock.now_us()
    cams = camera_ids(args.cameras)
    seg_us = clip["media_duration_us"]  # touching rows: each starts where the previous one's media ended
    per_camera = args.days * DAY_US // (args.segment_seconds * US)
    end_us = now - now % (60 * US)
    first_us = end_us - per_camera * seg_us
    plan = {
        "cameras": cams,
        "per_camera": per_camera,
        "segment_us": seg_us,
        "built_us": now,
        # cameras do not cut segments in the same instant: spread their phases over the segment length
        "cam_start_us": {c: first_us + i * (seg_us // len(cams)) for i, c in enumerate(cams)},
    }
    with rt.db.session() as s:
        vol = s.scalars(select(Volume)).one()
        vol_id, vol_path = vol.id, Path(vol.path)
        for c in cams:
            registry.add(
                s,
                c,
                registry.CameraFields(
                    name=f"Bench camera {c}",
                    stream_url=f"rtsp://127.0.0.1:8554/{c}",
                    managing_unit="Bench",
                    share_class="authorized",
                ),
                actor="bench",
                now_us=now,
            )
    # K copies (distinct inodes, so distinct page-cache pages): consecutive rows use different files, so a window
    # reads several files as it would in production, and evicting them makes every file read of a request cold.
    src = args.data_dir / clip["file"]
    files = []
    for k in range(args.files):
        dst = vol_path / "clips" / f"clip-{k}.mp4"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as fh:
            os.fsync(fh.fileno())  # clean pages: posix_fadvise(DONTNEED) can only drop clean pages
        files.append(dst)
    plan["rel_paths"] = [str(f.relative_to(vol_path)) for f in files]
    password = uuid.uuid4().hex + "-bench"
    with rt.db.session() as s:
        approver = people.create_user(
            s, username="bench-approver", full_name="Bench Approver", staff_number="B-1", unit="Bench",
            roles=["approver"], password=password, now_us=now,
        )  # fmt: skip
        officer = people.create_user(
            s, username="bench-officer", full_name="Bench Officer", staff_number="B-2", unit="Bench",
            roles=["officer"], password=password, now_us=now,
        )  # fmt: skip
        expires = now + 364 * DAY_US
        _, approver_secret = people.issue_token(s, approver, "personal", "bench", now_us=now, expires_us=expires)
        _, officer_secret = people.issue_token(s, officer, "personal", "bench", now_us=now, expires_us=expires)
        officer_id = officer.id
    with rt.db.session() as s:
        grantor = people.authenticate(s, approver_secret, now)
        g = grants.create(
            s,
            grantor,
            GrantSpec(
                user_id=officer_id,
                cameras=cams,
                actions=["playback"],
                purpose="playback benchmark",
                case_ref="BENCH-1",
                valid_until_us=now + 364 * DAY_US,
                window_last_days=31,
                max_streams=16,
            ),
            now,
        )
        grant_id = g.id
    setup_s = time.perf_counter() - t_total
    log(f"{kind}: schema, cameras, users and grant in {setup_s:.1f} s; inserting {per_camera * len(cams):,} rows")
    t_rows = time.perf_counter()
    extra: dict[str, Any] = {}
    if kind == "sqlite":
        rt.db.dispose()
        bulk_sqlite(db_dir / "nvr.db", plan, vol_id, clip, lambda _cam: itertools.cycle(plan["rel_paths"]))
    else:
        rt.db.dispose()
        extra = bulk_postgresql(url, plan, vol_id, clip, lambda _cam: itertools.cycle(plan["rel_paths"]))
    rows_s = time.perf_counter() - t_rows
    with rt.db.session() as s:
        rows = int(s.scalar(select(func.count()).select_from(Segment)) or 0)
        objs = s.scalars(select(Segment).where(Segment.camera_id == cams[0]).order_by(Segment.seq)).all()
        sample: list[Mapping[str, object]] = [
            {f: getattr(o, f) for f in (*chain.LINKED_FIELDS, "prev_link", "link")} for o in objs
        ]
    problems = chain.verify_rows(cams[0], sample)
    if problems:
        raise SystemExit(f"the bulk-built chain of {cams[0]} does not verify: {problems[:3]}")
    total_s = time.perf_counter() - t_total
    rt.db.dispose()
    manifest = {
        "params": wanted(args, clip),
        "db": kind,
        "rows": rows,
        "per_camera": per_camera,
        "first_us": first_us,
        "end_us": end_us + seg_us,
        "cam_start_us": plan["cam_start_us"],
        "segment_us": seg_us,
        "files": [str(f) for f in files],
        "built_at": iso(now),
        "built_us": now,
        "officer_token": officer_secret,
        "token_expires_us": expires,
        "grant_id": grant_id,
        "build": {
            "setup_seconds": round(setup_s, 1),
            "rows_seconds": round(rows_s, 1),
            "total_seconds": round(total_s, 1),
            "rows_per_second": round(rows / rows_s),
            **extra,
        },
    }
    (db_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"{kind}: built {rows:,} rows in {total_s:.1f} s ({rows_s:.1f} s for the rows); chain of {cams[0]} verified")
    return manifest


# --- statistics ----------------------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(name: str, values_ms: list[float]) -> dict[str, Any]:
    v = sorted(values_ms)
    out: dict[str, Any] = {
        "n": len(v),
        "p50": round(percentile(v, 0.50), 3),
        "p90": round(percentile(v, 0.90), 3),
        "p99": round(percentile(v, 0.99), 3),
        "max": round(v[-1], 3) if v else None,
        "mean": round(sum(v) / len(v), 3) if v else None,
    }
    goal = GOALS.get(name)
    if goal:
        out["goal_ms"] = goal
        out["pass"] = all(out[k] <= limit for k, limit in goal.items())
    return out


# --- the server ------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def api_server(db_dir: Path, url: str) -> Iterator[tuple[str, int]]:
    """``nvr api`` as a subprocess on a free port; yields (base URL, pid)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NVR_")}
    env.update(
        NVR_DATA_DIR=str(db_dir),
        NVR_DATABASE_URL=url,
        NVR_API_HOST="127.0.0.1",
        NVR_API_PORT=str(port),
        NVR_LOG_LEVEL="WARNING",
        # One officer playing hundreds of windows of 100 cameras a minute is what the abnormal-use rules exist to
        # stop (camera_spread, footage_volume): they still run and raise alerts, but suspend nothing here.
        NVR_ALERT_SUSPEND_RULES="[]",
    )
    log_file = open(db_dir / "api.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([NVR, "api"], env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(ROOT))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"nvr api exited with {proc.returncode}; see {db_dir / 'api.log'}")
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("nvr api did not start within 60 s")
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


# --- the client ------------------------------------------------------------------------------------------------------
class Windows:
    """Random (camera, start, end) inside the catalogue and inside the grant's last-31-days window."""

    def __init__(self, manifest: dict[str, Any], rng: random.Random) -> None:
        self.cams = sorted(manifest["cam_start_us"])
        self.starts = manifest["cam_start_us"]
        self.span = manifest["per_camera"] * manifest["segment_us"]
        self.rng = rng

    def __call__(self, length_us: int) -> tuple[str, int, int]:
        cam = self.rng.choice(self.cams)
        first = self.starts[cam]
        lo = max(first, time.time_ns() // 1000 - 31 * DAY_US + 10 * 60 * US)  # the grant's window moves with now
        hi = first + self.span - length_us
        if hi <= lo:
            raise SystemExit("the catalogue is too old for the grant's 31-day window; rebuild it (drop --keep's data)")
        start = self.rng.randrange(lo, hi)
        return cam, start, start + length_us


def evict(paths: list[str]) -> None:
    """Drop the segment files' pages from the page cache (the database stays cached)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_playback(
    client: httpx.Client, windows: Windows, n: int, cold: list[str] | None = None
) -> tuple[list[float], list[float], list[int]]:
    ttfb, heads, sizes = [], [], []
    for _ in range(n):
        cam, a, b = windows(300 * US)
        params = {"start": iso(a), "end": iso(b), "purpose": PURPOSE}
        if cold:
            evict(cold)
            time.sleep(0.02)  # let the previous stream's teardown finish: it may still read pages back in
            evict(cold)
        t0 = time.perf_counter()
        with client.stream("GET", f"/api/v1/cameras/{cam}/playback", params=params) as r:
            t_head = time.perf_counter()
            if r.status_code != 200:
                r.read()
                raise SystemExit(f"playback {cam} {params}: {r.status_code} {r.text[:300]}")
            first = next(r.iter_raw())
            t_first = time.perf_counter()
        if first[4:8] != b"ftyp":
            raise SystemExit(f"playback {cam}: the body does not start with ftyp")
        ttfb.append((t_first - t0) * 1000)
        heads.append((t_head - t0) * 1000)
        sizes.append(int(r.headers["content-length"]))
    return ttfb, heads, sizes


PLAYERS = 8  # sessions open at once in the range phase (the bench grant allows 16 streams)


def _range_get(client: httpx.Client, cam: str, params: dict[str, str], first: int) -> tuple[bytes, str, int]:
    """``Range: bytes=<first>-``: (first body chunk, Content-Range, stream length); the stream is then closed, as a
    player seeking again would."""
    with client.stream(
        "GET", f"/api/v1/cameras/{cam}/playback", params=params, headers={"Range": f"bytes={first}-"}
    ) as r:
        if r.status_code != 206:
            r.read()
            raise SystemExit(f"range playback {cam} {params}: {r.status_code} {r.text[:300]}")
        chunk = next(r.iter_raw())
        content_range = r.headers["content-range"]
    return chunk, content_range, int(content_range.rsplit("/", 1)[1])


def run_ranges(client: httpx.Client, windows: Windows, n: int, rng: random.Random) -> tuple[list[float], int]:
    """PLAYERS sessions, then ``n`` mid-window range requests joining them in turn; (TTFB ms, sessions opened)."""
    players = []
    for _ in range(PLAYERS):
        cam, a, b = windows(300 * US)
        params = {"start": iso(a) or "", "end": iso(b) or "", "purpose": PURPOSE}
        chunk, _, total = _range_get(client, cam, params, 0)
        if chunk[4:8] != b"ftyp":
            raise SystemExit(f"range playback {cam}: bytes=0- does not start with ftyp")
        players.append((cam, params, total))
    ttfb = []
    for i in range(n):
        cam, params, total = players[i % PLAYERS]
        first = rng.randrange(total // 4, 3 * total // 4)
        t0 = time.perf_counter()
        chunk, content_range, _ = _range_get(client, cam, params, first)
        ttfb.append((time.perf_counter() - t0) * 1000)
        if content_range != f"bytes {first}-{total - 1}/{total}" or not chunk:
            raise SystemExit(f"range playback {cam}: asked bytes={first}-, got {content_range}")
    return ttfb, PLAYERS


def check_ranges(client: httpx.Client, windows: Windows, rng: random.Random) -> str:
    """One window's full response, and ten ranges of it compared byte for byte (SystemExit on a difference)."""
    cam, a, b = windows(300 * US)
    params = {"start": iso(a), "end": iso(b), "purpose": PURPOSE + " (range check)"}
    url = f"/api/v1/cameras/{cam}/playback"
    full = client.get(url, params=params)
    if full.status_code != 200:
        raise SystemExit(f"playback {cam}: {full.status_code} {full.text[:300]}")
    body = full.content
    for _ in range(10):
        first = rng.randrange(len(body))
        last = rng.randrange(first, min(len(body), first + 4_000_000))
        r = client.get(url, params=params, headers={"Range": f"bytes={first}-{last}"})
        if r.status_code != 206 or r.content != body[first : last + 1]:
            raise SystemExit(f"range check {cam}: bytes={first}-{last} is not the slice of the full response")
    return f"10 ranges of a {len(body):,}-byte response byte-identical to its slices"


def run_me(client: httpx.Client, n: int) -> list[float]:
    """``GET /me``: bearer look-up, one user read and the framework, no grant check, no audit write; a floor."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get("/api/v1/me")
        r.read()
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"/me: {r.status_code}")
    return times


def run_listing(client: httpx.Client, windows: Windows, n: int, length_us: int) -> tuple[list[float], list[int]]:
    times, segments = [], []
    for _ in range(n):
        cam, a, b = windows(length_us)
        params = {"start": iso(a), "end": iso(b)}
        t0 = time.perf_counter()
        r = client.get(f"/api/v1/cameras/{cam}/recordings", params=params)
        body = r.content
        t1 = time.perf_counter()
        if r.status_code != 200:
            raise SystemExit(f"recordings {cam} {params}: {r.status_code} {body[:300]!r}")
        doc = json.loads(body)
        if len(doc["runs"]) != 1:
            raise SystemExit(f"recordings {cam}: expected one continuous run, got {len(doc['runs'])}")
        times.append((t1 - t0) * 1000)
        segments.append(doc["segments"])
    return times, segments


def phase(pid: int, fn: Callable[[], Any], n: int) -> tuple[Any, dict[str, Any]]:
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return out, {"wall_seconds": round(wall, 2), "server_cpu_ms_per_request": round(cpu * 1000 / n, 2)}


# --- in-process: grant check + audit write, and where a request's time goes ------------------------------------------
def run_in_process(url: str, manifest: dict[str, Any], windows: Windows, n: int, warmup: int) -> dict[str, Any]:
    """With the server stopped: (1) the grant check + audit write per request, p50/p99, the issue's third figure;
    (2) the stages of a playback request and of a 24 h listing, timed one by one with the same service calls the
    routes make (api/routes/footage.py), to show where the time goes."""
    from api import audit, footage, grants, people
    from nvr.clock import SystemClock
    from nvr.db import Database
    from storage import pins
    from storage.reader import plan_playback, start_playback

    db = Database(url)
    clock = SystemClock()
    token = manifest["officer_token"]
    try:
        with db.session() as s:
            principal = people.authenticate(s, token, clock.now_us())
        actor = principal.actor
        figures: dict[str, list[float]] = {"grant_audit": [], "authorize_only": [], "authenticate": []}
        stages: dict[str, dict[str, list[float]]] = {"playback": {}, "playback_cold_files": {}, "listing_24h": {}}

        def event(kind: str, cam: str, a: int, b: int, g: Any) -> audit.Event:
            return audit.Event(
                kind, "allowed", camera_id=cam, window_start_us=a, window_end_us=b, object_id=f"grant:{g.id}",
                purpose=PURPOSE, case_ref=g.case_ref, reason="bench",
            )  # fmt: skip

        # (1) authorize + record + commit, one session per iteration: what every footage request adds to its own
        # work. Each figure in its own loop, back to back.
        def grant_audit(cam: str, a: int, b: int, meta: audit.RequestMeta) -> None:
            with db.session() as s:
                now = clock.now_us()
                g = grants.authorize(s, principal, cam, "playback", a, b, now)
                audit.record(s, now, actor, meta, event("playback.start", cam, a, b, g))

        def authorize_only(cam: str, a: int, b: int, meta: audit.RequestMeta) -> None:
            with db.session() as s:
                grants.authorize(s, principal, cam, "playback", a, b, clock.now_us())

        def authenticate(cam: str, a: int, b: int, meta: audit.RequestMeta) -> None:
            with db.session() as s:
                people.authenticate(s, token, clock.now_us())

        for name, fn in (
            ("grant_audit", grant_audit),
            ("authorize_only", authorize_only),
            ("authenticate", authenticate),
        ):
            for i in range(warmup + n):
                cam, a, b = windows(300 * US)
                meta = audit.RequestMeta("127.0.0.1", "bench/playback", uuid.uuid4().hex)
                t0 = time.perf_counter()
                fn(cam, a, b, meta)
                if i >= warmup:
                    figures[name].append((time.perf_counter() - t0) * 1000)

        for i in range(warmup + n):
            keep = i >= warmup
            cam, a, b = windows(300 * US)
            meta = audit.RequestMeta("127.0.0.1", "bench/playback", uuid.uuid4().hex)
            # (2a') plan and first chunk with the segment files evicted from the page cache (first, so that the
            # staged request below finds the files of its window cached again, as in the warm HTTP figure)
            with db.session() as s:
                refs = footage.playback_refs(s, cam, a, b)
            evict(manifest["files"])
            t0 = time.perf_counter()
            plan = plan_playback(refs, a, b)
            t1 = time.perf_counter()
            chunks = start_playback(plan)
            t2 = time.perf_counter()
            next(chunks)
            chunks.close()  # type: ignore[attr-defined]  # a generator
            t3 = time.perf_counter()
            if keep:
                cold = stages["playback_cold_files"]
                cold.setdefault("plan_playback (scan files)", []).append((t1 - t0) * 1000)
                cold.setdefault("start_playback (read + SHA-256 of the first segment)", []).append((t2 - t1) * 1000)
                cold.setdefault("first 1 MiB chunk", []).append((t3 - t2) * 1000)

            # (2a) a playback request, stage by stage (routes/footage.py playback + api/stream.py)
            marks: list[tuple[str, float]] = [("", time.perf_counter())]

            def mark(name: str, _marks: list[tuple[str, float]] = marks) -> None:
                _marks.append((name, time.perf_counter()))

            with db.session() as s:
                p = people.authenticate(s, token, clock.now_us())
            mark("authenticate")
            with db.session() as s:
                now = clock.now_us()
                g = grants.authorize(s, p, cam, "playback", a, b, now)
                mark("authorize")
                pin = footage.pin(s, p, g, cam, a, b, now, meta.request_id or "")
                mark("pin (lock grant, count, insert)")
            mark("commit (pin)")
            with db.session() as s:
                refs = footage.playback_refs(s, cam, a, b)
                mark("playback_refs (SQL + chain links of the rows)")
            plan = plan_playback(refs, a, b)
            mark("plan_playback (scan files)")
            chunks = start_playback(plan)
            mark("start_playback (read + SHA-256 of the first segment)")
            with db.session() as s:
                audit.record(s, clock.now_us(), actor, meta, event("playback.start", cam, a, b, g))
                mark("audit.record")
            mark("commit (playback.start)")
            next(chunks)
            chunks.close()  # type: ignore[attr-defined]  # a generator
            mark("first 1 MiB chunk")
            with db.session() as s:
                pins.unpin(s, pin.id)
                audit.record(s, clock.now_us(), actor, meta, event("playback.end", cam, a, b, g))
            mark("after the stream: unpin + audit + commit")
            if keep:
                for (_, t_prev), (name, t) in itertools.pairwise(marks):
                    stages["playback"].setdefault(name, []).append((t - t_prev) * 1000)

            # (2b) a 24 h listing, stage by stage (routes/footage.py recordings)
            cam, a, b = windows(DAY_US)
            marks2: list[tuple[str, float]] = [("", time.perf_counter())]
            with db.session() as s:
                p = people.authenticate(s, token, clock.now_us())
            marks2.append(("authenticate", time.perf_counter()))
            s = db._sessions()
            try:
                now = clock.now_us()
                g = grants.authorize(s, p, cam, "playback", a, b, now)
                marks2.append(("authorize", time.perf_counter()))
                rows = footage.segments_in(s, cam, a, b)
                marks2.append(("(apart, not a route step) segments_in alone: the SQL", time.perf_counter()))
                out = footage.recordings(s, cam, a, b)
                marks2.append(("recordings (segments_in + runs + gaps)", time.perf_counter()))
                audit.record(s, now, actor, meta, event("recordings.list", cam, a, b, g))
                marks2.append(("audit.record", time.perf_counter()))
                s.commit()
                marks2.append(("commit", time.perf_counter()))
            finally:
                s.close()
            json.dumps(out)
            marks2.append(("JSON encoding (json.dumps)", time.perf_counter()))
            assert len(rows) >= 1440 and out["segments"] == len(rows)
            if keep:
                for (_, t_prev), (name, t) in itertools.pairwise(marks2):
                    stages["listing_24h"].setdefault(name, []).append((t - t_prev) * 1000)
        result: dict[str, Any] = {k: summary(k, v) for k, v in figures.items()}
        breakdown = {
            kind: {name: {k: v for k, v in summary(name, vals).items() if k in ("p50", "p90", "p99")}
                   for name, vals in by_stage.items()}
            for kind, by_stage in stages.items()
        }  # fmt: skip
        return {"figures": result, "stages": breakdown}
    finally:
        db.dispose()


# --- driver --------------------------------------------------------------------------------------------------------
def run_one(args: argparse.Namespace, kind: str, clip: dict[str, Any]) -> dict[str, Any]:
    db_dir = args.data_dir / kind
    want = wanted(args, clip)
    url = database_url(args, kind, db_dir)
    manifest = catalogue_present(args, kind, db_dir, want)
    reused = manifest is not None
    if manifest is None:
        log(f"{kind}: building the catalogue in {db_dir}")
        manifest = build_catalogue(args, kind, db_dir, clip)
    else:
        log(f"{kind}: reusing the catalogue built {manifest['built_at']} ({manifest['rows']:,} rows)")
    size = database_size(args, kind, db_dir)
    log(f"{kind}: database size {size / 2**20:,.0f} MiB")
    rng = random.Random(args.seed)
    windows = Windows(manifest, rng)
    figures: dict[str, Any] = {}
    phases: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    with api_server(db_dir, url) as (base, pid):
        headers = {"Authorization": f"Bearer {manifest['officer_token']}", "User-Agent": "bench/playback"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            log(f"{kind}: server up (nvr api, pid {pid}); warming up with {args.warmup} requests of each kind")
            run_playback(client, windows, args.warmup)
            run_listing(client, windows, args.warmup, DAY_US)
            run_listing(client, windows, args.warmup, 300 * US)
            run_me(client, args.warmup)
            log(f"{kind}: {args.requests} playback requests")
            (ttfb, heads, sizes), phases["playback"] = phase(
                pid, lambda: run_playback(client, windows, args.requests), args.requests
            )
            figures["playback_ttfb"] = summary("playback_ttfb", ttfb)
            figures["playback_headers"] = summary("playback_headers", heads)
            extra["playback_content_length_bytes"] = {"min": min(sizes), "max": max(sizes)}
            log(f"{kind}: {args.requests} playback requests with the segment files evicted from the page cache")
            (ttfb, heads, sizes), phases["playback_cold_files"] = phase(
                pid,
                lambda: run_playback(client, windows, args.requests, cold=manifest["files"]),
                args.requests,
            )
            figures["playback_ttfb_cold_files"] = summary("playback_ttfb_cold_files", ttfb)
            extra["range_check"] = check_ranges(client, windows, rng)
            log(f"{kind}: {args.requests} mid-window range requests of {PLAYERS} playback sessions")
            (ttfb, opened), phases["range"] = phase(
                pid, lambda: run_ranges(client, windows, args.requests, rng), args.requests
            )
            figures["range_ttfb"] = summary("range_ttfb", ttfb)
            extra["range_sessions"] = opened
            log(f"{kind}: {args.requests} listings of 24 h")
            (times, segs), phases["listing_24h"] = phase(
                pid, lambda: run_listing(client, windows, args.requests, DAY_US), args.requests
            )
            figures["listing_24h"] = summary("listing_24h", times)
            extra["listing_24h_segments"] = {"min": min(segs), "max": max(segs)}
            log(f"{kind}: {args.requests} listings of 5 min")
            (times, segs), phases["listing_5min"] = phase(
                pid, lambda: run_listing(client, windows, args.requests, 300 * US), args.requests
            )
            figures["listing_5min"] = summary("listing_5min", times)
            extra["listing_5min_segments"] = {"min": min(segs), "max": max(segs)}
            times, phases["me"] = phase(pid, lambda: run_me(client, args.requests), args.requests)
            figures["http_me_floor"] = summary("http_me_floor", times)
    log(f"{kind}: server stopped; {args.requests} in-process grant checks + audit writes, and stage timings")
    inproc = run_in_process(url, manifest, windows, args.requests, args.warmup)
    figures.update(inproc["figures"])
    log(f"{kind}: per-segment read + SHA-256 ({args.hash_reps} runs per size)")
    hashing = measure_hashing(args.data_dir, clip, args.hash_reps)
    return {
        "db": kind,
        "database": f"SQLite {sqlite3.sqlite_version}"
        if kind == "sqlite"
        else f"PostgreSQL {postgres_version(args.pg_admin_url)}",
        "catalogue": {
            "reused": reused,
            "built_at": manifest["built_at"],
            "rows": manifest["rows"],
            "cameras": args.cameras,
            "days": args.days,
            "segments_per_camera": manifest["per_camera"],
            "database_bytes": size,
            "build": manifest["build"],
            "clip": clip,
            "files": f"row seq n of every camera points at <volume>/clips/clip-K.mp4, K = (n - 1) mod {args.files}; "
            f"{args.files} copies of the one clip",
        },
        "server": "nvr api subprocess (uvicorn, one process); client: one httpx.Client, sequential requests",
        "warmup_requests": args.warmup,
        "figures_ms": figures,
        "phases": phases,
        "details": extra,
        "stages_ms_in_process": inproc["stages"],
        "segment_hashing_ms": hashing,
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| metric | n | p50 ms | p90 ms | p99 ms | max ms | goal | met |", "|---|---|---|---|---|---|---|---|"]
    for name, f in result["figures_ms"].items():
        goal = ", ".join(f"{k} ≤ {v:g}" for k, v in f.get("goal_ms", {}).items()) or "-"
        met = {True: "yes", False: "**no**"}.get(f.get("pass"), "-")  # type: ignore[arg-type]
        cells = f"{f['n']} | {f['p50']:.2f} | {f['p90']:.2f} | {f['p99']:.2f} | {f['max']:.2f}"
        lines.append(f"| {name} | {cells} | {goal} | {met} |")
    return "\n".join(lines)


def stage_table(result: dict[str, Any]) -> str:
    lines = ["| request | stage (in process) | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind, by_stage in result["stages_ms_in_process"].items():
        for name, f in by_stage.items():
            lines.append(f"| {kind} | {name} | {f['p50']:.2f} | {f['p90']:.2f} | {f['p99']:.2f} |")
    return "\n".join(lines)


def hashing_table(result: dict[str, Any]) -> str:
    lines = [
        "| file | hashlib in memory p50 ms (GB/s) | read + hash, warm p50 / max ms | read + hash, cold p50 / max ms |",
        "|---|---|---|---|",
    ]
    for name, f in result["segment_hashing_ms"].items():
        m, w, c = f["hashlib_in_memory"], f["read_and_hash_warm"], f["read_and_hash_cold"]
        lines.append(
            f"| {name} | {m['p50']:.2f} ({f['hashlib_gb_per_s']:.2f}) | {w['p50']:.2f} / {w['max']:.2f} "
            f"| {c['p50']:.2f} / {c['max']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--cameras", type=int, default=100)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--segment-seconds", type=int, default=60)
    p.add_argument("--files", type=int, default=8, help="distinct copies of the clip the rows rotate over")
    p.add_argument(
        "--clip", choices=sorted(CLIPS), default="small",
        help="the segment file: 'small' (320x180, ~500 kbit/s, 3.8 MB a minute; the documented figures) or "
        "'3mbit' (640x360 noise at 3 Mbit/s, ~22.7 MB a minute, a typical camera; use its own --data-dir)",
    )  # fmt: skip
    p.add_argument("--hash-reps", type=int, default=30, help="runs per file size of the per-segment hash figures")
    p.add_argument("--requests", type=int, default=300, help="measured requests of each kind")
    p.add_argument("--warmup", type=int, default=20, help="discarded requests of each kind first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "nvr-bench-playback",
        help="catalogues (per database) and the cached clip",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the catalogues (SQLite folder, PostgreSQL database)")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="an existing database to create the bench one from")
    p.add_argument("--pg-database", default="nvr_bench")
    p.add_argument("--out", default=None, help="'{db}' becomes sqlite/postgresql (default bench/results/…, "
                   "--quick: in --data-dir)")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="a small trial that the test suite runs: 2 cameras, 2 days, 20 requests of each kind, "
                   "--db sqlite unless given, its own data dir and PostgreSQL database")  # fmt: skip
    args = p.parse_args()
    if args.quick:
        args.cameras, args.days, args.requests, args.warmup, args.hash_reps, args.files = 2, 2, 20, 3, 2, 2
        if "--db" not in sys.argv:
            args.db = "sqlite"
        if "--data-dir" not in sys.argv:
            args.data_dir = Path(tempfile.gettempdir()) / "nvr-bench-playback-quick"
        if "--pg-database" not in sys.argv:
            args.pg_database = "nvr_bench_quick"
    if args.out is None:
        args.out = str(args.data_dir / "playback-{db}.json") if args.quick else "bench/results/playback-{db}.json"
    if args.days > 30:
        raise SystemExit("--days is at most 30: the grant's footage window is the last 31 days")
    args.data_dir = args.data_dir.expanduser().absolute()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    mach = machine()
    clip = make_clip(args.data_dir, args.segment_seconds, args.clip)
    log(f"clip: {clip['bytes']:,} bytes, {clip['frames']} frames, {clip['media_duration_us'] / US:.3f} s")
    for kind in kinds:
        try:
            result = run_one(args, kind, clip)
        finally:
            if not args.keep:
                drop_catalogue(args, kind)
        result, out = write_result("playback", args.out, kind, mach, result)
        b = result["catalogue"]["build"]
        print(f"\n{kind}: {result['catalogue']['rows']:,} rows; build {b['total_seconds']} s "
              f"({'reused' if result['catalogue']['reused'] else 'built now'}); results in {out}")  # fmt: skip
        print(table(result) + "\n")
        print(stage_table(result) + "\n")
        print(hashing_table(result) + "\n", flush=True)


if __name__ == "__main__":
    main()
