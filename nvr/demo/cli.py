"""``nvr demo``: run simulated cameras until interrupted, printing the URLs to record from.

Kept free of the main CLI framework so the lead can wire it into ``nvr`` as a subcommand (call :func:`serve` or
:func:`main`) while ``python -m nvr.demo`` works on its own.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from nvr.demo.pattern import default_cache_dir, encode_pattern
from nvr.demo.rtsp import DemoRtspServer

log = logging.getLogger(__name__)


def serve(
    cameras: int = 4,
    host: str = "127.0.0.1",
    port: int = 8554,
    width: int = 1280,
    height: int = 720,
    fps: int = 25,
    bitrate: int = 3_000_000,
    gop_seconds: float = 2,
    seconds: float = 10,
    username: str | None = None,
    password: str | None = None,
    cache_dir: Path | None = None,
    prefix: str = "cam",
    stop: threading.Event | None = None,
) -> None:
    """Serve ``cameras`` mounts (``<prefix>1`` ...) sharing one pattern; blocks until ``stop`` or a signal."""
    if cameras < 1:
        raise ValueError("at least one camera")
    pattern = encode_pattern(width, height, fps, gop_seconds, seconds, bitrate, cache_dir or default_cache_dir())
    mounts = {f"{prefix}{i + 1}": pattern for i in range(cameras)}
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        with DemoRtspServer(host, port, mounts, username=username, password=password) as server:
            print(
                f"demo cameras: {cameras} x {width}x{height}@{fps} "
                f"({pattern.bitrate / 1e6:.2f} Mbit/s, GOP {pattern.gop} frames) on {host}:{server.port}",
                flush=True,
            )
            if username is not None:
                print(f"  credentials required (user {username!r}; Digest or Basic)", flush=True)
            for name in mounts:
                # Without the password: terminal scrollback and logs are not a place for credentials.
                print(f"  {server.url(name, with_credentials=False)}", flush=True)
            stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nvr demo", description="Serve simulated RTSP cameras.")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000, help="bits per second")
    parser.add_argument("--gop-seconds", type=float, default=2)
    parser.add_argument("--loop-seconds", type=float, default=10)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--prefix", default="cam", help="mount names are <prefix>1..<prefix>N")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(
        cameras=args.cameras,
        host=args.host,
        port=args.port,
        width=args.width,
        height=args.height,
        fps=args.fps,
        bitrate=args.bitrate,
        gop_seconds=args.gop_seconds,
        seconds=args.loop_seconds,
        username=args.username,
        password=args.password,
        cache_dir=args.cache_dir,
        prefix=args.prefix,
    )
    return 0
