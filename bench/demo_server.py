"""Demo RTSP cameras in their own process, with per-mount counts of frames sent, for the ingest benchmark.

Runs :class:`nvr.demo.DemoRtspServer` with N mounts (``cam1`` ... ``camN``) sharing one pre-encoded pattern, so its
CPU is not charged to the recorder being measured. It talks over stdin/stdout, one line each way:

* on start it prints ``{"port": P, "mounts": [...], "pattern": {...}}``;
* ``stats`` prints ``{"mounts": {name: {"sent": frames, "sessions": n, "playing": n}}, ...}``;
* ``quit`` or end of input prints the final stats and exits.

``sent`` counts every video frame written to any session of the mount since the server started, including sessions
that have since closed (``DemoRtspServer.frames_sent`` only counts open ones, and a recorder that has stopped has
closed its session). To get that, this launcher keeps a reference to every ``_Session`` the server creates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nvr.demo import rtsp
from nvr.demo.pattern import default_cache_dir, encode_pattern

_SESSIONS: list[rtsp._Session] = []
_original_init = rtsp._Session.__init__


def _tracking_init(self: rtsp._Session, *args: object, **kwargs: object) -> None:
    _original_init(self, *args, **kwargs)  # type: ignore[arg-type]
    _SESSIONS.append(self)


rtsp._Session.__init__ = _tracking_init  # type: ignore[method-assign]


def _stats(server: rtsp.DemoRtspServer) -> dict[str, object]:
    def collect() -> dict[str, object]:
        mounts: dict[str, dict[str, int]] = {m: {"sent": 0, "sessions": 0, "playing": 0} for m in server.mounts}
        for session in _SESSIONS:
            entry = mounts[session.mount.name]
            entry["sent"] += session.frame_index
            if session.frame_index or session.playing:
                entry["sessions"] += 1
            if session.playing:
                entry["playing"] += 1
        return {"mounts": mounts, "dropped_slow_clients": server.dropped_slow_clients, "time": time.time()}

    return server._call(collect) if server.running else {"mounts": {}, "time": time.time()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--gop-seconds", type=float, default=2)
    parser.add_argument("--loop-seconds", type=float, default=10)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = parser.parse_args(argv)

    pattern = encode_pattern(
        args.width, args.height, args.fps, args.gop_seconds, args.loop_seconds, args.bitrate, args.cache_dir
    )
    mounts = {f"cam{i + 1}": pattern for i in range(args.cameras)}
    with rtsp.DemoRtspServer(args.host, args.port, mounts) as server:
        hello = {
            "port": server.port,
            "mounts": server.mounts,
            "pattern": {
                "width": pattern.width,
                "height": pattern.height,
                "fps": pattern.fps,
                "gop": pattern.gop,
                "bitrate": round(pattern.bitrate),
            },
        }
        print(json.dumps(hello), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                print(json.dumps(_stats(server)), flush=True)
            elif command == "quit":
                break
        print(json.dumps(_stats(server)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
