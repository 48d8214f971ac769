"""Live-view benchmark: frame-arrival-to-delivery latency with 1 and 16 viewers on one camera while N cameras record,
the recorder's CPU with and without viewers, and whether any recorded frame was lost.

Processes (the machine has few cores; each is measured on its own):

* the demo RTSP cameras (``bench/demo_server.py``, as bench/ingest.py runs them; its CPU is not counted);
* the **server**: this script with ``--serve``, i.e. what ``nvr serve`` runs (runtime, supervisor with one worker
  per camera, the API under uvicorn in the same process, so live view comes from the recorder's own connections),
  on SQLite in a fresh data folder, N cameras registered and activated, and two users (an approver, an officer);
* the **viewers**: threads of this (parent) process, each an HTTP client reading
  ``GET /api/v1/cameras/bench-1/live`` with the officer's token, as ffplay or a browser would.

Phases, one after the other, each ``--seconds`` long after ``--warmup``: no viewers, then each count of
``--viewers`` (default 1 and 16) on camera ``bench-1``. Per phase: the server process's CPU (utime + stime from
/proc) and the recorder's share of it (the worker threads, /proc/<pid>/task/<tid>/stat; the API's sending is the
rest), as % of one core.

Latency: the worker stamps every packet with the monotonic clock when demux hands it over; the live feed keeps, per
fragment (``mfhd`` sequence number), the arrival of its oldest frame (``LiveFeed.arrival_of``). A viewer stamps
each fragment when its ``mdat`` has fully arrived. Both are CLOCK_MONOTONIC, one clock for every process of the
machine, so delivery minus arrival is the latency across the recorder, the feed's muxer, the viewer's queue, the
API and the socket. Reported per phase over every viewer's fragments: p50, p95, p99, max (ms).

Losses: as bench/ingest.py: frames the demo server sent per camera against frames in the segment rows after the
server stopped (a few per camera are in flight at the stop), plus ``holes`` (fewer frames in a segment than its
media duration implies) and gap rows after a camera's first segment. ``frames_missing_before_stop`` counts, per
camera, frames the server had sent when the stop began that are not in the archive: with ``holes`` and ``gaps`` it
must be 0 (the run exits 1 otherwise), which is "no recorded frame lost".

Usage::

    .venv/bin/python bench/live.py --cameras 64 --seconds 60 --viewers 1,16
    .venv/bin/python bench/live.py --quick          # 4 small cameras, a few seconds; asserts its own result
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

from ingest import CLK_TCK, DemoServer, cpu_seconds, losses, machine, mark_dropped, wait_all_playing  # noqa: E402

PYTHON = sys.executable
NVR = str(Path(sys.executable).with_name("nvr"))
CAMERA = "bench-1"


# --- the server process -----------------------------------------------------------------------------------------
def thread_cpu(pid: int, tids: list[int]) -> float:
    total = 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def serve_main(data_dir: str, demo_port: int, cameras: int) -> int:
    """Child: what ``nvr serve`` runs, plus a line protocol on stdin (``arrivals``, ``recorder_cpu``, ``quit``)."""
    import uvicorn
    from sqlalchemy import func, select

    from api import people
    from api.app import create_app
    from api.context import Services
    from api.roles import validate_roles
    from nvr import registry
    from nvr.models import Gap, Segment, User
    from nvr.recorder.supervisor import Supervisor
    from nvr.runtime import Runtime, setup_logging
    from tests.support.api_server import free_port

    os.environ["NVR_DATA_DIR"] = data_dir
    rt = Runtime.open()
    setup_logging(rt.settings.log_level)
    rt.init_default_volume()
    now = rt.clock.now_us()
    tokens: dict[str, str] = {}
    with rt.db.session() as s:
        for i in range(1, cameras + 1):
            fields = registry.CameraFields(
                name=f"Bench camera {i}", stream_url=f"rtsp://127.0.0.1:{demo_port}/cam{i}", managing_unit="Bench"
            )
            registry.add(s, f"bench-{i}", fields, actor="bench", now_us=now)
            registry.transition(s, f"bench-{i}", "active", actor="bench", now_us=now)
        for name, roles in (("boss", ["approver"]), ("olga", ["officer"])):
            u = User(
                username=name,
                full_name=name.title(),
                staff_number=f"B-{name}",
                unit="Bench",
                roles=validate_roles(roles),
                state="active",
                password_hash="!",
                auth_source="local",
                created_us=now,
                updated_us=now,
            )
            s.add(u)
            s.flush()
            _, tokens[name] = people.issue_token(s, u, "session", None, now_us=now, expires_us=now + 86_400_000_000)
    sup = Supervisor(rt.recorder_context())
    sup.start()
    port = free_port()
    app = create_app(Services(rt.settings, rt.db, rt.clock))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    print(json.dumps({"url": f"http://127.0.0.1:{port}", "tokens": tokens, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "arrivals":
            feed = rt.live.feed(CAMERA)
            arrivals = dict(feed._arrivals) if feed is not None else {}
            print(json.dumps({"arrivals": arrivals}), flush=True)
        elif cmd[0] == "recorder_cpu":
            tids = [w.native_id for w in sup.workers.values() if w.native_id is not None]
            print(json.dumps({"cpu": thread_cpu(os.getpid(), tids), "workers": len(tids)}), flush=True)
    server.should_exit = True
    thread.join(timeout=20)
    sup.stop()
    with rt.db.session() as s:
        # Outages once a camera recorded: the time from activation to its first segment (start-up) is no loss.
        first = select(func.min(Segment.start_us)).where(Segment.camera_id == Gap.camera_id).scalar_subquery()
        gaps = s.scalar(select(func.count()).select_from(Gap).where(Gap.start_us >= first)) or 0
        startup = s.scalar(select(func.count()).select_from(Gap)) or 0
    print(json.dumps({"gaps": gaps, "startup_gaps": startup - gaps}), flush=True)
    rt.db.dispose()
    return 0


class Server:
    def __init__(self, work: Path, demo: DemoServer, cameras: int) -> None:
        self.data_dir = work / "nvr-data"
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NVR_")}
        env.update({"NVR_DATA_DIR": str(self.data_dir), "NVR_SEGMENT_SECONDS": "60", "NVR_LOG_LEVEL": "WARNING"})
        self.env = env
        self.log = open(work / "server.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--serve", str(self.data_dir), str(demo.port), str(cameras)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=env,
            bufsize=1,
        )
        hello = self.read()
        self.url: str = hello["url"]
        self.tokens: dict[str, str] = hello["tokens"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited (code {self.proc.wait()}); see server.log")
        return json.loads(line)

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        final = self.read()
        self.proc.wait(timeout=120)
        self.log.close()
        return final


# --- viewers ------------------------------------------------------------------------------------------------------
class Viewer(threading.Thread):
    """Reads the live stream, stamping each fragment (by its ``mfhd`` sequence number) when its mdat is complete."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.receipts: list[tuple[int, int]] = []
        self.bytes = 0
        self.status: int | None = None
        self.error: str | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        """Each viewer runs in a process of its own (``--view``, :class:`ViewerProcess`), so 16 clients do not share
        one interpreter's GIL and their own delays do not show as the server's latency."""
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with (
                httpx.Client(timeout=30) as c,
                c.stream(
                    "GET", f"{self.url}/api/v1/cameras/{CAMERA}/live", params={"purpose": "bench"}, headers=headers
                ) as r,
            ):
                self.status = r.status_code
                self.ready.set()
                buf = bytearray()
                seq = None
                for chunk in r.iter_raw():
                    now = time.monotonic_ns() // 1000
                    self.bytes += len(chunk)
                    buf += chunk
                    while len(buf) >= 8:
                        size, kind = struct.unpack_from(">I4s", buf)
                        if len(buf) < size:
                            break
                        if kind == b"moof":
                            seq = struct.unpack_from(">I", buf, 20)[0]  # moof > mfhd (the first child) > sequence
                        elif kind == b"mdat" and seq is not None:
                            self.receipts.append((seq, now))
                            seq = None
                        del buf[:size]
                    if self.stop.is_set():
                        return
        except Exception as exc:
            self.error = repr(exc)
        finally:
            self.ready.set()


def view_main(url: str, token: str) -> int:
    """Child: one viewer; prints its status when the stream starts, its receipts when stdin says stop (or closes)."""
    v = Viewer(url, token)
    v.start()
    v.ready.wait(60)
    print(json.dumps({"status": v.status, "error": v.error}), flush=True)
    sys.stdin.readline()
    v.stop.set()
    v.join(10)
    print(json.dumps({"receipts": v.receipts, "bytes": v.bytes, "error": v.error}), flush=True)
    return 0


class ViewerProcess:
    def __init__(self, url: str, token: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--view", url, token], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.receipts: list[tuple[int, int]] = []
        self.bytes = 0
        self.status: int | None = None
        self.error: str | None = None

    def started(self) -> None:
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline() or "{}")
        self.status, self.error = hello.get("status"), hello.get("error")

    def finish(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        final = json.loads(self.proc.stdout.readline() or "{}")
        self.receipts = [(int(a), int(b)) for a, b in final.get("receipts", [])]
        self.bytes = final.get("bytes", 0)
        self.error = final.get("error") or self.error
        self.proc.wait(timeout=30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def phase(server: Server, viewers: int, args: argparse.Namespace) -> dict[str, Any]:
    started = [ViewerProcess(server.url, server.tokens["olga"]) for _ in range(viewers)]
    for v in started:
        v.started()
        if v.status != 200:
            raise RuntimeError(f"a viewer got {v.status}: {v.error}")
    time.sleep(args.warmup)
    t0 = time.monotonic_ns() // 1000
    cpu0, rec0 = server.cpu(), server.ask("recorder_cpu")["cpu"]
    time.sleep(args.seconds)
    cpu1, rec1 = server.cpu(), server.ask("recorder_cpu")["cpu"]
    t1 = time.monotonic_ns() // 1000
    arrivals = {int(k): v for k, v in server.ask("arrivals")["arrivals"].items()} if viewers else {}
    for v in started:
        v.finish()
    window = (t1 - t0) / 1e6
    out: dict[str, Any] = {
        "viewers": viewers,
        "window_seconds": round(window, 2),
        "server_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / window, 1),
        "recorder_cpu_percent_of_one_core": round(100 * (rec1 - rec0) / window, 1),
    }
    if viewers:
        lat = [
            (at - arrivals[seq]) / 1000
            for v in started
            for seq, at in v.receipts
            if t0 <= at <= t1 and arrivals.get(seq)
        ]
        per_viewer = [sum(1 for _, at in v.receipts if t0 <= at <= t1) for v in started]
        out.update(
            {
                "fragments_measured": len(lat),
                "fragments_per_viewer_min": min(per_viewer),
                "latency_ms": {
                    "p50": round(percentile(lat, 50), 1),
                    "p95": round(percentile(lat, 95), 1),
                    "p99": round(percentile(lat, 99), 1),
                    "max": round(max(lat), 1),
                    "mean": round(statistics.fmean(lat), 1),
                }
                if lat
                else None,
                "viewer_errors": [v.error for v in started if v.error],
                "mbit_per_s_per_viewer": round(statistics.fmean(v.bytes for v in started) * 8 / 1e6 / window, 2),
            }
        )
    return out


def recorded_frames(server: Server, fps: int) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [NVR, "segments", "list", "--json", "--limit", "1000000"],
        env=server.env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    recorded: dict[str, dict[str, Any]] = {}
    for row in json.loads(out):
        mount = "cam" + row["camera_id"].split("-", 1)[1]
        entry = recorded.setdefault(mount, {"frames": 0, "segments": 0, "holes": 0})
        entry["frames"] += row["frames"]
        entry["segments"] += 1
        implied = round((row["end_us"] - row["start_us"]) * fps / 1_000_000)
        entry["holes"] += max(0, implied - row["frames"])
    return recorded


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    demo = DemoServer(args.cameras, args, work)
    try:
        before = demo.stats()
        mark_dropped(demo)
        server = Server(work, demo, args.cameras)
        try:
            connect = wait_all_playing(demo, before, timeout=max(60.0, 2.0 * args.cameras))
            with __import__("httpx").Client(base_url=server.url, timeout=30) as c:
                now = dt.datetime.now(dt.UTC)
                body = {
                    "user_id": 2,
                    "cameras": [CAMERA],
                    "actions": ["live"],
                    "window": {
                        "start": (now - dt.timedelta(days=1)).isoformat(),
                        "end": (now + dt.timedelta(days=1)).isoformat(),
                    },
                    "valid_until": (now + dt.timedelta(days=2)).isoformat(),
                    "purpose": "live-view benchmark",
                    "case_ref": "BENCH-1",
                    "max_streams": max(args.viewer_counts),
                }
                r = c.post("/api/v1/grants", json=body, headers={"Authorization": f"Bearer {server.tokens['boss']}"})
                if r.status_code != 201:
                    raise RuntimeError(f"grant refused: {r.text}")
            phases = [phase(server, n, args) for n in [0, *args.viewer_counts]]
            at_stop = demo.stats()
        finally:
            final = server.close()
        time.sleep(0.5)
        after = demo.stats()
        recorded = recorded_frames(server, demo.pattern["fps"])
        loss = losses(demo, before, at_stop, after, recorded)
        per_camera = loss.pop("per_camera")
        # Every frame the camera had sent when the stop began must be in the archive (what follows is in flight).
        loss["frames_missing_before_stop"] = sum(max(0, c["sent_at_stop"] - c["recorded"]) for c in per_camera.values())
        return {
            "connect_seconds": round(connect, 2),
            "phases": phases,
            "gaps": final["gaps"],
            "startup_gaps": final["startup_gaps"],
            **loss,
            "pattern": demo.pattern,
        }
    finally:
        demo.close()


def check(result: dict[str, Any]) -> list[str]:
    """What must hold for the run to count: every viewer phase measured, nothing lost while recording."""
    problems = []
    for p in result["phases"]:
        if p["viewers"] and not p.get("latency_ms"):
            problems.append(f"no latency measured with {p['viewers']} viewer(s)")
        if p.get("viewer_errors"):
            problems.append(f"viewer errors: {p['viewer_errors']}")
    if result["holes"] or result["gaps"] or result["reconnects"] or result["frames_missing_before_stop"]:
        problems.append(
            f"lost while recording: holes {result['holes']}, gaps {result['gaps']}, reconnects {result['reconnects']}, "
            f"missing before the stop {result['frames_missing_before_stop']}"
        )
    if result["cameras_without_recording"]:
        problems.append(f"{result['cameras_without_recording']} camera(s) recorded nothing")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve_main(argv[1], int(argv[2]), int(argv[3]))
    if argv[:1] == ["--view"]:
        return view_main(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=64)
    parser.add_argument("--viewers", default="1,16", help="comma-separated viewer counts on one camera")
    parser.add_argument("--seconds", type=float, default=60, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--gop-seconds", type=float, default=2)
    parser.add_argument("--quick", action="store_true", help="4 small cameras, 1 and 4 viewers, a few seconds")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/live-<ts>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.cameras, args.viewers, args.seconds, args.warmup = 4, "1,4", 3.0, 2.0
        args.width, args.height, args.bitrate, args.gop_seconds = 320, 180, 300_000, 1
    args.viewer_counts = [int(x) for x in args.viewers.split(",") if x]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_path = args.out or ROOT / "bench" / "results" / f"live-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="nvr-bench-live-"))
    load = os.getloadavg()[0]
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"command": sys.argv, "machine": machine(), "load_at_start": round(load, 2), **result}
    problems = check(result)
    report["problems"] = problems
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    for p in result["phases"]:
        print(json.dumps(p))
    brief = {k: v for k, v in result.items() if k not in ("phases", "pattern")}
    print(json.dumps(brief))
    print(f"results: {out_path}")
    if problems:
        print("PROBLEMS: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
