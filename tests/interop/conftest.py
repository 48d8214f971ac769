"""Interop tests against an independent RTSP server (GStreamer's gst-rtsp-server).

Without GStreamer on the machine these tests are skipped with the reason shown in the
summary (-ra); CI sets REQUIRE_GSTREAMER=1 so that a broken setup fails instead of
silently skipping. Install the prerequisites with scripts/install-system-deps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.gst import GstRtspServer, gst_unavailable_reason


def require_gstreamer() -> None:
    """Skip (or, with REQUIRE_GSTREAMER=1, fail) when GStreamer cannot be used here."""
    reason = gst_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("REQUIRE_GSTREAMER") == "1":
        pytest.fail(f"REQUIRE_GSTREAMER=1 but GStreamer is unavailable: {reason}", pytrace=False)
    pytest.skip(f"GStreamer RTSP server unavailable: {reason}")


@pytest.fixture(scope="session")
def gst_server() -> Iterator[GstRtspServer]:
    """One gst-rtsp-server for the whole session (each RTSP session gets its own pipeline,
    so tests do not disturb each other, except through restart() of a shared mount)."""
    require_gstreamer()
    with GstRtspServer() as server:
        yield server
