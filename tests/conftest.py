"""Shared fixtures: a real database (SQLite file, or PostgreSQL when TEST_DATABASE_URL says so), migrated the way
production is, fresh per test; a temporary data folder; an injectable clock."""

from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from nvr.config import Settings
from nvr.db import Database
from nvr.demo.pattern import Pattern, encode_pattern
from nvr.recorder.supervisor import Supervisor
from nvr.runtime import Runtime
from tests.support.recording import FPS, GOP_S

# Not NVR_-prefixed on purpose: the product refuses unknown NVR_ variables.
PG_URL = os.environ.get("TEST_DATABASE_URL")


def _fresh_pg_database(base_url: str) -> tuple[str, str]:
    name = f"nvr_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(base_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(make_url(base_url).set(database=name).render_as_string(hide_password=False)), name


def _drop_pg_database(base_url: str, name: str) -> None:
    admin = create_engine(make_url(base_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_READS_ENGINE = re.compile(r"\b(?:TEST_DATABASE_URL|PG_URL)\b")
"""How a test or fixture that picks the engine itself shows it: it names the variable (or this module's copy)."""


def _engine_dependent(item: pytest.Item) -> bool:
    """Whether ``item``'s outcome can depend on the pass's engine (see pytest_collection_modifyitems). Anything this
    cannot inspect counts as dependent, so a doubt costs a PostgreSQL run rather than a lost one."""
    if item.get_closest_marker("database_any") is not None:
        return True
    fixturenames = getattr(item, "fixturenames", None)
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    function = getattr(item, "function", None)
    if fixturenames is None or fixtureinfo is None or function is None:
        return True
    if "database_url" in fixturenames:
        return True
    code = [function] + [d.func for defs in fixtureinfo.name2fixturedefs.values() for d in defs]
    for obj in code:
        try:
            source = _source(obj)
        except (OSError, TypeError):
            return True
        if _READS_ENGINE.search(source):
            return True
    return False


@functools.cache
def _source(obj: Callable[..., object]) -> str:
    return inspect.getsource(obj)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Which tests each pass of scripts/test runs; the others are deselected, not skipped, so neither pass reports
    a skip that is not one.

    ``@pytest.mark.database("sqlite"|"postgresql")``: a test of one engine's own tool (SQLite's backup API,
    pg_dump) runs in that engine's pass only.

    The PostgreSQL pass (TEST_DATABASE_URL set) runs only the tests whose outcome can depend on the engine; any
    other test runs the very same code in both passes, so the SQLite pass alone runs it. A test is engine-dependent
    when any of these holds:

    - the ``database_url`` fixture is in its fixture closure (directly, or through ``settings_factory``,
      ``runtime``, ``db``, ``nvr_env``, ``api``, ... -- everything here that opens the database or points an
      ``nvr`` subprocess at it goes through ``database_url``);
    - the test function or one of its fixtures names ``TEST_DATABASE_URL`` or ``PG_URL`` in its source (a test
      that picks the engine itself, such as tests/test_bench_quick.py passing it to a benchmark's ``--db``);
    - it is marked ``@pytest.mark.database("postgresql")`` or ``@pytest.mark.database_any`` -- the marker to
      use when a test reaches the engine some other way, e.g. through a helper that reads TEST_DATABASE_URL,
      which the source check above does not follow;
    - its source or fixture information cannot be inspected.

    A test that opens a database of its own without any of these (``sqlite:///`` in its temporary folder, an
    ``nvr`` subprocess left on its default SQLite file) uses SQLite in both passes, so it is not engine-dependent.
    """
    engine = "postgresql" if PG_URL else "sqlite"
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("database")
        only = marker.args[0] if marker is not None else None
        selected = only == engine if only else engine == "sqlite" or _engine_dependent(item)
        (keep if selected else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def pattern(tmp_path_factory: pytest.TempPathFactory) -> Pattern:
    """The demo camera's clip (320x180, 25 fps, a keyframe a second), encoded once per test process: what the
    recorder and cluster tests' demo RTSP servers send."""
    return encode_pattern(
        width=320,
        height=180,
        fps=FPS,
        gop_seconds=GOP_S,
        seconds=2,
        bitrate=300_000,
        cache_dir=tmp_path_factory.mktemp("pattern"),
    )


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A brand-new, empty database for one test."""
    if PG_URL:
        url, name = _fresh_pg_database(PG_URL)
        yield url
        _drop_pg_database(PG_URL, name)
    else:
        yield f"sqlite:///{tmp_path / 'nvr.db'}"


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str):
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "segment_seconds": 2.0,
            "rtsp_timeout_seconds": 3.0,
            "reconnect_min_seconds": 0.2,
            "reconnect_max_seconds": 1.0,
            "volume_min_free_bytes": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def runtime(settings_factory) -> Iterator[Runtime]:
    rt = Runtime.open(settings_factory())
    rt.init_default_volume()
    yield rt
    rt.db.dispose()


@pytest.fixture
def db(runtime: Runtime) -> Database:
    return runtime.db


@pytest.fixture
def nvr_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """Environment for running the ``nvr`` command as a subprocess against the test's data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    env.update({"NVR_DATA_DIR": str(tmp_path / "data"), "NVR_DATABASE_URL": database_url})
    return env


@pytest.fixture
def supervisor_factory(runtime: Runtime) -> Iterator[Callable[[], Supervisor]]:
    started: list[Supervisor] = []

    def make() -> Supervisor:
        sup = Supervisor(runtime.recorder_context(), sync_seconds=0.5)
        sup.start()
        started.append(sup)
        return sup

    yield make
    for sup in started:
        sup.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount real size-limited file systems (tmpfs; the suite runs as root, as scripts/test needs anyway) to test
    full disks; unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a size-limited tmpfs (the tests need root): {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def runtime_on(settings_factory) -> Iterator[Callable[..., Runtime]]:
    """Runtimes whose only volume is a given folder (a small file system); disposed after the test."""
    from storage import volumes as vol

    made: list[Runtime] = []

    def make(mnt: Path, **overrides: object) -> Runtime:
        rt = Runtime.open(settings_factory(volumes=[mnt], **overrides))
        made.append(rt)
        with rt.db.session() as s:
            vol.init_volume(s, mnt, rt.db.database_id(), rt.clock.now_us())
        return rt

    yield make
    for rt in made:
        rt.db.dispose()
