"""Recorder test harness: the built-in demo RTSP server as the camera, the real supervisor as the recorder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nvr.demo.pattern import Pattern
from nvr.demo.rtsp import DemoRtspServer


@pytest.fixture
def demo_server(pattern: Pattern) -> Iterator[DemoRtspServer]:
    server = DemoRtspServer(mounts={"cam1": pattern, "cam2": pattern, "cam3": pattern})
    server.start()
    yield server
    server.stop()
