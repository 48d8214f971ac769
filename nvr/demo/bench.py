"""Measure what the demo camera server costs: CPU seconds of the server process per stream-minute.

The server runs in this process; the clients (PyAV demuxers, like the recorder) run in a child process so their
CPU is not counted. Usage::

    python -m nvr.demo.bench --cameras 64 --seconds 30 --width 1280 --height 720 --bitrate 3000000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import av

from nvr.demo.pattern import default_cache_dir, encode_pattern
from nvr.demo.rtsp import DemoRtspServer


def _client_main(urls: list[str], seconds: float) -> None:
    """Child process: demux every URL in its own thread and print packets and bytes received."""
    counts = [0] * len(urls)
    sizes = [0] * len(urls)
    errors: list[str] = []

    def run(index: int, url: str) -> None:
        deadline = time.monotonic() + seconds
        try:
            with av.open(url, options={"rtsp_transport": "tcp", "timeout": "5000000"}) as container:
                stream = container.streams.video[0]
                for packet in container.demux(stream):
                    counts[index] += 1
                    sizes[index] += packet.size
                    if time.monotonic() > deadline:
                        break
        except Exception as exc:  # report and carry on: one failed client should not hide the others' figures
            errors.append(f"{url}: {exc}")

    threads = [threading.Thread(target=run, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"packets={sum(counts)} bytes={sum(sizes)} errors={len(errors)}", flush=True)
    for error in errors[:5]:
        print(error, file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--client", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is not None:
        _client_main(args.client, args.seconds)
        return

    pattern = encode_pattern(args.width, args.height, args.fps, 2, 10, args.bitrate, cache_dir=args.cache_dir)
    mounts = {f"cam{i + 1}": pattern for i in range(args.cameras)}
    with DemoRtspServer(mounts=mounts) as server:
        urls = [server.url(name) for name in mounts]
        warmup = 5.0
        child = subprocess.Popen(
            [sys.executable, "-m", "nvr.demo.bench", "--seconds", str(args.seconds + warmup + 2), "--client", *urls],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(warmup)
        streaming = server.session_count()
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(args.seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        streaming_end = server.session_count()
        out, _ = child.communicate(timeout=args.seconds + 60)
    cpu = cpu1 - cpu0
    wall = wall1 - wall0
    stream_minutes = min(streaming, streaming_end) * wall / 60
    print(f"pattern: {pattern.width}x{pattern.height}@{pattern.fps}, {pattern.bitrate / 1e6:.2f} Mbit/s measured")
    print(f"sessions streaming: {streaming} at start, {streaming_end} at end of the window")
    print(f"server CPU: {cpu:.2f} s over {wall:.1f} s wall = {100 * cpu / wall:.1f}% of one core")
    if stream_minutes:
        print(f"server CPU per stream-minute: {cpu / stream_minutes:.3f} s")
    print(f"clients: {out.strip()}")


if __name__ == "__main__":
    main()
