"""``nvr retention policy ...``: retention policies and camera assignment.

Changes are audited as the CLI (``cli:<login name>``). A change the capacity forecast objects to (a camera's policy
could then not be met) is shown and must be confirmed; ``--yes`` confirms in advance, and without a terminal to ask
on, an unconfirmed change is refused (``capacity_insufficient``, exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from nvr.cli.common import JsonOpt, YesOpt, cli_actor, emit, retention_app, runtime
from nvr.errors import NvrError

policy_app = typer.Typer(no_args_is_help=True, help="Retention policies: how long each camera's footage is kept.")
retention_app.add_typer(policy_app, name="policy")

T = TypeVar("T")
MinDaysOpt = Annotated[int | None, typer.Option("--min-days", help="Keep footage at least this many days.")]
MaxDaysOpt = Annotated[int | None, typer.Option("--max-days", help="Delete footage older than this (once allowed).")]
DescOpt = Annotated[str | None, typer.Option("--description", help="What the policy is for.")]


def cli_change(rt: Any, acknowledge: bool = False) -> Any:
    from integrity.audit_log import CLI
    from retention.policies import Change

    return Change(rt.settings, rt.clock.now_us(), cli_actor(), CLI, acknowledge)


def confirmed(run: Callable[[bool], T], yes: bool) -> T:
    """Run a change (``run(acknowledge)``). When the capacity forecast refuses it, show why and ask, unless ``--yes``
    was given; with no terminal to ask on, the refusal stands."""
    try:
        return run(yes)
    except NvrError as exc:
        if exc.code != "capacity_insufficient" or not sys.stdin.isatty():
            raise
        typer.echo(f"warning: {exc.message}", err=True)
        if not typer.confirm("Save anyway?", default=False):
            raise
    return run(True)


def warning_lines(warnings: list[Any]) -> str:
    return "".join(f"\nWARNING (acknowledged) {w.code}: {w.text()}" for w in warnings)


def _view(s: Any, rt: Any, p: Any) -> dict[str, Any]:
    from retention import policies

    return policies.view(s, p, rt.settings.retention_floor_days)


def _saved_view(s: Any, rt: Any, saved: Any) -> dict[str, Any]:
    return {
        **_view(s, rt, saved.policy),
        "extended_segments": saved.extended_segments,
        "capacity_warnings": [w.as_dict() for w in saved.warnings],
    }


def _describe(v: dict[str, Any]) -> str:
    days = f"min {v['min_days']}" + (
        f" (effective {v['effective_min_days']})" if v["effective_min_days"] != v["min_days"] else ""
    )
    return f"{days}, max {v['max_days'] or '-'}"


@policy_app.command("list")
def policy_list(as_json: JsonOpt = False) -> None:
    """All policies with their days and how many cameras use each (* marks the default)."""
    from retention import policies

    rt = runtime()
    with rt.db.session() as s:
        views = [_view(s, rt, p) for p in policies.list_policies(s)]
    lines = [
        f"{'*' if v['is_default'] else ' '} {v['name']:<24} {_describe(v):<32} {len(v['cameras']):>4} camera(s)"
        + (f"  {v['description']}" if v["description"] else "")
        for v in views
    ]
    emit({"policies": views}, as_json, "\n".join(lines))


@policy_app.command("show")
def policy_show(name: str, as_json: JsonOpt = False) -> None:
    """One policy and the cameras on it."""
    from retention import policies

    rt = runtime()
    with rt.db.session() as s:
        v = _view(s, rt, policies.get(s, name))
    human = "\n".join(f"{k}: {', '.join(x) if isinstance(x, list) else x}" for k, x in v.items())
    emit(v, as_json, human)


@policy_app.command("create")
def policy_create(
    name: str,
    min_days: Annotated[int, typer.Option("--min-days", help="Keep footage at least this many days (≥ the floor).")],
    max_days: MaxDaysOpt = None,
    description: DescOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A new policy; no camera uses it until one is assigned (so it needs no capacity check)."""
    from retention import policies

    rt = runtime()
    with rt.db.session() as s:
        v = _saved_view(s, rt, policies.create(s, cli_change(rt), name, min_days, max_days, description))
    emit(v, as_json, f"created policy {name} ({_describe(v)})")


@policy_app.command("update")
def policy_update(
    name: str,
    min_days: MinDaysOpt = None,
    max_days: MaxDaysOpt = None,
    no_max_days: Annotated[bool, typer.Option("--no-max-days", help="Keep footage without an upper limit.")] = False,
    description: DescOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a policy. Raising --min-days extends the retention of the cameras' existing footage; lowering it only
    affects footage finished afterwards."""
    from retention import policies

    if no_max_days and max_days is not None:
        raise typer.BadParameter("give --max-days or --no-max-days, not both")
    rt = runtime()

    def run(acknowledge: bool) -> tuple[dict[str, Any], list[Any]]:
        with rt.db.session() as s:
            saved = policies.update(
                s,
                cli_change(rt, acknowledge),
                name,
                min_days=min_days,
                max_days=None if no_max_days else policies.KEEP if max_days is None else max_days,
                description=description,
            )
            return _saved_view(s, rt, saved), saved.warnings

    v, warnings = confirmed(run, yes)
    human = f"updated policy {name} ({_describe(v)}); retain_until extended on {v['extended_segments']} segment(s)"
    emit(v, as_json, human + warning_lines(warnings))


@policy_app.command("delete")
def policy_delete(name: str) -> None:
    """Delete a policy no camera uses and that is not the default."""
    from retention import policies

    rt = runtime()
    with rt.db.session() as s:
        policies.delete(s, cli_change(rt), name)
    typer.echo(f"deleted policy {name}")


@policy_app.command("set-default")
def policy_set_default(name: str) -> None:
    """Make this the policy new cameras get (cameras already added keep theirs)."""
    from retention import policies

    rt = runtime()
    with rt.db.session() as s:
        policies.set_default(s, cli_change(rt), name)
    typer.echo(f"{name} is now the default policy")


@policy_app.command("assign")
def policy_assign(camera: str, policy: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Put a camera on a policy; one keeping footage longer extends the retention of its existing footage."""
    from retention import policies

    rt = runtime()

    def run(acknowledge: bool) -> tuple[dict[str, Any], list[Any]]:
        with rt.db.session() as s:
            saved = policies.assign(s, cli_change(rt, acknowledge), camera, policy)
            out = {
                "camera": camera,
                "policy": _view(s, rt, saved.policy),
                "extended_segments": saved.extended_segments,
                "capacity_warnings": [w.as_dict() for w in saved.warnings],
            }
            return out, saved.warnings

    v, warnings = confirmed(run, yes)
    human = f"camera {camera} is on policy {policy}; retain_until extended on {v['extended_segments']} segment(s)"
    emit(v, as_json, human + warning_lines(warnings))
