"""``nvr serve --demo``: simulated cameras served over RTSP inside the process, registered and recorded.

The cameras are ordinary registry entries (``demo-1`` … ``demo-N``, unit "Demo"), so everything downstream, the
recorder, status, and later the API, treats them exactly as it treats a real camera. They are registered through
a :class:`Registrar` the caller hands in (``nvr serve --demo``: api.cameras.Registrar, the audited service
functions), so their changes are audit events like any other camera's.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.orm import Session

from nvr import registry
from nvr.config import Settings
from nvr.db import Database
from nvr.demo.pattern import encode_pattern
from nvr.demo.rtsp import DemoRtspServer
from nvr.models import Camera

log = logging.getLogger(__name__)
DEMO_UNIT = "Demo"


class Registrar(Protocol):
    """How the demo changes the registry (each call writes its own audit event in ``s``)."""

    def add(self, s: Session, camera_id: str, fields: registry.CameraFields) -> None: ...

    def update(self, s: Session, camera_id: str, fields: registry.CameraFields) -> None: ...

    def transition(self, s: Session, camera_id: str, to_state: str) -> None: ...


def start_demo(settings: Settings, db: Database, registrar: Registrar) -> DemoRtspServer:
    pattern = encode_pattern(
        width=settings.demo_width,
        height=settings.demo_height,
        fps=settings.demo_fps,
        gop_seconds=2,
        seconds=10,
        bitrate=settings.demo_bitrate,
        cache_dir=settings.data_dir / "cache",
    )
    names = [f"demo-{i}" for i in range(1, settings.demo_cameras + 1)]
    server = DemoRtspServer(
        host=settings.demo_rtsp_host, port=settings.demo_rtsp_port, mounts=dict.fromkeys(names, pattern)
    )
    server.start()
    with db.session() as s:
        for name in names:
            url = server.url(name)
            cam = s.get(Camera, name)
            if cam is None:
                registrar.add(
                    s,
                    name,
                    registry.CameraFields(
                        name=f"Demo camera {name.split('-')[1]}",
                        stream_url=url,
                        managing_unit=DEMO_UNIT,
                        installation_notes="built-in simulated camera (nvr serve --demo)",
                        share_class="authorized",
                    ),
                )
            elif cam.stream_url != url and cam.state != "decommissioned":
                registrar.update(s, name, registry.CameraFields(stream_url=url))
            cam = registry.get(s, name)
            if cam.state in ("registered", "suspended") and cam.managing_unit == DEMO_UNIT:
                registrar.transition(s, name, "active")
    log.info("demo: %d simulated camera(s) at rtsp://%s:%d/demo-N", len(names), settings.demo_rtsp_host, server.port)
    return server
