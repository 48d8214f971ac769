"""How PyAV's ``av.open(..., timeout=...)`` read timeout costs N RTSP demuxer threads in one process.

``nvr/recorder/worker.py`` opens each camera with ``timeout=(t, t)``. PyAV implements the read timeout as an
FFmpeg interrupt callback that takes the GIL (``with cython.gil: time.monotonic()``) every time FFmpeg checks for
interruption, which its network code does on every read. With many threads that turns the GIL into a convoy.
This script demuxes N demo cameras (``bench/demo_server.py``, separate process) in N threads of one process, as the
recorder does but without muxing, in three modes:

* ``none``: no PyAV timeout (FFmpeg's own ``timeout`` socket option only, as in all modes);
* ``open-only``: ``timeout=(t, None)``: PyAV timeout while opening only;
* ``open-and-read``: ``timeout=(t, t)``: what the recorder does today.

It prints CPU-s per stream-minute of this process and the frames per second each camera was read at (25 = keeping
up with real time). Usage::

    .venv/bin/python bench/demux_timeout.py --cameras 64 --seconds 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import DemoServer

MODES = {"none": None, "open-only": (10.0, None), "open-and-read": (10.0, 10.0)}


def child(mode: str, urls: list[str], seconds: float, warmup: float) -> None:
    counts = [0] * len(urls)
    stop = threading.Event()
    kwargs = {} if MODES[mode] is None else {"timeout": MODES[mode]}

    def run(index: int, url: str) -> None:
        with av.open(url, options={"rtsp_transport": "tcp", "timeout": "10000000"}, **kwargs) as container:
            for _ in container.demux(container.streams.video[0]):
                counts[index] += 1
                if stop.is_set():
                    break

    threads = [threading.Thread(target=run, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    cpu0, wall0, frames0 = time.process_time(), time.monotonic(), sum(counts)
    time.sleep(seconds)
    cpu1, wall1, frames1 = time.process_time(), time.monotonic(), sum(counts)
    stop.set()
    n, wall = len(urls), wall1 - wall0
    print(
        f"| {mode} | {n} | {(cpu1 - cpu0) / (n * wall / 60):.3f} | {100 * (cpu1 - cpu0) / wall:.0f} "
        f"| {(frames1 - frames0) / n / wall:.1f} |",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=4)
    parser.add_argument("--modes", default="none,open-only,open-and-read")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--gop-seconds", type=float, default=2)
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child[0], args.child[1:], args.seconds, args.warmup)
        return 0
    with tempfile.TemporaryDirectory(prefix="nvr-demux-") as tmp:
        server = DemoServer(args.cameras, args, Path(tmp))
        try:
            urls = [server.url(m) for m in server.mounts]
            print("| PyAV timeout | cameras | CPU-s / stream-min | CPU % of a core | fps read per camera |")
            print("|---|---|---|---|---|")
            for mode in args.modes.split(","):
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--seconds",
                        str(args.seconds),
                        "--warmup",
                        str(args.warmup),
                        "--child",
                        mode,
                        *urls,
                    ],
                    check=True,
                )
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
