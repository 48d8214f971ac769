"""Running the API with uvicorn, alone (``nvr api``) or beside the recorder (``nvr serve``)."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable

import uvicorn

from api.app import create_app
from api.context import Services
from nvr.runtime import Runtime

log = logging.getLogger(__name__)


def serve(rt: Runtime, job_gate: Callable[[str], bool] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn installs the handlers and returns when told to stop). ``job_gate``: the
    node's once-per-cluster job leases (nvr.cluster), for the export runner."""
    app = create_app(Services(rt.settings, rt.db, rt.clock, job_gate))
    config = uvicorn.Config(
        app,
        host=rt.settings.api_host,
        port=rt.settings.api_port,
        log_config=None,  # our logging (with credential redaction) stays in charge
        access_log=False,  # every API request that matters is in the audit trail
        proxy_headers=False,  # client addresses are the peer's until a trusted proxy is configured
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with the default handlers that would
    # kill the process before the recorder beside it finishes its open segments. Ours just lets run() return.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    # Objects made at import and start-up live for the whole run: freezing them keeps full collections (50-84 ms
    # pauses measured by bench/playback) from re-scanning them on every request path.
    gc.collect()
    gc.freeze()
    log.info("API listening on http://%s:%d (docs at /docs)", rt.settings.api_host, rt.settings.api_port)
    server.run()
