"""``nvr retention hold ...``: evidence holds, read-only.

Placing and releasing holds are deliberately API-only: a hold records who placed it, and a release needs two
different authenticated people, while the command line only knows the operating-system account running it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, emit, retention_app, runtime

hold_app = typer.Typer(
    no_args_is_help=True,
    help="Evidence holds (read-only). Placing and releasing a hold are done through the API "
    "(POST /api/v1/holds, .../release-request, .../release-confirm): the API knows which person acts, and a "
    "release needs two different people with the release permission.",
)
retention_app.add_typer(hold_app, name="hold")


def _line(h: dict[str, Any]) -> str:
    covered = sum(c["segments"] for c in h["covered"])
    return (
        f"{h['id']:>5} {h['state']:<17} {h['case_ref']:<20} {','.join(h['cameras']):<24} "
        f"{h['start']} .. {h['end'] or 'until released'}  {covered} segment(s)  {h['title']}"
    )


def _details(h: dict[str, Any]) -> str:
    lines = [
        f"hold {h['id']}: {h['title']} ({h['state']})",
        f"  case:      {h['case_ref']}",
        f"  reason:    {h['reason']}",
        f"  window:    {h['start']} .. {h['end'] or 'until released'}",
        f"  placed:    {h['placed_at']} by {h['placed_by']}",
    ]
    if h["release_requested_at"]:
        lines.append(
            f"  release:   asked {h['release_requested_at']} by {h['release_requested_by']}: {h['release_reason']}"
        )
    if h["released_at"]:
        lines.append(f"  released:  {h['released_at']} by {h['released_by']}")
    for c in h["covered"]:
        what = (
            f"seq {c['first_seq']}..{c['last_seq']}, {c['start']} .. {c['end']}, {c['segments']} segment(s), "
            f"{c['bytes']} bytes"
            if c["segments"]
            else "nothing recorded in the window yet"
        )
        lines.append(f"  {c['camera_id']}: {what}")
    return "\n".join(lines)


@hold_app.command("list")
def hold_list(
    camera: Annotated[str | None, typer.Option("--camera", help="Only holds naming this camera.")] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="Only holds in this state: active, release_requested, released.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evidence holds, oldest first, with what each covers."""
    from retention import holds

    rt = runtime()
    with rt.db.session() as s:
        views = [holds.view(s, h) for h in holds.list_holds(s, camera_id=camera, state=state)]
    emit({"holds": views}, as_json, "\n".join(_line(h) for h in views) or "no holds")


@hold_app.command("show")
def hold_show(hold_id: int, as_json: JsonOpt = False) -> None:
    """One hold: case, reason, window, who placed it, release steps and the exact covered segments."""
    from retention import holds

    rt = runtime()
    with rt.db.session() as s:
        h = holds.view(s, holds.get(s, hold_id))
    emit(h, as_json, _details(h))
