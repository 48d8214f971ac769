"""Cluster test harness: several ``nvr record`` processes (nodes) on one machine sharing one data folder (so one
keys folder) and one PostgreSQL database, each writing to a volume of its own; the demo RTSP server as cameras.

A segment row does not say which node wrote it; its volume does (one volume per node), so every segment is
attributed to a node by the folder its file is in. Leases and node states are read in-process with the same
function ``nvr node list`` prints (nvr.cluster.cluster_view), which is cheap enough to poll; the tests also read the
real ``nvr node list --json`` at the points they assert on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from nvr.models import AuditEvent, CameraEvent, Lease, Segment, Volume
from nvr.runtime import Runtime
from tests.support.recording import wait_for

US = 1_000_000
CAMERAS = [f"cam{i}" for i in range(1, 7)]
"""The demo cameras a cluster test may register (tests/cluster/conftest.py serves each as a mount)."""


@dataclass(frozen=True)
class Seg:
    """One registered segment, attributed to the node whose volume holds its file."""

    seq: int
    start_us: int
    end_us: int
    node: str | None
    path: Path

    def __str__(self) -> str:
        return f"#{self.seq} [{self.start_us / US:.3f}, {self.end_us / US:.3f}) on {self.node}"


@dataclass(frozen=True)
class Hole:
    """Time between two consecutive segments of a camera's chain in which nothing was recorded."""

    after: Seg
    before: Seg

    @property
    def seconds(self) -> float:
        return (self.before.start_us - self.after.end_us) / US

    def __str__(self) -> str:
        return f"{self.seconds:.2f} s between {self.after} and {self.before}"


def chain_problems(cam: str, segs: list[Seg], overlap_tolerance_us: int = US) -> list[str]:
    """What breaks "one contiguous chain": seqs not 1..n, a segment starting before the previous one ended (beyond
    the tolerance), two segments overlapping at all beyond it (whatever their seqs), the same file twice, a row
    whose file is missing."""
    problems = []
    seqs = [s.seq for s in segs]
    if seqs != list(range(1, len(segs) + 1)):
        problems.append(f"{cam}: seqs are {seqs}, not 1..{len(segs)}")
    for prev, cur in itertools.pairwise(segs):
        if cur.start_us < prev.end_us - overlap_tolerance_us:
            problems.append(f"{cam}: {cur} starts {(prev.end_us - cur.start_us) / US:.2f} s before {prev} ends")
    by_start = sorted(segs, key=lambda s: s.start_us)
    latest_end: Seg | None = None
    for s in by_start:
        if latest_end is not None and s.start_us < latest_end.end_us - overlap_tolerance_us and s.seq != latest_end.seq:
            problems.append(f"{cam}: {s} overlaps {latest_end}")
        if latest_end is None or s.end_us > latest_end.end_us:
            latest_end = s
    paths = [s.path for s in segs]
    if len(set(paths)) != len(paths):
        problems.append(f"{cam}: a file is registered twice: {sorted(p.name for p in paths if paths.count(p) > 1)}")
    problems += [f"{cam}: {s} has no file at {s.path}" for s in segs if not s.path.is_file()]
    return problems


def holes(segs: list[Seg], min_seconds: float = 0.3) -> list[Hole]:
    return [Hole(a, b) for a, b in itertools.pairwise(segs) if (b.start_us - a.end_us) / US > min_seconds]


@dataclass
class Node:
    """One ``nvr record`` process (restartable: ``start`` again after it ended)."""

    name: str
    """The harness's name for it; also the node id unless ``node_id`` says otherwise."""
    node_id: str
    volume: Path
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    stopped: bool = False
    """SIGSTOPped (and not yet SIGCONTed)."""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.log_dir / f"{self.name}.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.alive(), f"{self.name} is not running:\n{self.log_tail()}"
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:
            self.stopped = True
        elif sig == signal.SIGCONT:
            self.stopped = False


class Cluster:
    """Nodes over one data folder and one database; ``rt`` is an in-process runtime over the same, for reading."""

    def __init__(
        self,
        rt: Runtime,
        base_env: dict[str, str],
        root: Path,
        lease_timeout: float,
        segment_seconds: float,
    ) -> None:
        self.rt = rt
        self.base_env = base_env
        self.root = root
        self.lease_timeout = lease_timeout
        self.segment_seconds = segment_seconds
        self.nodes: dict[str, Node] = {}
        (root / "logs").mkdir(parents=True, exist_ok=True)

    # --- commands --------------------------------------------------------------------------------------------------
    def nvr(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nvr", *args],
            env=env or self.base_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def node_env(self, node_id: str, volume: Path, **extra: str) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            {
                "NVR_NODE_ID": node_id,
                "NVR_VOLUMES": json.dumps([str(volume)]),
                "NVR_LEASE_TIMEOUT_SECONDS": str(self.lease_timeout),
                "NVR_SEGMENT_SECONDS": str(self.segment_seconds),
                "NVR_RTSP_TIMEOUT_SECONDS": "3",
                "NVR_RECONNECT_MIN_SECONDS": "0.2",
                "NVR_RECONNECT_MAX_SECONDS": "1",
                "NVR_VOLUME_MIN_FREE_BYTES": "0",
                "NVR_LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def add_nodes(self, *names: str, node_ids: dict[str, str] | None = None) -> list[Node]:
        """Make each node's volume with ``nvr volume init`` (in parallel: the schema is already migrated)."""
        made = []
        procs = []
        for name in names:
            volume = self.root / "volumes" / name
            volume.parent.mkdir(parents=True, exist_ok=True)
            node_id = (node_ids or {}).get(name, name)
            node = Node(name, node_id, volume, self.node_env(node_id, volume), self.root / "logs")
            self.nodes[name] = node
            made.append(node)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "nvr", "volume", "init", str(volume)],
                    env=self.base_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for name, p in zip(names, procs, strict=True):
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0, f"nvr volume init for {name} failed ({p.returncode}): {out}"
        return made

    def start(self, *names: str, wait: bool = True) -> None:
        for name in names:
            node = self.nodes[name]
            assert not node.alive(), f"{name} is already running"
            node.runs += 1
            log = node.log_path.open("ab")
            log.write(f"\n===== start {node.runs} at {time.time():.3f}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                [sys.executable, "-m", "nvr", "record"], env=node.env, stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
        if wait:
            for name in names:
                self.wait_alive(name)

    def wait_alive(self, name: str, timeout: float = 40) -> None:
        node = self.nodes[name]

        def joined() -> bool:
            assert node.alive(), (
                f"{name} exited ({node.proc and node.proc.returncode}) before joining:\n{node.log_tail()}"
            )
            n = self.view_nodes().get(node.node_id)
            return n is not None and n["state"] == "alive" and n["pid"] == node.proc.pid  # type: ignore[union-attr]

        wait_for(joined, timeout, f"node {name} to join the cluster (alive in nvr node list)")

    def run_to_exit(self, name: str, timeout: float = 40) -> tuple[int, str]:
        """Start a node expected to refuse to run; (exit code, its output)."""
        node = self.nodes[name]
        self.start(name, wait=False)
        assert node.proc is not None
        try:
            node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name} still runs after {timeout}s; expected a refusal:\n{node.log_tail()}"
            ) from None
        return node.proc.returncode, node.log_path.read_text(errors="replace")

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.signal(signal.SIGKILL)
        assert node.proc is not None
        node.proc.wait(timeout=10)
        node.stopped = False

    def terminate(self, name: str, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit; the exit code."""
        node = self.nodes[name]
        node.signal(signal.SIGTERM)
        assert node.proc is not None
        try:
            return node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit within {timeout}s of SIGTERM:\n{node.log_tail()}") from None

    def close(self) -> None:
        for node in self.nodes.values():
            if node.alive():
                assert node.proc is not None
                if node.stopped:
                    node.proc.send_signal(signal.SIGCONT)
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    # --- what the cluster says ----------------------------------------------------------------------------------
    def node_list(self) -> dict[str, object]:
        """The real ``nvr node list --json``."""
        # With the cluster's lease timeout, which is what tells a dead node from a live one.
        env = dict(self.base_env, NVR_LEASE_TIMEOUT_SECONDS=str(self.lease_timeout))
        r = self.nvr("node", "list", "--json", env=env)
        assert r.returncode == 0, f"nvr node list --json failed ({r.returncode}): {r.stdout}{r.stderr}"
        return json.loads(r.stdout)

    def view(self) -> dict[str, object]:
        from nvr.cluster import cluster_view

        with self.rt.db.session() as s:
            return cluster_view(s, int(self.lease_timeout * US), self.rt.clock.now_us)

    def view_nodes(self) -> dict[str, dict[str, object]]:
        return {n["id"]: n for n in self.view()["nodes"]}  # type: ignore[union-attr, index]

    def holders(self, cameras: list[str]) -> dict[str, str | None]:
        """Camera -> the node id holding its lease now (None: nobody, or expired)."""
        leases = {lease["resource"]: lease for lease in self.view()["leases"]}  # type: ignore[union-attr, index]
        return {c: (leases.get(f"camera:{c}") or {}).get("node_id") for c in cameras}

    def lease_rows(self, cameras: list[str]) -> dict[str, Lease | None]:
        with self.rt.db.session() as s:
            rows = {lease.resource: lease for lease in s.scalars(select(Lease))}
            s.expunge_all()
        return {c: rows.get(f"camera:{c}") for c in cameras}

    def node_of_volume(self, volume_path: Path) -> str | None:
        for node in self.nodes.values():
            if Path(volume_path) == node.volume:
                return node.node_id
        return None

    def segments(self, cam: str) -> list[Seg]:
        with self.rt.db.session() as s:
            rows = s.execute(
                select(Segment.seq, Segment.start_us, Segment.end_us, Segment.rel_path, Volume.path)
                .join(Volume, Segment.volume_id == Volume.id)
                .where(Segment.camera_id == cam)
                .order_by(Segment.seq)
            ).all()
        return [Seg(seq, st, en, self.node_of_volume(Path(vp)), Path(vp) / rel) for seq, st, en, rel, vp in rows]

    def camera_events(self, kind: str) -> list[CameraEvent]:
        with self.rt.db.session() as s:
            rows = list(s.scalars(select(CameraEvent).where(CameraEvent.kind == kind).order_by(CameraEvent.id)))
            s.expunge_all()
        return rows

    def audit_events(self, action: str) -> list[AuditEvent]:
        with self.rt.db.session() as s:
            rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))
            s.expunge_all()
        return rows

    def files(self, name: str, cam: str, pattern: str) -> list[Path]:
        """Files matching ``pattern`` under node ``name``'s volume for camera ``cam``."""
        d = self.nodes[name].volume / cam
        return sorted(d.rglob(pattern)) if d.exists() else []

    # --- waiting for states --------------------------------------------------------------------------------------
    def wait_stable(
        self, cameras: list[str], names: list[str], timeout: float = 45, quiet: float = 3.0
    ) -> tuple[dict[str, str], int]:
        """Until every camera is held by one of ``names``' nodes, each of them holds at least one, the holders have not
        changed for ``quiet`` seconds, and each camera has a registered segment on its holder's volume ending after the
        holders settled. Returns (camera -> holder, when they settled in µs)."""
        ids = {self.nodes[n].node_id for n in names}
        deadline = time.monotonic() + timeout
        last: dict[str, str | None] | None = None
        since = time.monotonic()
        settled_us = None
        seen: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            for n in names:
                node = self.nodes[n]
                assert node.alive(), f"{n} exited ({node.proc and node.proc.returncode}):\n{node.log_tail()}"
            seen = self.holders(cameras)
            good = all(h in ids for h in seen.values()) and ids <= set(seen.values())
            if seen != last or not good:
                last, since, settled_us = seen, time.monotonic(), None
            elif time.monotonic() - since >= quiet:
                if settled_us is None:
                    settled_us = self.rt.clock.now_us() - int(quiet * US)
                recording = all(
                    (segs := self.segments(c)) and segs[-1].node == seen[c] and segs[-1].end_us >= settled_us
                    for c in cameras
                )
                if recording:
                    return {c: h for c, h in seen.items() if h is not None}, settled_us
            time.sleep(0.2)
        per_cam = {c: [str(s) for s in self.segments(c)[-2:]] for c in cameras}
        raise AssertionError(
            f"cluster did not settle within {timeout}s: holders {seen}, last segments {per_cam}, nodes "
            f"{json.dumps(self.view_nodes(), default=str)}"
        )


class TcpProxy:
    """A TCP relay in front of the database for one node, to cut that node off (a network partition between it and
    PostgreSQL, while its cameras stay reachable) and later reconnect it. ``cut`` resets every relayed connection and
    refuses new ones; ``restore`` relays again."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="db-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _reset(s)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self._listener.close()


def _reset(s: socket.socket) -> None:
    """Close with RST, as a vanished peer looks after a partition (no orderly FIN)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()
