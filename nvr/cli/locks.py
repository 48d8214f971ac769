"""``nvr login-locks``: the login throttle's keys (api.throttle), listed and unlocked on the command line.

The same service functions as ``GET /api/v1/auth/login-locks`` and ``POST …/unlock``: an unlock is audited
``auth.login.unlock`` with the CLI's actor. This is the way back in when every admin account is locked out.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime

locks_app = typer.Typer(no_args_is_help=True, help="Login throttling: locked accounts and addresses.")
app.add_typer(locks_app, name="login-locks")


def _now(rt: Any) -> int:
    """The time the API decides access by (never earlier than the trusted bound): the same lock is seen locked."""
    return int(rt.trusted.access_now_us())


def _line(v: dict[str, Any]) -> str:
    state = f"locked until {v['locked_until']} ({v['retry_after_seconds']} s)" if v["locked"] else "not locked"
    return f"{v['key']:<48} {v['failures']:>5} failures  last {v['last_attempt']}  {state}"


@locks_app.command("list")
def locks_list(
    everything: Annotated[
        bool, typer.Option("--all", help="Every key with failed logins, not only locked ones.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Keys locked now: ``user:<name>`` (an account name as given) and ``addr:<address>`` (IPv6: its /64)."""
    from api import throttle

    rt = runtime()
    with rt.db.session() as s:
        rows = throttle.list_locks(s, _now(rt), everything=everything)
    emit({"locks": rows}, as_json, "\n".join(_line(v) for v in rows) or "no login locks")


@locks_app.command("unlock")
def locks_unlock(key: str, as_json: JsonOpt = False) -> None:
    """Clear KEY's failed logins and lock (e.g. ``user:chief`` or ``addr:10.0.0.5``); audited."""
    from api import audit, throttle

    rt = runtime()
    with rt.db.session() as s:
        view = throttle.unlock(s, cli_actor(), audit.CLI, _now(rt), key)
    was = f"was locked until {view['locked_until']}" if view["locked"] else "was not locked"
    emit(view, as_json, f"unlocked {key}: cleared {view['failures']} failed logins ({was})")
