"""Ingest benchmark: ``nvr record`` against one ``ffmpeg -c copy -f segment`` process per camera, side by side.

For each camera count N a fresh demo RTSP server (``bench/demo_server.py``, its own process, so its CPU is not
counted) serves N cameras of the same pre-encoded pattern (default 1280x720, 25 fps, GOP 2 s, about 3 Mbit/s).
Against that one server, one after the other (never at once: the machine has few cores):

1. **nvr**: a fresh data folder made through the ``nvr`` command line code (``init --suite S``, then N cameras
   ``camera add bench-i --name ... --url rtsp://.../cam-i --unit Bench --activate``), then ``nvr record`` as a
   subprocess (SQLite, the default), stopped with SIGTERM, which finishes the open segments.
   **nvr-enc** (``--encrypt``, run right after **nvr** against the same server): the same with the setting
   ``encryption_at_rest`` on (``NVR_ENCRYPTION_AT_REST=true``, so the default volume is made encrypted and every
   segment is sealed under its own data key in the suite's cipher: AES-256-GCM for ``ed25519-sha256``, SM4-GCM for
   ``sm2-sm3``), with a master key made before the recorder starts. ``encryption_overhead`` is nvr-enc's CPU-s per
   stream-minute over nvr's, per suite (goal of issue 14: at most 1.1); the segments' ``encryption`` and
   ``hash_alg`` columns are counted afterwards, so a run that did not actually encrypt cannot pass for one.
2. **ffmpeg**: N processes of ``ffmpeg -hide_banner -loglevel error -nostdin -rtsp_transport tcp -i URL -c copy
   -f segment -segment_time 60 out-%03d.mp4``, stopped with SIGINT, which finishes the open file.

Measurement window: once every camera has a PLAYing session on the server, wait ``--warmup`` seconds (connection,
probing burst, imports and database start-up are therefore excluded), take a CPU snapshot, run ``--seconds``,
take another. CPU = utime + stime from /proc/<pid>/stat (summed over the ffmpeg processes) between the snapshots,
divided by N x the measured minutes. Memory (PSS from /proc/<pid>/smaps_rollup, and RSS) is sampled every
``--sample-every`` seconds inside the window; the last sample and the peak are reported (sums over processes).

Losses: the server counts the frames it wrote to each camera's sessions (including closed ones). After the
recorder has exited, recorded frames are counted (nvr: the ``frames`` of every row of ``nvr segments list
--json``; ffmpeg: ``ffprobe -count_packets`` over its files). ``lost = sent - recorded`` per camera. Both
recorders stop reading the socket when told to stop while the server keeps sending until the connection closes,
so a few frames per camera that were in flight at the stop are expected in that difference; ``sent_at_stop``
(server count at the moment the stop signal went out) bounds it from the other side. A loss inside a recording
shows as fewer frames than its media duration implies, reported as ``holes``.

``--suites ed25519-sha256,sm2-sm3`` runs the nvr recorders once per suite. ``--quick`` (2 small cameras, a few
seconds, nvr only, plus nvr-enc with ``--encrypt``) checks its own result and exits non-zero when a recorder
failed, recorded nothing for a camera or, encrypted, left a segment unencrypted (the test suite runs it).

Usage::

    .venv/bin/python bench/ingest.py --cameras 1,16,64 --seconds 60
    .venv/bin/python bench/ingest.py --cameras 64 --seconds 60 --recorders nvr --encrypt --suites ed25519-sha256,sm2-sm3
    .venv/bin/python bench/ingest.py --quick --encrypt
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project ahead of bench/ (this script's folder), for the --register child
PYTHON = sys.executable
NVR = str(Path(sys.executable).with_name("nvr"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- /proc ------------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_seconds(pid: int) -> float:
    """CPU time of the live threads from /proc/<pid>/task/*/schedstat (ns resolution; threads that already exited
    are missing, unlike in /proc/<pid>/stat): a finer cross-check of ``cpu_seconds`` for short runs."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB from smaps_rollup; (0, 0) if the process is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


# --- demo server --------------------------------------------------------------------------------------------------
class DemoServer:
    """bench/demo_server.py in a child process; ``stats()`` asks it for per-mount frame counts."""

    def __init__(self, cameras: int, args: argparse.Namespace, log_dir: Path) -> None:
        cmd = [
            PYTHON,
            str(ROOT / "bench" / "demo_server.py"),
            "--cameras",
            str(cameras),
            "--width",
            str(args.width),
            "--height",
            str(args.height),
            "--fps",
            str(args.fps),
            "--bitrate",
            str(args.bitrate),
            "--gop-seconds",
            str(args.gop_seconds),
        ]
        self.log = open(log_dir / "demo-server.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, bufsize=1
        )
        hello = self._read()
        self.port: int = hello["port"]
        self.mounts: list[str] = hello["mounts"]
        self.pattern: dict[str, Any] = hello["pattern"]
        self.dropped_slow_clients = 0
        self.dropped_before = 0

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"demo server exited (code {self.proc.wait()}); see demo-server.log")
        return json.loads(line)

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def stats(self) -> dict[str, dict[str, int]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        payload = self._read()
        self.dropped_slow_clients = int(payload.get("dropped_slow_clients", 0))
        return payload["mounts"]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- one measured run -----------------------------------------------------------------------------------------------
def wait_all_playing(server: DemoServer, before: dict[str, dict[str, int]], timeout: float) -> float:
    """Seconds until every mount has a new session playing; raises if that does not happen within ``timeout``."""
    started = time.monotonic()
    while True:
        stats = server.stats()
        ready = sum(1 for m in server.mounts if stats[m]["playing"] >= 1 and stats[m]["sent"] > before[m]["sent"])
        if ready == len(server.mounts):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {ready}/{len(server.mounts)} cameras streaming after {timeout:.0f} s")
        time.sleep(0.2)


def measure(
    server: DemoServer, pids: list[int], args: argparse.Namespace, before: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """Warm up, then CPU and memory over the window. Returns the figures and the server stats at the stop."""
    connect_s = wait_all_playing(server, before, timeout=max(60.0, 2.0 * len(pids)))
    time.sleep(args.warmup)
    wall0 = time.monotonic()
    cpu0 = sum(cpu_seconds(p) for p in pids)
    sched0 = sum(sched_seconds(p) for p in pids)
    srv0 = server.cpu()
    samples: list[tuple[int, int]] = []
    deadline = wall0 + args.seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(args.sample_every, deadline - now))
        mem = [memory_kib(p) for p in pids]
        samples.append((sum(m[0] for m in mem), sum(m[1] for m in mem)))
    cpu1 = sum(cpu_seconds(p) for p in pids)
    sched1 = sum(sched_seconds(p) for p in pids)
    wall1 = time.monotonic()
    srv1 = server.cpu()
    threads = sum(thread_count(p) for p in pids)
    at_stop = server.stats()
    window = wall1 - wall0
    cpu = cpu1 - cpu0
    stream_minutes = len(server.mounts) * window / 60
    return {
        "connect_seconds": round(connect_s, 2),
        "window_seconds": round(window, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_percent_of_one_core": round(100 * cpu / window, 1),
        "cpu_s_per_stream_minute": round(cpu / stream_minutes, 4),
        "cpu_s_per_stream_minute_schedstat": round((sched1 - sched0) / stream_minutes, 4),
        "server_cpu_percent_of_one_core": round(100 * (srv1 - srv0) / window, 1),
        "pss_mib_end": round(samples[-1][0] / 1024, 1) if samples else None,
        "pss_mib_peak": round(max(s[0] for s in samples) / 1024, 1) if samples else None,
        "rss_mib_end": round(samples[-1][1] / 1024, 1) if samples else None,
        "rss_mib_peak": round(max(s[1] for s in samples) / 1024, 1) if samples else None,
        "processes": len(pids),
        "threads": threads,
        "_at_stop": at_stop,
    }


def mark_dropped(server: DemoServer) -> None:
    server.stats()
    server.dropped_before = server.dropped_slow_clients


def losses(
    server: DemoServer,
    before: dict[str, dict[str, int]],
    at_stop: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
    recorded: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    per_camera = {}
    for mount in server.mounts:
        sent = after[mount]["sent"] - before[mount]["sent"]
        sent_at_stop = at_stop[mount]["sent"] - before[mount]["sent"]
        rec = recorded.get(mount, {"frames": 0, "segments": 0, "holes": 0})
        per_camera[mount] = {
            "sent": sent,
            "sent_at_stop": sent_at_stop,
            "recorded": rec["frames"],
            "lost": sent - rec["frames"],
            "holes": rec.get("holes", 0),
            "segments": rec["segments"],
            "sessions": after[mount]["sessions"] - before[mount]["sessions"],
        }
    values = list(per_camera.values())
    return {
        "frames_sent": sum(v["sent"] for v in values),
        "frames_sent_at_stop": sum(v["sent_at_stop"] for v in values),
        "frames_recorded": sum(v["recorded"] for v in values),
        "frames_lost": sum(v["lost"] for v in values),
        "frames_lost_max_per_camera": max((v["lost"] for v in values), default=0),
        "holes": sum(v["holes"] for v in values),
        "segments": sum(v["segments"] for v in values),
        "reconnects": sum(max(0, v["sessions"] - 1) for v in values),
        "cameras_without_recording": sum(1 for v in values if v["recorded"] == 0),
        "server_dropped_slow_clients": server.dropped_slow_clients - server.dropped_before,
        "per_camera": per_camera,
    }


# --- nvr ------------------------------------------------------------------------------------------------------------
def register_main(data_dir: str, port: int, cameras: int, suite: str) -> None:
    """Child process: ``init`` in ``suite``, a master key when encrypting, then register and activate the cameras,
    all through the ``nvr`` CLI's own entry (one process, not N)."""
    os.environ["NVR_DATA_DIR"] = data_dir
    from nvr.cli.common import app
    from nvr.config import Settings

    app(["init", "--suite", suite], standalone_mode=False)
    settings = Settings()
    if settings.encryption_at_rest:
        ensure_master_key(settings)
    for i in range(1, cameras + 1):
        app(
            [
                "camera",
                "add",
                f"bench-{i}",
                "--name",
                f"Bench camera {i}",
                "--url",
                f"rtsp://127.0.0.1:{port}/cam{i}",
                "--unit",
                "Bench",
                "--activate",
            ],
            standalone_mode=False,
        )


def ensure_master_key(settings: Any) -> None:
    """A master key for encryption at rest: ``nvr init`` may already have made one; else ``nvr keys master create``
    when the CLI has it, else the key store's own ``create`` (storage.keyring)."""
    from storage.keyring import Keyring

    ring = Keyring(settings.master_keys_dir)
    if ring.master_keys():
        return
    import click
    import typer

    from nvr.cli.common import app

    keys_group = typer.main.get_command(app).commands.get("keys")  # type: ignore[attr-defined]
    master = keys_group.commands.get("master") if isinstance(keys_group, click.Group) else None
    if isinstance(master, click.Group) and "create" in master.commands:
        app(["keys", "master", "create"], standalone_mode=False)
    if not ring.master_keys():  # a CLI without the command (yet): the key store itself
        ring.create()


def segment_columns(db_path: Path) -> dict[str, int]:
    """Segment rows by ``hash_alg`` and by whether ``encryption`` is set (the bench's data folder is SQLite)."""
    counts: dict[str, int] = {}
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        for alg, enc, n in con.execute(
            "SELECT hash_alg, encryption, count(*) FROM segments GROUP BY hash_alg, encryption"
        ):
            counts[f"hash_alg={alg}"] = counts.get(f"hash_alg={alg}", 0) + n
            key = f"encryption={enc}" if enc else "plain"
            counts[key] = counts.get(key, 0) + n
    finally:
        con.close()
    return counts


def run_nvr(server: DemoServer, args: argparse.Namespace, work: Path, suite: str, encrypt: bool) -> dict[str, Any]:
    data_dir = work / ("nvr-data-enc" if encrypt else "nvr-data")
    # Defaults for everything else (SQLite in the data folder, one volume there); an NVR_ setting or config file
    # in the caller's environment must not leak into the measurement.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NVR_")}
    env.update(
        {
            "NVR_DATA_DIR": str(data_dir),
            "NVR_SEGMENT_SECONDS": str(args.segment_seconds),
            "NVR_LOG_LEVEL": "WARNING",
            "NVR_CRYPTO_SUITE": suite,
            "NVR_ENCRYPTION_AT_REST": "true" if encrypt else "false",
        }
    )
    n = len(server.mounts)
    reg = subprocess.run(
        [PYTHON, __file__, "--register", str(data_dir), str(server.port), str(n), suite],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if reg.returncode != 0:
        raise RuntimeError(f"registering the cameras failed: {reg.stderr.strip()[-1500:]}")
    before = server.stats()
    mark_dropped(server)
    log_path = work / ("nvr-record-enc.log" if encrypt else "nvr-record.log")
    log = open(log_path, "w")  # noqa: SIM115
    proc = subprocess.Popen([NVR, "record"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        figures = measure(server, [proc.pid], args, before)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    at_stop = figures.pop("_at_stop")
    stop0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    figures["stop_seconds"] = round(time.monotonic() - stop0, 2)
    figures["exit_code"] = code
    log.close()
    time.sleep(0.5)  # let the server notice the closed connections
    after = server.stats()

    out = subprocess.run(
        [NVR, "segments", "list", "--json", "--limit", "1000000"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = json.loads(out)
    fps = server.pattern["fps"]
    recorded: dict[str, dict[str, Any]] = {}
    for row in rows:
        mount = "cam" + row["camera_id"].split("-", 1)[1]
        entry = recorded.setdefault(mount, {"frames": 0, "segments": 0, "holes": 0, "bytes": 0})
        entry["frames"] += row["frames"]
        entry["segments"] += 1
        entry["bytes"] += row["bytes"]
        implied = round((row["end_us"] - row["start_us"]) * fps / 1_000_000)
        entry["holes"] += max(0, implied - row["frames"])
    volume = data_dir / "volumes" / "default"
    leftovers = [p.name for p in volume.rglob("*") if p.is_file() and (".partial" in p.name or ".journal" in p.name)]
    figures.update(losses(server, before, at_stop, after, recorded))
    figures["bytes"] = sum(e["bytes"] for e in recorded.values())
    figures["recovered_segments"] = sum(1 for r in rows if r["recovered"])
    figures["leftover_partial_files"] = len(leftovers)
    figures["log_warnings"] = _count_lines(log_path, ("WARNING", "ERROR"))
    figures["suite"] = suite
    figures["encryption_at_rest"] = encrypt
    figures["segment_columns"] = segment_columns(data_dir / "nvr.db")
    figures["encrypted_segments"] = sum(v for k, v in figures["segment_columns"].items() if k.startswith("encryption="))
    return figures


def _count_lines(path: Path, needles: tuple[str, ...]) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if any(n in line for n in needles))
    except OSError:
        return 0


# --- ffmpeg ---------------------------------------------------------------------------------------------------------
def ffprobe_packets(path: Path) -> int | None:
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    try:
        return int(result.stdout.strip().splitlines()[0].strip(","))
    except (ValueError, IndexError):
        return None


def run_ffmpeg(server: DemoServer, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    before = server.stats()
    mark_dropped(server)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for mount in server.mounts:
        out = work / "ffmpeg" / mount
        out.mkdir(parents=True)
        log = open(out / "ffmpeg.log", "w")  # noqa: SIM115
        logs.append(log)
        cmd = [
            args.ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-rtsp_transport",
            "tcp",
            "-i",
            server.url(mount),
            "-c",
            "copy",
            "-f",
            "segment",
            "-segment_time",
            str(args.segment_seconds),
            str(out / "out-%03d.mp4"),
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log))
    try:
        figures = measure(server, [p.pid for p in procs], args, before)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    at_stop = figures.pop("_at_stop")
    stop0 = time.monotonic()
    for p in procs:
        p.send_signal(signal.SIGINT)
    codes = [p.wait(timeout=120) for p in procs]
    figures["stop_seconds"] = round(time.monotonic() - stop0, 2)
    figures["exit_code"] = max(codes, key=abs)
    for log in logs:
        log.close()
    time.sleep(0.5)
    after = server.stats()

    recorded: dict[str, dict[str, Any]] = {}
    files = {mount: sorted((work / "ffmpeg" / mount).glob("out-*.mp4")) for mount in server.mounts}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        counts = {f: pool.submit(ffprobe_packets, f) for fs in files.values() for f in fs}
    unreadable = 0
    for mount, fs in files.items():
        entry = recorded.setdefault(mount, {"frames": 0, "segments": 0, "bytes": 0})
        for f in fs:
            n = counts[f].result()
            if n is None:
                unreadable += 1
                continue
            entry["frames"] += n
            entry["segments"] += 1
            entry["bytes"] += f.stat().st_size
    figures.update(losses(server, before, at_stop, after, recorded))
    figures["bytes"] = sum(e["bytes"] for e in recorded.values())
    figures["unreadable_files"] = unreadable
    figures["log_warnings"] = sum(_count_lines(work / "ffmpeg" / m / "ffmpeg.log", ("",)) for m in server.mounts)
    return figures


# --- driver ---------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        total_kib = int(fh.readline().split()[1])
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    import av

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(total_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "pyav": av.__version__,
        "pyav_ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items() if k == "libavformat"},
        "ffmpeg": ffmpeg_version,
        "loadavg_at_start": os.getloadavg(),
    }


DEFAULT_SUITE = "ed25519-sha256"


def label(rec: str, suite: str) -> str:
    """A run's key in the results: ``nvr``, ``nvr-enc``, ``ffmpeg``; ``nvr@sm2-sm3`` for another suite."""
    return rec if rec == "ffmpeg" or suite == DEFAULT_SUITE else f"{rec}@{suite}"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| cameras | recorder | CPU-s / stream-min | CPU % of a core | PSS MiB (end / peak) | RSS MiB (end) "
        "| segments | frames sent | recorded | lost (max/cam) | holes | reconnects | server dropped |"
    )
    lines = [head, "|" + "|".join(["---"] * 13) + "|"]
    for r in results:
        for name in r["runs"]:
            f = r[name]
            if "error" in f:
                lines.append(f"| {r['cameras']} | {name} | error: {f['error']} |" + " |" * 11)
                continue
            lines.append(
                f"| {r['cameras']} | {name} | {f['cpu_s_per_stream_minute']:.3f} | {f['cpu_percent_of_one_core']:.1f} "
                f"| {f['pss_mib_end']:.1f} / {f['pss_mib_peak']:.1f} | {f['rss_mib_end']:.1f} | {f['segments']} "
                f"| {f['frames_sent']} | {f['frames_recorded']} "
                f"| {f['frames_lost']} ({f['frames_lost_max_per_camera']}) "
                f"| {f['holes']} | {f['reconnects']} | {f['server_dropped_slow_clients']} |"
            )
        n, g = r.get("nvr"), r.get("ffmpeg")
        if n and g and "error" not in n and "error" not in g and g["pss_mib_end"]:
            lines.append(
                f"| {r['cameras']} | nvr / ffmpeg | {n['cpu_s_per_stream_minute'] / g['cpu_s_per_stream_minute']:.2f}x "
                f"| | {n['pss_mib_end'] / g['pss_mib_end']:.2f}x | | | | | | | | |"
            )
        for suite, ratio in r.get("encryption_overhead", {}).items():
            lines.append(
                f"| {r['cameras']} | encrypted / plain ({suite}) | {ratio['cpu']:.2f}x | | {ratio['pss']:.2f}x "
                "| | | | | | | | |"
            )
    return "\n".join(lines)


def overhead(entry: dict[str, Any], suites_: list[str]) -> dict[str, Any]:
    """nvr-enc over nvr per suite: CPU-s per stream-minute (and the schedstat cross-check) and PSS at the end."""
    out: dict[str, Any] = {}
    for suite in suites_:
        plain, enc = entry.get(label("nvr", suite)), entry.get(label("nvr-enc", suite))
        if not plain or not enc or "error" in plain or "error" in enc:
            continue
        out[suite] = {
            "cpu": round(enc["cpu_s_per_stream_minute"] / plain["cpu_s_per_stream_minute"], 3),
            "cpu_schedstat": round(
                enc["cpu_s_per_stream_minute_schedstat"] / plain["cpu_s_per_stream_minute_schedstat"], 3
            ),
            "pss": round(enc["pss_mib_end"] / plain["pss_mib_end"], 3) if plain["pss_mib_end"] else None,
            "goal": "<= 1.1",
        }
    return out


def check(results: list[dict[str, Any]]) -> list[str]:
    """What --quick refuses: a failed recorder, a camera without a recording, an encrypted run with a plain
    segment (or a plain run with an encrypted one), a recorder that did not exit cleanly."""
    problems = []
    for r in results:
        for name in r["runs"]:
            f = r[name]
            where = f"{r['cameras']} camera(s), {name}"
            if "error" in f:
                problems.append(f"{where}: {f['error']}")
                continue
            if f["exit_code"] != 0:
                problems.append(f"{where}: exit code {f['exit_code']}")
            if f["cameras_without_recording"] or not f["frames_recorded"]:
                problems.append(f"{where}: {f['cameras_without_recording']} camera(s) recorded nothing")
            if name.startswith("nvr"):
                want = f["segments"] if f["encryption_at_rest"] else 0
                if f["encrypted_segments"] != want:
                    problems.append(f"{where}: {f['encrypted_segments']} of {f['segments']} segments encrypted")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--register"]:
        register_main(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", default="1,16,64", help="comma-separated camera counts")
    parser.add_argument("--seconds", type=float, default=60, help="measured window per recorder and count")
    parser.add_argument("--warmup", type=float, default=5, help="seconds after all cameras stream, not measured")
    parser.add_argument("--segment-seconds", type=int, default=60, help="nvr segment length and ffmpeg -segment_time")
    parser.add_argument("--sample-every", type=float, default=2.0, help="memory sampling interval, seconds")
    parser.add_argument("--recorders", default="nvr,ffmpeg", help="which to run, in this order: nvr, nvr-enc, ffmpeg")
    parser.add_argument("--encrypt", action="store_true", help="also nvr-enc (encryption at rest), right after nvr")
    parser.add_argument(
        "--suites", default=DEFAULT_SUITE, help="crypto suites for the nvr recorders: ed25519-sha256, sm2-sm3"
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=3_000_000)
    parser.add_argument("--gop-seconds", type=float, default=2)
    parser.add_argument("--ffmpeg", default=shutil.which("ffmpeg") or "/usr/bin/ffmpeg")
    parser.add_argument("--quick", action="store_true", help="2 small cameras, seconds, nvr only; checks the result")
    parser.add_argument("--workdir", type=Path, default=None, help="where recordings go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the recordings")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/ingest-<ts>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.cameras, args.seconds, args.warmup, args.segment_seconds, args.sample_every = "2", 4.0, 1.0, 2, 1.0
        args.width, args.height, args.bitrate, args.gop_seconds, args.recorders = 320, 180, 300_000, 1, "nvr"
    counts = [int(c) for c in args.cameras.split(",") if c.strip()]
    recorders = [r.strip() for r in args.recorders.split(",") if r.strip()]
    if args.encrypt and "nvr-enc" not in recorders:
        at = recorders.index("nvr") + 1 if "nvr" in recorders else 0
        recorders.insert(at, "nvr-enc")
    suite_names = [x.strip() for x in args.suites.split(",") if x.strip()]
    unknown = [r for r in recorders if r not in ("nvr", "nvr-enc", "ffmpeg")]
    unknown += [x for x in suite_names if x not in ("ed25519-sha256", "sm2-sm3")]
    if unknown:
        parser.error(f"unknown recorder or suite: {', '.join(unknown)}")
    # The runs in order: the nvr recorders once per suite (plain, then encrypted), ffmpeg once.
    plan = [(rec, suite) for suite in suite_names for rec in recorders if rec != "ffmpeg"]
    plan += [("ffmpeg", "")] if "ffmpeg" in recorders else []
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or ROOT / "bench" / "results" / f"ingest-{stamp}.json"
    base = Path(tempfile.mkdtemp(prefix="nvr-ingest-", dir=args.workdir))
    command = " ".join([".venv/bin/python", "bench/ingest.py", *argv])
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"command": command, "started": stamp, "machine": machine(), "results": results}
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "workdir")}
    report["settings"]["workdir"] = str(base)
    print(f"# {command}\n# work dir {base}", flush=True)
    try:
        for n in counts:
            work = base / f"{n}cam"
            work.mkdir()
            server = DemoServer(n, args, work)
            entry: dict[str, Any] = {"cameras": n, "pattern": server.pattern, "runs": []}
            results.append(entry)
            try:
                for rec, suite in plan:
                    name = label(rec, suite)
                    print(f"{n} camera(s): {name} ...", flush=True)
                    run_dir = work / name
                    run_dir.mkdir()
                    try:
                        if rec == "ffmpeg":
                            figures = run_ffmpeg(server, args, run_dir)
                        else:
                            figures = run_nvr(server, args, run_dir, suite, encrypt=rec == "nvr-enc")
                    except (RuntimeError, subprocess.SubprocessError, OSError, sqlite3.Error) as exc:
                        figures = {"error": str(exc)}
                    entry[name] = figures
                    entry["runs"].append(name)
                    brief = {k: v for k, v in figures.items() if k != "per_camera"}
                    print("  " + json.dumps(brief), flush=True)
                    if not args.keep:
                        for sub in ("nvr-data", "nvr-data-enc", "ffmpeg"):
                            shutil.rmtree(run_dir / sub, ignore_errors=True)
                entry["encryption_overhead"] = overhead(entry, suite_names)
            finally:
                server.close()
    finally:
        report["machine"]["loadavg_at_end"] = os.getloadavg()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(results))
    print(f"\nresults: {out_path}")
    problems = check(results) if args.quick else []
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
