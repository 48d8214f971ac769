"""``nvr retention sweep``: the sweeper on demand (the server also runs it on a schedule)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, cli_actor, emit, retention_app, runtime


@retention_app.command("sweep")
def sweep(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be deleted; change nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete footage past its retention that max_days or a full volume calls for (never held, pinned or retained
    footage), finishing batches an interrupted sweep left; reports per camera. One audit event per batch."""
    from api import audit
    from retention.sweeper import Sweeper

    rt = runtime()
    report = Sweeper(rt.db, rt.settings, rt.clock, actor=cli_actor(), meta=audit.CLI).run(dry_run=dry_run)
    data = report.as_dict()
    emit(data, as_json, human(data))
    if report.errors:
        raise typer.Exit(1)


def human(data: dict[str, Any]) -> str:
    verb = "would delete" if data["dry_run"] else "deleted"
    lines = [f"{verb} {data['segments']} segment(s), {_size(data['bytes'])}, of {len(data['cameras'])} camera(s)"]
    for c in data["cameras"]:
        lines.append(
            f"  {c['camera_id']:<24} {c['segments']:>7} segment(s) {_size(c['bytes']):>10}  "
            f"seq {c['first_seq']}..{c['last_seq']}  {c['oldest_start']} .. {c['newest_end']}  "
            f"({', '.join(c['reasons'])})"
        )
    if data["resumed_batches"]:
        done = "to resume" if data["dry_run"] else "resumed"
        lines.append(f"batches {done} after an interrupted sweep: {', '.join(map(str, data['resumed_batches']))}")
    if not data["dry_run"]:
        lines.append(f"batches: {len(data['batches'])}")
    for v in data["volumes"]:
        if v["identity"] != "ok":
            lines.append(f"volume {v['path']}: skipped ({v['identity']})")
            continue
        after = "expected after" if data["dry_run"] else "after"
        mark = "  ABOVE HIGH WATER" if v["above_high_water_after"] else ""
        lines.append(
            f"volume {v['path']}: {v['used_percent_before']}% used before, {v['used_percent_after']}% {after} "
            f"(high water {v['high_water_percent']}%, low water {v['low_water_percent']}%){mark}"
        )
    lines += [f"error: {e}" for e in data["errors"]]
    return "\n".join(lines)


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
