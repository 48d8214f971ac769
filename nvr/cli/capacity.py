"""``nvr capacity``: the capacity forecast (:mod:`retention.capacity`, docs/retention/policies.md).

Exits 0 even when a camera's policy cannot be met: the forecast is information, not a failure of the command.
The warnings are printed last, one ``WARNING`` line each, so they are hard to miss and easy to grep.
"""

from __future__ import annotations

from typing import Any

from nvr.cli.common import JsonOpt, app, emit, runtime


def size(n: float | None) -> str:
    """Bytes for people: 1000-based units, as disks are sold."""
    if n is None:
        return "-"
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def _days(d: float | None) -> str:
    return "-" if d is None else f"{d:.1f}"


def _volume_lines(v: dict[str, Any]) -> list[str]:
    head = f"volume {v['path']}" + (f" ({v['id']})" if v["id"] else "")
    if v["error"]:
        return [f"{head}: {v['error']} (no figures)"]
    return [
        head,
        f"  free {size(v['free_bytes'])} of {size(v['total_bytes'])}, "
        f"critical reserve {size(v['critical_reserve_bytes'])}",
        f"  footage {size(v['footage_bytes'])}: held {size(v['held_bytes'])}, deletable now "
        f"{size(v['deletable_now_bytes'])}",
        f"  usable for footage {size(v['usable_bytes'])}; intake {size(v['bytes_per_day'])}/day"
        + (f", about {_days(v['days_at_current_rate'])} days at that rate" if v["days_at_current_rate"] else ""),
    ]


def _camera_line(c: dict[str, Any]) -> str:
    rate = (
        "-" if c["bytes_per_day"] is None else f"{size(c['bytes_per_day'])}/day" + (" (est.)" if c["estimated"] else "")
    )
    line = (
        f"  {c['camera']:<24} {c['policy']:<16} {c['min_days']:>6} {c['max_days'] or '-':>6} {rate:>16} "
        f"{_days(c['holds_days']):>10}"
    )
    return line + (f"  {c['note']}" if c["note"] else "")


def human(f: dict[str, Any]) -> str:
    lines = [f"capacity at {f['at']} (rates from the last {f['window_days']} days; floor {f['floor_days']} days)"]
    for v in f["volumes"]:
        lines += _volume_lines(v)
    lines.append(f"  {'camera':<24} {'policy':<16} {'min':>6} {'max':>6} {'bytes/day':>16} {'holds days':>10}")
    lines += [_camera_line(c) for c in f["cameras"]]
    lines += [
        f"WARNING {w['code']}: camera {w['camera']} needs {w['needs_days']} days, volume {w['volume']} holds only "
        f"{w['holds_days']:.1f} days"
        for w in f["warnings"]
    ]
    if not f["warnings"]:
        lines.append("no warnings: every measured camera's policy can be met")
    return "\n".join(lines)


@app.command()
def capacity(as_json: JsonOpt = False) -> None:
    """Days of footage each volume can keep per camera, from measured bytes per day, and whose policy cannot be
    met (exit 0 even then; the warnings are printed last)."""
    from retention import capacity as cap

    rt = runtime()
    with rt.db.session() as s:
        found = cap.forecast(s, rt.settings, rt.clock.now_us(), rt.settings.effective_volumes).as_dict()
    emit(found, as_json, human(found))
