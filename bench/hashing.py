"""Hashing benchmark: SHA-256 of a segment while the muxer writes it, against hashing the file after it is closed.

The source is the demo pattern (``nvr.demo.pattern.encode_pattern``, default 1280x720, 25 fps, GOP 2 s, about
3 Mbit/s) looped to ``--seconds`` and stored once as an MP4 with ``ffmpeg -c copy``. Each repetition demuxes that
file with PyAV and remuxes every packet into fragmented MP4 with the recorder's options (``movflags
frag_keyframe+empty_moov+default_base_moof``, ``flush_packets=1``), in one of these ways:

* ``path``: PyAV writes to a plain path (FFmpeg's own file I/O), no hash: the baseline;
* ``fileobj``: PyAV writes to a Python ``io.FileIO`` (every write goes through a Python callback), no hash;
* ``hash-while-writing``: PyAV writes to ``integrity.hashing.HashingWriter`` (what ``storage.writer`` does);
* ``hash-after-close``: as ``path``, then ``integrity.hashing.sha256_file`` re-reads the closed file (page cache
  warm, which is the realistic case: the file was written a moment ago);
* ``hash-after-close-cold``: as ``path``, then ``sync`` and ``echo 1 > /proc/sys/vm/drop_caches`` (not timed),
  then ``sha256_file`` reads from the disk (only as root; skipped otherwise).

CPU is ``time.process_time()`` of this process (all threads, user + system), wall is ``time.perf_counter()``;
neither includes fsync (the recorder fsyncs either way). Variants are interleaved per repetition so drift in the
machine's load hits all of them alike; the median and the minimum over ``--reps`` are reported.

Usage::

    .venv/bin/python bench/hashing.py --seconds 60 --reps 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integrity.hashing import HashingWriter, sha256_file  # noqa: E402
from nvr.demo.pattern import default_cache_dir, encode_pattern  # noqa: E402

MUX_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


def make_source(work: Path, args: argparse.Namespace) -> Path:
    pattern = encode_pattern(args.width, args.height, args.fps, 2, 10, args.bitrate, default_cache_dir())
    raw = work / "source.h264"
    loops = max(1, round(args.seconds / pattern.duration))
    with open(raw, "wb") as fh:
        for _ in range(loops):
            for i in range(pattern.frame_count):
                fh.write(pattern.annexb(i))
    src = work / "source.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-r",
            str(args.fps),
            "-i",
            str(raw),
            "-c",
            "copy",
            str(src),
        ],
        check=True,
    )
    raw.unlink()
    return src


def remux(src: Path, target: str | io.RawIOBase) -> int:
    """Demux ``src`` and mux every packet into fragmented MP4 at ``target``; returns the packet count."""
    packets = 0
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        with av.open(target, "w", format="mp4", options=MUX_OPTIONS) as out:
            vout = out.add_stream_from_template(vin)
            for pkt in inp.demux(vin):
                if pkt.size == 0:
                    continue
                pkt.stream = vout
                out.mux_one(pkt)
                packets += 1
    return packets


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
        return True
    except OSError:
        return False


def variant_path(src: Path, dst: Path) -> str | None:
    remux(src, str(dst))
    return None


def variant_fileobj(src: Path, dst: Path) -> str | None:
    with open(dst, "wb", buffering=0) as fh:
        remux(src, fh)
    return None


def variant_hash_while(src: Path, dst: Path) -> str | None:
    writer = HashingWriter(dst)
    try:
        remux(src, writer)
    finally:
        writer.close()
    return writer.hexdigest()


def variant_hash_after(src: Path, dst: Path) -> str | None:
    remux(src, str(dst))
    return sha256_file(dst)


VARIANTS: dict[str, Callable[[Path, Path], str | None]] = {
    "path": variant_path,
    "fileobj": variant_fileobj,
    "hash-while-writing": variant_hash_while,
    "hash-after-close": variant_hash_after,
}


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    value = fn()
    return time.process_time() - cpu0, time.perf_counter() - wall0, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="length of the remuxed stream")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--no-cold", action="store_true", help="skip the dropped-page-cache variant")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nvr-hashing-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        src = make_source(work, args)
        size = src.stat().st_size
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        cold = not args.no_cold and os.geteuid() == 0
        if cold:
            runs["hash-after-close-cold"] = []
            runs["sha256-only-warm"] = []
            runs["sha256-only-cold"] = []
        digests: set[str] = set()
        remux(src, str(work / "warmup.mp4"))  # imports, codec tables, page cache of the source
        (work / "warmup.mp4").unlink()
        for rep in range(args.reps):
            for name, fn in VARIANTS.items():
                dst = work / f"{name}-{rep}.mp4"
                cpu, wall, digest = timed(lambda fn=fn, dst=dst: fn(src, dst))
                runs[name].append((cpu, wall))
                if digest is not None:
                    digests.add(digest)
                if name == "hash-after-close" and cold:
                    # The same file, hashed again: warm (just read) and then cold (caches dropped, not timed).
                    cpu, wall, _ = timed(lambda dst=dst: sha256_file(dst))
                    runs["sha256-only-warm"].append((cpu, wall))
                    drop_caches()
                    cpu, wall, digest = timed(lambda dst=dst: sha256_file(dst))
                    runs["sha256-only-cold"].append((cpu, wall))
                    digests.add(digest)
                dst.unlink()
            if cold:
                dst = work / f"cold-{rep}.mp4"
                cpu_r, wall_r, _ = timed(lambda dst=dst: remux(src, str(dst)))
                drop_caches()
                cpu_h, wall_h, digest = timed(lambda dst=dst: sha256_file(dst))
                runs["hash-after-close-cold"].append((cpu_r + cpu_h, wall_r + wall_h))
                digests.add(digest)
                dst.unlink()
        out_size = size

    def summary(values: list[tuple[float, float]]) -> dict[str, float]:
        cpus = [v[0] for v in values]
        walls = [v[1] for v in values]
        return {
            "cpu_median": round(statistics.median(cpus), 4),
            "cpu_min": round(min(cpus), 4),
            "wall_median": round(statistics.median(walls), 4),
            "wall_min": round(min(walls), 4),
            "cpu_all": [round(c, 4) for c in cpus],
        }

    results = {name: summary(v) for name, v in runs.items() if v}
    report = {
        "command": " ".join([".venv/bin/python", "bench/hashing.py", *(sys.argv[1:] if argv is None else argv)]),
        "source_bytes": out_size,
        "source_seconds": args.seconds,
        "reps": args.reps,
        "digests_agree": len(digests) == 1,
        "results": results,
        "pyav": av.__version__,
    }
    base = results["path"]["cpu_median"]
    print(
        f"source: {out_size / 1e6:.1f} MB, {args.seconds:.0f} s; {args.reps} repetitions; "
        f"digests agree: {len(digests) == 1}"
    )
    print("| variant | CPU s (median / min) | wall s (median / min) | CPU over `path` |")
    print("|---|---|---|---|")
    for name, r in results.items():
        extra = "" if name.startswith("sha256-only") else f"{r['cpu_median'] - base:+.3f} s"
        print(
            f"| {name} | {r['cpu_median']:.3f} / {r['cpu_min']:.3f} | {r['wall_median']:.3f} / {r['wall_min']:.3f} "
            f"| {extra} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
