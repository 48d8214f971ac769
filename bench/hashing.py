"""Hash while writing, or hash after close? Measures both ways of producing a SHA-256 for one segment.

The recorder writes fragmented MP4 strictly sequentially, so it can hash every byte on its way to the file
(``integrity.hashing.HashingWriter``, a Python file object PyAV writes through). The alternative is to let FFmpeg
write the file itself and read it back to hash it after close (warm page cache, and cold after dropping caches).

    .venv/bin/python bench/hashing.py [--seconds 60] [--repeat 5]

Prints CPU seconds (process time) and wall seconds per segment, median of the repetitions, for a 720p25
~3 Mbit/s H.264 stream remuxed into one segment of ``--seconds`` media seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

from integrity.hashing import HashingWriter, sha256_file
from nvr.demo.pattern import encode_pattern
from storage.writer import MOVFLAGS

FRAG = {"movflags": MOVFLAGS, "flush_packets": "1"}


def make_source(path: Path, seconds: int) -> None:
    """A plain MP4 of ``seconds`` of the demo pattern (looped, no re-encoding) to remux from."""
    pattern = encode_pattern(width=1280, height=720, fps=25, gop_seconds=2, seconds=10, bitrate=3_000_000)
    tb = Fraction(1, 90000)
    step = 90000 // pattern.fps
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("h264", rate=pattern.fps)
        st.width, st.height = pattern.width, pattern.height
        st.time_base = tb
        st.codec_context.extradata = b"\x00\x00\x00\x01" + pattern.sps + b"\x00\x00\x00\x01" + pattern.pps
        for i in range(seconds * pattern.fps):
            k = i % pattern.frame_count
            pkt = av.Packet(pattern.annexb(k))
            pkt.pts = pkt.dts = i * step
            pkt.duration = step
            pkt.time_base = tb
            pkt.is_keyframe = pattern.keyframes[k]
            pkt.stream = st
            out.mux(pkt)


def remux(src: Path, dst: object) -> None:
    with av.open(str(src)) as inp, av.open(dst, "w", format="mp4", options=FRAG) as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        for pkt in inp.demux(ist):
            if pkt.dts is None:
                continue
            pkt.stream = ost
            out.mux_one(pkt)


def while_writing(src: Path, work: Path) -> tuple[float, float, str]:
    dst = work / "a.mp4"
    dst.unlink(missing_ok=True)
    c0, w0 = time.process_time(), time.perf_counter()
    w = HashingWriter(dst)
    remux(src, w)
    w.fsync()
    w.close()
    digest = w.hexdigest()
    return time.process_time() - c0, time.perf_counter() - w0, digest


def after_close(src: Path, work: Path, cold: bool) -> tuple[float, float, str]:
    dst = work / "b.mp4"
    dst.unlink(missing_ok=True)
    c0, w0 = time.process_time(), time.perf_counter()
    remux(src, str(dst))
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())
    if cold:
        c1, w1 = time.process_time(), time.perf_counter()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")  # needs root; excluded from the figures below
        c0 += time.process_time() - c1
        w0 += time.perf_counter() - w1
    digest = sha256_file(dst)
    return time.process_time() - c0, time.perf_counter() - w0, digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "source.mp4"
        make_source(src, args.seconds)
        results: dict[str, list[tuple[float, float]]] = {
            "while writing": [],
            "after close (warm)": [],
            "after close (cold)": [],
        }
        for _ in range(args.repeat):
            a = while_writing(src, work)
            b = after_close(src, work, cold=False)
            assert a[2] == b[2], "both ways must give the same hash of the same bytes"
            results["while writing"].append(a[:2])
            results["after close (warm)"].append(b[:2])
            with contextlib.suppress(PermissionError):
                results["after close (cold)"].append(after_close(src, work, cold=True)[:2])
        size = (work / "a.mp4").stat().st_size
        print(f"segment: {args.seconds} s of 720p25 H.264, {size / 1e6:.1f} MB; median of {args.repeat}\n")
        print("| method | CPU s | wall s |\n|---|---|---|")
        for name, rows in results.items():
            if rows:
                print(
                    f"| {name} | {statistics.median(r[0] for r in rows):.3f} | "
                    f"{statistics.median(r[1] for r in rows):.3f} |"
                )


if __name__ == "__main__":
    main()
