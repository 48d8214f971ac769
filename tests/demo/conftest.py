"""A small pattern (fast to encode) shared by the demo tests, and a running server per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nvr.demo.pattern import Pattern, encode_pattern
from nvr.demo.rtsp import DemoRtspServer

FPS = 25
GOP_SECONDS = 1
LOOP_SECONDS = 2
WIDTH, HEIGHT = 320, 180


@pytest.fixture(scope="session")
def pattern_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pattern-cache")


@pytest.fixture(scope="session")
def small_pattern(pattern_cache: Path) -> Pattern:
    return encode_pattern(WIDTH, HEIGHT, FPS, GOP_SECONDS, LOOP_SECONDS, 300_000, cache_dir=pattern_cache)


@pytest.fixture
def server(small_pattern: Pattern) -> Iterator[DemoRtspServer]:
    with DemoRtspServer(mounts={"cam1": small_pattern, "cam2": small_pattern}) as srv:
        yield srv
