"""What every ``nvr`` command shares: the Typer apps, settings and runtime, output, the CLI actor, errors.

Command modules (nvr/cli/*.py) import this module and register onto its apps; nvr/cli/__init__.py imports them
all. Nothing here imports a command module, so there is no import cycle.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nvr.config import Settings, load_settings
from nvr.errors import Kind, NvrError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evidence-grade NVR: record, keep, verify.")
camera_app = typer.Typer(no_args_is_help=True, help="The camera registry.")
volume_app = typer.Typer(no_args_is_help=True, help="Archive volumes.")
segment_app = typer.Typer(no_args_is_help=True, help="Recorded segments.")
app.add_typer(camera_app, name="camera")
app.add_typer(volume_app, name="volume")
app.add_typer(segment_app, name="segments")
user_app = typer.Typer(no_args_is_help=True, help="Real-name users of the API.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
app.add_typer(user_app, name="user")
app.add_typer(audit_app, name="audit")
retention_app = typer.Typer(no_args_is_help=True, help="Retention policies, evidence holds and the sweeper.")
app.add_typer(retention_app, name="retention")

log = logging.getLogger("nvr")
_state: dict[str, Any] = {}

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (or NVR_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def _main(config: ConfigOpt = None) -> None:
    _state["config"] = config


def settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = load_settings(_state.get("config"))
    return _state["settings"]


def runtime(migrate: bool = True):
    from nvr.runtime import Runtime, setup_logging

    st = settings()
    setup_logging(st.log_level)
    return Runtime.open(st, migrate=migrate)


def emit(data: Any, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(human)


YesOpt = Annotated[bool, typer.Option("--yes", help="Save even if the capacity forecast then warns.")]


def main() -> None:
    """Entry point: turn domain errors into a message and an exit code, never a traceback."""
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit: pass it on.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except NvrError as exc:
        typer.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(2 if exc.kind in (Kind.INVALID_ARGUMENT, Kind.NOT_FOUND, Kind.CONFLICT) else 1)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click's usage errors (typer >= 0.29 raises those of its own copy of click)
        code = getattr(exc, "exit_code", None)
        if isinstance(code, int) and callable(getattr(exc, "show", None)):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(code)
        if isinstance(code, int) and type(exc).__name__ == "Exit":
            sys.exit(code)
        raise


def cli_actor() -> Any:
    import getpass

    from api.audit import Actor

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(None, f"cli:{who}", None, None)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = typer.prompt("password", hide_input=True)
    second = typer.prompt("repeat password", hide_input=True)
    if first != second:
        raise NvrError(Kind.INVALID_ARGUMENT, "password_mismatch", "the two passwords differ")
    return first
