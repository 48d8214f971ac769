"""Recorder test harness: the built-in demo RTSP server as the camera, the real supervisor as the recorder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nvr.demo.pattern import Pattern, encode_pattern
from nvr.demo.rtsp import DemoRtspServer
from tests.support.recording import FPS, GOP_S


@pytest.fixture(scope="session")
def pattern(tmp_path_factory: pytest.TempPathFactory) -> Pattern:
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
def demo_server(pattern: Pattern) -> Iterator[DemoRtspServer]:
    server = DemoRtspServer(mounts={"cam1": pattern, "cam2": pattern, "cam3": pattern})
    server.start()
    yield server
    server.stop()
