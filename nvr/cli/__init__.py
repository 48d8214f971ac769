"""The ``nvr`` command line, a package: :mod:`nvr.cli.common` holds the apps and the helpers every command shares;
each other module registers one group of commands onto them. Importing this package registers them all.

Every command loads the same settings (``NVR_`` environment, optional TOML via ``--config`` or ``NVR_CONFIG``),
so all of them find the same data folder, database and volumes. Errors print ``error: <code>: <message>`` on
stderr and exit non-zero (2 for bad input, 1 for everything else); credentials never appear in any output. Every
mutation goes through the same service function as the API (api/*), which enforces the rule and writes the audit
event; the CLI's actor is ``cli:<os user>``.
"""

from nvr.cli import (  # noqa: F401  (each registers its commands)
    alerts,
    backup,
    cameras,
    capacity,
    checkpoints,
    clock,
    decrypt_export,
    holds,
    integrity,
    keys,
    locks,
    nodes,
    policies,
    serve,
    sweep,
    users,
    verify,
    verify_export,
)
from nvr.cli.common import app, main

__all__ = ["app", "main"]
