"""``nvr node list|pin``: the recorder nodes of a cluster, their leases and load (nvr.cluster)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, emit, runtime

node_app = typer.Typer(
    no_args_is_help=True,
    help="Recorder nodes sharing one database: list them with their state, load and leases; pin a camera to nodes.",
)
app.add_typer(node_app, name="node")


def human(view: dict[str, Any]) -> str:
    lines = []
    for n in view["nodes"]:
        labels = ",".join(n["labels"]) or "-"
        lines.append(
            f"{n['id']:<20} {n['state']:<8} cameras={n['cameras']:<4} heartbeat {n['heartbeat_age_s']:.1f} s ago  "
            f"skew {n['clock_skew_s']:+.3f} s  labels={labels}  {n['hostname']} pid {n['pid']}"
            + (f"  {n['api_url']}" if n["api_url"] else "")
        )
    for lease in view["leases"]:
        holder = lease["node_id"] or "(free)"
        expiry = f"expires in {lease['expires_in_s']:.1f} s" if lease["expires_in_s"] is not None else "expired"
        pin = f"  pinned to {lease['placement']}" if lease["placement"] else ""
        lines.append(f"  {lease['resource']:<40} {holder:<20} token {lease['token']:<6} {expiry}{pin}")
    return "\n".join(lines) or "no node has run yet"


@node_app.command("list")
def node_list(as_json: JsonOpt = False) -> None:
    """Every node (alive, dead or stopped), its cameras and clock skew, and who holds each camera and job lease."""
    from nvr.cluster import cluster_view

    rt = runtime()
    with rt.db.session() as s:
        view = cluster_view(s, int(rt.settings.lease_timeout_seconds * 1_000_000), rt.clock.now_us)
    emit(view, as_json, human(view))


@node_app.command("pin")
def node_pin(
    camera_id: str,
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Node ids or labels (e.g. site:north); none: any node again.")
    ] = None,
) -> None:
    """Record CAMERA_ID only on the given nodes or on nodes carrying the given labels (none: on any node). The
    camera moves at the next sync if its current node does not match."""
    from integrity import audit_log
    from nvr.cli.common import cli_actor
    from nvr.cluster import set_placement

    rt = runtime()
    with rt.db.session() as s:
        placement = set_placement(s, camera_id, nodes or [])
        audit_log.record(
            s,
            rt.clock.now_us(),
            cli_actor(),
            audit_log.CLI,
            audit_log.Event("camera.placement", "ok", camera_id=camera_id, reason=f"placement={placement or 'any'}"),
        )
    typer.echo(f"camera {camera_id}: recorded on {placement or 'any node'}")
