"""Cluster fixtures: six demo cameras, a cluster harness over the test's database and data folder, and (for the
PostgreSQL-restart test) a private PostgreSQL server of the test's own, so restarting it disturbs no other test."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from nvr.demo.pattern import Pattern
from nvr.demo.rtsp import DemoRtspServer
from nvr.runtime import Runtime
from tests.support.api_server import free_port
from tests.support.cluster import CAMERAS, Cluster, TcpProxy
from tests.support.recording import add_camera


@pytest.fixture
def demo_server(pattern: Pattern) -> Iterator[DemoRtspServer]:
    server = DemoRtspServer(mounts={cam: pattern for cam in CAMERAS})
    server.start()
    yield server
    server.stop()


ClusterFactory = Callable[..., Cluster]


def _make_cluster(
    tmp_path: Path, database_url: str, base_env: dict[str, str], demo_server: DemoRtspServer, settings_factory
) -> Iterator[ClusterFactory]:
    made: list[tuple[Cluster, Runtime]] = []

    def make(cameras: int = 6, lease_timeout: float = 4.0, segment_seconds: float = 2.0) -> Cluster:
        # One data folder for every node (the keys folder with it, as on one machine), made the way an operator
        # does: `nvr init` once (schema, signing key), then one `nvr volume init` per node's volume.
        r = subprocess.run(
            [sys.executable, "-m", "nvr", "init"],
            env=base_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, f"nvr init failed ({r.returncode}): {r.stdout}{r.stderr}"
        rt = Runtime.open(settings_factory(database_url=database_url))
        for cam in CAMERAS[:cameras]:
            add_camera(rt, cam, demo_server.url(cam))
        cluster = Cluster(rt, base_env, tmp_path / "cluster", lease_timeout, segment_seconds)
        made.append((cluster, rt))
        return cluster

    yield make
    for cluster, rt in made:
        cluster.close()
        rt.db.dispose()


@pytest.fixture
def cluster_factory(tmp_path, database_url, nvr_env, demo_server, settings_factory) -> Iterator[ClusterFactory]:
    """Clusters over the test's database (``database_url``: PostgreSQL in the PostgreSQL pass)."""
    yield from _make_cluster(tmp_path, database_url, nvr_env, demo_server, settings_factory)


# --- a private PostgreSQL server ---------------------------------------------------------------------------------
@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb in a temporary folder, own port) run as the ``postgres`` user."""

    bindir: Path
    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "30", *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def restart(self) -> None:
        r = self.ctl("restart", "-m", "fast", "-l", str(self.datadir / "server.log"))
        assert r.returncode == 0, f"pg_ctl restart failed ({r.returncode}): {r.stdout}{r.stderr}"


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) to run a private server with")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("running as root without a 'postgres' user to run a private PostgreSQL server as")
    root = Path(tempfile.mkdtemp(prefix="nvr-pg-"))
    datadir = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(bindir, datadir, free_port())
    init = [str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
    if os.geteuid() == 0:
        init = ["runuser", "-u", "postgres", "--", *init]
    r = subprocess.run(init, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"initdb failed: {r.stdout}{r.stderr}"
    with (datadir / "postgresql.conf").open("a") as conf:  # kept by every later start and restart
        conf.write(f"\nport = {pg.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n")
        conf.write("fsync = off\nsynchronous_commit = off\n")
    r = pg.ctl("start", "-l", str(datadir / "server.log"))
    assert r.returncode == 0, f"pg_ctl start failed: {r.stdout}{r.stderr}"
    try:
        yield pg
    finally:
        pg.ctl("stop", "-m", "immediate")
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


@pytest.fixture
def private_cluster_factory(
    tmp_path, private_postgres: PrivatePostgres, demo_server, settings_factory
) -> Iterator[tuple[PrivatePostgres, ClusterFactory]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    env.update({"NVR_DATA_DIR": str(tmp_path / "data"), "NVR_DATABASE_URL": private_postgres.url})
    deadline = time.monotonic() + 30
    while True:  # pg_ctl -w returned once the server accepts connections; allow a moment on a loaded machine
        try:
            psycopg.connect(private_postgres.url, connect_timeout=3).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    clusters = _make_cluster(tmp_path, private_postgres.url, env, demo_server, settings_factory)
    yield private_postgres, next(clusters)
    next(clusters, None)


@pytest.fixture
def db_proxy(database_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A relay in front of the test's database and the URL through it, to cut one node off from PostgreSQL."""
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.close()
