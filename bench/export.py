"""Export benchmark: one hour of one 3 Mbit/s camera made into a signed bundle through the real export job, and
``nvr verify`` re-hashing the same archive, each against ``openssl dgst -sha256`` over the same segment files in the
same run (the hashing limit of the machine).

Archive (made once and cached in ``--work``, default /var/tmp/nvr-bench-export):

* One 60 s clip, 640x360, 25 fps, H.264 (libx264 through PyAV, ``ultrafast``, a keyframe every second, no
  B-frames, VBV-capped at ``--kbps`` 3000), of changing noise so the encoder spends the whole budget: ~22.5 MB, in
  the recorder's fragmented-MP4 layout (``storage.writer.MOVFLAGS``).
* ``--minutes`` (60) segment files made from it, each with its own movie-header creation time (4 bytes in ``mvhd``,
  nothing that matters for decoding), so every file has its own SHA-256: ~1.35 GB in all.
* A fresh catalogue per run (SQLite in the work folder, or the PostgreSQL database ``--pg-database``): one camera,
  the files hard-linked into the default volume in the recorder's layout and registered one by one with
  ``storage.catalog.register_segment`` (real sizes, hashes and chain links), touching, ending two hours ago.

Measurement, page cache warm (everything is read once before the first timed run), ``--reps`` times each, medians:

* ``openssl``: ``openssl dgst -sha256`` over the 60 files, one process.
* ``export job``: an approved export request for the whole hour and a running job inserted in the database, then
  ``api.export_jobs.ExportRunner(...).run_job(job_id)``: the request re-check, pins, signing key, checkpoint
  choice (a new checkpoint is signed on the first run), bridge rows, re-hashing every original while it is copied
  (fail closed), the convenience remux, manifest, signature, fsync and rename. GB/s = originals' bytes / wall time.
  Each bundle is deleted after its run.
* ``write_bundle``: the same bundle input written by ``storage.bundle.write_bundle`` alone, in four variants: with
  the convenience MP4 or originals only (the remux replaced by nothing), each with and without the whole-bundle
  SHA-256 (``bundle_hash``); with the seconds of each phase from its ``timings`` hook (``check``, ``originals``
  copied, ``remux_wait`` for the remux still running after that, ``convenience_copy``, ``finish``: manifest,
  signature, last fsync, rename). ``remux_alone``: ``storage.remux.convenience_mp4`` by itself (wall and CPU).
* ``verify``: ``integrity.verify_archive.verify_archive`` over the catalogue (re-hash of every file, chains,
  unknown files, checkpoints, audit chain).
* ``disk_write``: the originals' bytes written to one new file and fsynced: what the disk allows any durable bundle.
  Every bundle and the disk write start after ``sync``, with no dirty pages left from the run before.

Usage (from the repository root, nothing else running)::

    .venv/bin/python bench/export.py --reps 3
    .venv/bin/python bench/export.py --db postgresql --reps 3
    .venv/bin/python bench/export.py --minutes 5 --reps 1          # a quick trial
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench/catalogue.py
sys.path.insert(0, str(ROOT))

from catalogue import log, machine, pg_admin, pg_url, postgres_version, settings_for, write_result  # noqa: E402

US = 1_000_000
CAMERA = "bench-export"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
GOAL_RATIO = 0.8
W, H, FPS = 640, 360, 25


# --- the archive -----------------------------------------------------------------------------------------------------
def encode_clip(path: Path, seconds: int, kbps: int) -> None:
    """One segment's worth of noise video in the recorder's fMP4 layout (what /tmp/h4/mkbig.py did)."""
    import av

    from storage.writer import MOVFLAGS

    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.bit_rate = kbps * 1000
        st.codec_context.options = {
            "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0:vbv-maxrate={kbps}:vbv-bufsize={kbps}:bframes=0",
            "preset": "ultrafast",
        }
        st.codec_context.time_base = Fraction(1, FPS)
        noise = os.urandom(W * H * 2)
        for i in range(seconds * FPS):
            f = av.VideoFrame(W, H, "yuv420p")
            for k, p in enumerate(f.planes):
                off = (i * 7919 + k * 1000) % (len(noise) - p.buffer_size)
                p.update(noise[off : off + p.buffer_size])
            f.pts = i
            for pkt in st.encode(f):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    tmp.rename(path)


def variant(clip: bytes, i: int) -> bytes:
    """The clip with its movie header's creation time set to ``i``: same media, its own SHA-256."""
    at = clip.find(b"mvhd", 0, 65536)
    if at < 0:
        raise SystemExit("no mvhd box in the clip")
    version = clip[at + 4]
    size = 8 if version == 1 else 4
    return clip[: at + 8] + i.to_bytes(size, "big") + clip[at + 8 + size :]


def segment_files(work: Path, minutes: int, kbps: int) -> list[Path]:
    files = work / "files"
    files.mkdir(parents=True, exist_ok=True)
    clip_path = work / f"clip-{kbps}k.mp4"
    if not clip_path.exists():
        log(f"encoding the 60 s clip ({W}x{H} {FPS} fps, {kbps} kbit/s)")
        encode_clip(clip_path, 60, kbps)
    clip = clip_path.read_bytes()
    out = []
    for i in range(minutes):
        p = files / f"{kbps}k-{i:04d}.mp4"
        if not p.exists():
            tmp = p.with_name(p.name + ".partial")
            tmp.write_bytes(variant(clip, i + 1))
            tmp.rename(p)
        out.append(p)
    return out


def build(args: argparse.Namespace, kind: str, files: list[Path]) -> tuple[Any, dict[str, Any]]:
    """A fresh catalogue of one camera whose segments are ``files`` (hard links); returns (runtime, facts)."""
    import hashlib

    from sqlalchemy import select

    from nvr import registry
    from nvr.models import User, Volume
    from nvr.runtime import Runtime
    from storage import catalog, layout

    data = args.work / kind
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    if kind == "postgresql":
        pg_admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
        pg_admin(args.pg_admin_url, f'CREATE DATABASE "{args.pg_database}"')
        url = pg_url(args.pg_admin_url, args.pg_database)
    else:
        url = f"sqlite:///{data / 'nvr.db'}"
    rt = Runtime.open(settings_for(data, url))
    rt.init_default_volume()
    now = rt.clock.now_us()
    seg_us = 60 * US
    first_us = now - now % seg_us - 2 * 3600 * US - len(files) * seg_us
    t = time.perf_counter()
    with rt.db.session() as s:
        registry.add(
            s,
            CAMERA,
            registry.CameraFields(
                name="Bench export",
                stream_url="rtsp://127.0.0.1/bench",
                managing_unit="Bench",
                share_class="authorized",
            ),
            actor="bench",
            now_us=now,
        )
        s.add(
            User(
                username="bench-officer", full_name="Bench Officer", staff_number="B-1", unit="Bench",
                roles="officer", state="active", password_hash="!", created_us=now, updated_us=now,
            )
        )  # fmt: skip
        vol = s.scalars(select(Volume)).one()
        total = 0
        for i, src in enumerate(files):
            start = first_us + i * seg_us
            rel = str(layout.stem_for(CAMERA, start)) + ".mp4"
            dst = Path(vol.path) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
            body = src.read_bytes()
            total += len(body)
            catalog.register_segment(
                s,
                camera_id=CAMERA,
                volume_id=vol.id,
                rel_path=rel,
                start_us=start,
                media_duration_us=seg_us,
                size=len(body),
                frames=60 * FPS,
                codecs="h264",
                clock_offset_us=0,
                sha256=hashlib.sha256(body).hexdigest(),
                recovered=False,
                now_us=now,
                floor_days=rt.settings.retention_floor_days,
            )
    log(f"{kind}: catalogue of {len(files)} segments ({total / 1e9:.3f} GB) in {time.perf_counter() - t:.1f} s")
    return rt, {"segments": len(files), "bytes": total, "first_us": first_us, "end_us": first_us + len(files) * seg_us}


# --- measurements ----------------------------------------------------------------------------------------------------
def warm(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 << 20):
                pass


def time_openssl(files: list[Path]) -> float:
    t = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def export_job(rt: Any, facts: dict[str, Any], n: int) -> tuple[float, dict[str, Any]]:
    """One approved request + running job, run through ExportRunner.run_job; returns (seconds, job facts)."""
    from sqlalchemy import select

    from api.context import Services
    from api.export_jobs import ExportRunner
    from nvr.models import ExportJob, ExportRequest, User

    now = rt.clock.now_us()
    with rt.db.session() as s:
        uid = s.scalar(select(User.id).where(User.username == "bench-officer"))
        r = ExportRequest(
            requester_id=uid, cameras=CAMERA, window_start_us=facts["first_us"], window_end_us=facts["end_us"],
            purpose="benchmark", case_ref=f"BENCH-{n}", legal_basis="benchmark", recipient="bench",
            destination="bench", route="approval", grant_id=None, state="approved", cosigner_id=None,
            decided_us=now, approved_until_us=now + 3600 * US, created_us=now, updated_us=now,
        )  # fmt: skip
        s.add(r)
        s.flush()
        job = ExportJob(request_id=r.id, state="running", started_by=uid, created_us=now, started_us=now,
                        heartbeat_us=now)  # fmt: skip
        s.add(job)
        s.flush()
        job_id = job.id
    runner = ExportRunner(Services(rt.settings, rt.db, rt.clock))
    rt.settings.exports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    t = time.perf_counter()
    runner.run_job(job_id)
    seconds = time.perf_counter() - t
    with rt.db.session() as s:
        job = s.get(ExportJob, job_id)
        assert job is not None
        if job.state != "done":
            raise SystemExit(f"export job {job_id} ended {job.state}: {job.error_code}: {job.error_message}")
        out = {"bundle_bytes": job.bundle_bytes, "bundle_name": job.bundle_name, "bundle_sha256": job.bundle_sha256}
    return seconds, out


def bundle_input(rt: Any, facts: dict[str, Any]) -> tuple[Any, Any]:
    """The BundleInput the job builds (api.export_jobs.bundle_input), for timing write_bundle alone."""
    from api import export_jobs as ej
    from integrity import checkpoints, keys
    from nvr.models import Checkpoint

    with rt.db.session() as s:
        signer = keys.active_signer(s, rt.settings.keys_dir)
        rows = ej.rows_in(s, CAMERA, facts["first_us"], facts["end_us"])
        trusted = keys.trusted_keys(s, rt.settings)
        cp = checkpoints.covering(s, CAMERA, int(rows[-1]["seq"]), trusted)
        assert isinstance(cp, Checkpoint)
        window = (facts["first_us"], facts["end_us"])
        inp = ej.bundle_input(
            s,
            {"purpose": "benchmark"},
            {CAMERA: rows},
            {CAMERA: cp},
            ej.database_id_of(s),
            window,
            rt.clock.now_us(),
            trusted,
        )
    return inp, signer


def time_write_bundle(
    rt: Any, inp: Any, signer: Any, n: int, convenience: bool, bundle_hash: bool = True
) -> tuple[float, dict[str, float]]:
    from unittest import mock

    from storage import bundle

    dest = rt.settings.exports_dir / f"bench-{n}-{'full' if convenience else 'originals'}.zip"
    work = rt.settings.exports_dir / f"bench-work-{n}"
    phases: dict[str, float] = {}
    patch = mock.patch.object(bundle, "_convenience", lambda *_args: {}) if not convenience else None
    try:
        if patch is not None:
            patch.start()
        t = time.perf_counter()
        bundle.write_bundle(dest, inp, signer, work_dir=work, bundle_hash=bundle_hash, timings=phases)
        seconds = time.perf_counter() - t
    finally:
        if patch is not None:
            patch.stop()
        dest.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return seconds, {k: round(v, 3) for k, v in phases.items()}


def time_remux(rt: Any, inp: Any) -> tuple[float, float, int]:
    """convenience_mp4 alone: (wall s, CPU s of the process, bytes)."""
    from storage import remux
    from storage.reader import SegmentRef

    cam = inp.cameras[0]
    refs = [
        SegmentRef(s.path, int(s.row["seq"]), int(s.row["start_us"]), int(s.row["end_us"]), int(s.row["bytes"]))
        for s in cam.segments
    ]
    out = rt.settings.exports_dir / "bench-remux"
    shutil.rmtree(out, ignore_errors=True)
    c0, t = time.process_time(), time.perf_counter()
    files = remux.convenience_mp4(refs, inp.window_start_us, inp.window_end_us, out, CAMERA)
    wall, cpu = time.perf_counter() - t, time.process_time() - c0
    size = sum(f.bytes for f in files)
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu, size


def time_verify(rt: Any) -> tuple[float, dict[str, Any]]:
    from integrity.verify_archive import verify_archive

    t = time.perf_counter()
    report = verify_archive(rt.db, rt.settings)
    seconds = time.perf_counter() - t
    if not report.ok:
        raise SystemExit(f"verify found problems: {[p.line() for p in report.problems]}")
    return seconds, {"segments": report.segments, "bytes": report.bytes}


def time_disk_write(rt: Any, files: list[Path]) -> float:
    """The originals' bytes (from the page cache) written to one new file in the exports folder and fsynced: what
    the disk allows a bundle of the originals, whatever the CPU does."""
    dest = rt.settings.exports_dir / "bench-disk-write"
    buf = memoryview(bytearray(1 << 20))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t = time.perf_counter()
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    os.write(fd, buf[:n])
        os.fsync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)
        dest.unlink()


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


VARIANTS = {  # write_bundle alone: (convenience MP4, whole-bundle SHA-256)
    "write_bundle_full": (True, True),
    "write_bundle_full_no_bundle_hash": (True, False),
    "write_bundle_originals_only": (False, True),
    "write_bundle_originals_only_no_bundle_hash": (False, False),
}


def run_one(args: argparse.Namespace, kind: str, files: list[Path]) -> dict[str, Any]:
    rt, facts = build(args, kind, files)
    gb = facts["bytes"] / 1e9
    ssl: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in ("export_job", *VARIANTS, "verify", "disk_write")}
    phases: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    remux_t: list[tuple[float, float, int]] = []
    job_facts: dict[str, Any] = {}
    vf: dict[str, Any] = {}
    try:
        warm(files)
        time_openssl(files)  # untimed warm-up of the binary and the cache
        inp = signer = None
        for rep in range(args.reps):
            # the reference next to each measurement, so drifting load affects both alike
            ssl.append(time_openssl(files))
            os.sync()
            s, job_facts = export_job(rt, facts, rep)
            times["export_job"].append(s)
            (rt.settings.exports_dir / str(job_facts["bundle_name"])).unlink()
            log(f"{kind} rep {rep + 1}: openssl {ssl[-1]:.3f} s, export job {s:.3f} s")
            if inp is None:
                inp, signer = bundle_input(rt, facts)
            ssl.append(time_openssl(files))
            for name, (convenience, bundle_hash) in VARIANTS.items():
                os.sync()  # each starts with no dirty pages of the one before
                s, ph = time_write_bundle(rt, inp, signer, rep, convenience, bundle_hash)
                times[name].append(s)
                phases[name].append(ph)
                log(f"{kind} rep {rep + 1}: {name} {s:.3f} s {ph}")
            ssl.append(time_openssl(files))
            s, vf = time_verify(rt)
            times["verify"].append(s)
            log(f"{kind} rep {rep + 1}: openssl {ssl[-1]:.3f} s, verify {s:.3f} s")
            os.sync()
            remux_t.append(time_remux(rt, inp))
            log(f"{kind} rep {rep + 1}: remux alone {remux_t[-1][0]:.3f} s wall, {remux_t[-1][1]:.3f} s CPU")
            os.sync()
            times["disk_write"].append(time_disk_write(rt, files))
            log(f"{kind} rep {rep + 1}: disk write + fsync of the originals' bytes {times['disk_write'][-1]:.3f} s")
    finally:
        rt.db.dispose()
        if not args.keep:
            shutil.rmtree(args.work / kind, ignore_errors=True)
            if kind == "postgresql":
                pg_admin(args.pg_admin_url, f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
    ssl_s = med(ssl)
    ssl_gbs = gb / ssl_s

    def fig(seconds: list[float]) -> dict[str, Any]:
        m = med(seconds)
        return {
            "seconds": [round(x, 3) for x in seconds],
            "median_seconds": m,
            "gb_per_second": round(gb / m, 3),
            "ratio_to_openssl": round(gb / m / ssl_gbs, 3),
        }

    def phase_median(ph: list[dict[str, float]]) -> dict[str, float]:
        keys = sorted({k for p in ph for k in p})
        return {k: med([p[k] for p in ph if k in p]) for k in keys}

    archive = {**facts, "gb": round(gb, 3), "minutes": len(files), "kbps": args.kbps, "resolution": f"{W}x{H}"}
    result: dict[str, Any] = {
        "db": kind,
        "database": postgres_version(args.pg_admin_url) if kind == "postgresql" else "SQLite",
        "archive": {**archive, "fps": FPS},
        "openssl": {"seconds": [round(x, 3) for x in ssl], "median_seconds": ssl_s, "gb_per_second": round(ssl_gbs, 3)},
        "export_job": {**fig(times["export_job"]), **job_facts},
    }
    for name in VARIANTS:
        result[name] = {**fig(times[name]), "phases": phase_median(phases[name]), "phases_each": phases[name]}
    result["remux_alone"] = {
        "wall_seconds": [round(r[0], 3) for r in remux_t],
        "cpu_seconds": [round(r[1], 3) for r in remux_t],
        "bytes": remux_t[-1][2] if remux_t else None,
    }
    result["verify"] = {**fig(times["verify"]), **vf}
    result["disk_write"] = fig(times["disk_write"])
    result["goals"] = {
        "export_ratio": {"goal": GOAL_RATIO, "met": result["export_job"]["ratio_to_openssl"] >= GOAL_RATIO},
        "verify_ratio": {"goal": GOAL_RATIO, "met": result["verify"]["ratio_to_openssl"] >= GOAL_RATIO},
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="sqlite")
    p.add_argument("--minutes", type=int, default=60, help="60 s segments in the hour")
    p.add_argument("--kbps", type=int, default=3000, help="video bit rate")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/var/tmp/nvr-bench-export"), help="cache of the segment files")
    p.add_argument("--keep", action="store_true", help="keep the catalogue (SQLite folder, PostgreSQL database)")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="an existing database to create the bench one from")
    p.add_argument("--pg-database", default="nvr_bench_export")
    p.add_argument("--out", default="bench/results/export-{db}.json", help="'{db}' becomes sqlite/postgresql")
    args = p.parse_args()
    args.work = args.work.expanduser().absolute()
    mach = machine()
    mach["openssl"] = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    files = segment_files(args.work, args.minutes, args.kbps)
    for kind in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        result, out = write_result("export", args.out, kind, mach, run_one(args, kind, files))
        lines = [f"{kind}: {result['archive']['gb']} GB; openssl {result['openssl']['gb_per_second']} GB/s"]
        for name in ("export_job", *VARIANTS, "verify", "disk_write"):
            r = result[name]
            lines.append(f"  {name}: {r['median_seconds']} s, {r['gb_per_second']} GB/s, {r['ratio_to_openssl']}x")
        print("\n" + "\n".join(lines) + f"\nresults in {out}\n", flush=True)


if __name__ == "__main__":
    main()
