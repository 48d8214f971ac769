"""Health details and Prometheus metrics: storage alarms (``storage_full`` with the cameras it stopped), volumes,
recorder states. For the people who keep the system running (``system.monitor``: admins and operators).

The anonymous ``GET /health`` (api/routes/auth.py) says only ``ok`` or ``degraded`` and the alarm codes; which
cameras are affected is camera information, so it is shown here, to a logged-in monitor, and audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from api import alerts, audit
from api.context import Ctx, anonymous, requires
from api.routes.capacity import camera_scope
from api.routes.models import CameraRecordingStatus, CameraStatusList
from integrity import trusted_time
from integrity.scrubber import metric_families
from integrity.trusted_time import ClockStatus
from nvr.clock import parse_iso
from nvr.cluster import cluster_view
from nvr.models import Camera, RecorderState, Segment
from nvr.status import STALE_US, CameraStatus, all_status
from storage.alarms import StorageAlarms, storage_alarms

router = APIRouter(tags=["system"])
RECORDER_STATES = ("recording", "reconnecting", "error", "offline")


def clock_now(ctx: Ctx) -> ClockStatus:
    """This process's trusted time (integrity.trusted_time), after a look for a newer anchor (``nvr clock
    confirm`` elsewhere)."""
    trusted = trusted_time.shared(ctx.db, ctx.settings, ctx.services.clock)
    trusted.refresh()
    return trusted.status()


def alarms_now(ctx: Ctx) -> StorageAlarms:
    clock = clock_now(ctx)
    with ctx.db.session() as s:
        return storage_alarms(s, ctx.settings, ctx.db.database_id(), ctx.now_us, clock)


def alerts_open(ctx: Ctx) -> dict[str, int]:
    """Open abnormal-use alerts per rule (api.alerts)."""
    with ctx.db.session() as s:
        return alerts.open_counts(s)


def alert_codes(by_rule: dict[str, int]) -> list[str]:
    """``abnormal_use`` while any alert is open; how many, and of which rule, only for monitors."""
    return ["abnormal_use"] if any(by_rule.values()) else []


@router.get("/health")
def health(ctx: Annotated[Ctx, Depends(anonymous("health"))]) -> dict[str, Any]:
    """Liveness for load balancers and a first look for people: no login, not audited. ``status`` is ``ok`` or
    ``degraded``, with the alarm codes (``storage_full``, ``volume_critical``, ``volume_unavailable``,
    ``integrity_mismatch``, ``checkpoints_stale``, ``clock_untrusted``, ``abnormal_use``: an abnormal-use alert is
    open); which cameras and volumes are affected, how far the clock is ahead and how many alerts of which rule are
    open is at ``GET /system/health``."""
    codes = alarms_now(ctx).codes + alert_codes(alerts_open(ctx))
    return {"status": "degraded" if codes else "ok", "alarms": codes}


@router.get("/system/health")
def system_health(ctx: Annotated[Ctx, Depends(requires("system.health", "system.monitor"))]) -> dict[str, Any]:
    """Alarms with the cameras and volumes they concern: ``storage_full`` lists the cameras whose recording
    stopped because no volume had room; each volume says ``ok``, ``high_water``, ``critical`` or ``unavailable``;
    ``clock`` is the trusted time (``clock_untrusted``: the wall clock is ``ahead_seconds`` ahead of it, beyond the
    tolerance, and retention deletes nothing)."""
    found = alarms_now(ctx)
    by_rule = alerts_open(ctx)
    codes = found.codes + alert_codes(by_rule)
    with ctx.db.session() as s:
        ctx.record(s, audit.Event("system.health", "allowed", reason=",".join(codes) or "ok"))
    alert_counts = {"open": sum(by_rule.values()), "by_rule": by_rule}
    return {"status": "degraded" if codes else "ok", **found.as_dict(), "alarms": codes, "alerts": alert_counts}


@router.get("/nodes")
def nodes(ctx: Annotated[Ctx, Depends(requires("system.nodes", "system.monitor"))]) -> dict[str, Any]:
    """The recorder nodes sharing this database (nvr.cluster), as ``nvr node list --json`` shows them: each node's
    state (``alive``, ``dead``: no heartbeat within the lease timeout, ``stopped``), load and clock skew, and who
    holds each camera and job lease with its fencing token."""
    with ctx.db.session() as s:
        view = cluster_view(s, int(ctx.settings.lease_timeout_seconds * 1_000_000), ctx.services.clock.now_us)
        ctx.record(s, audit.Event("system.nodes", "allowed"))
    return view


# Gaps caused on this side (no room, a missing volume, the recorder itself stopped or failing): the camera was
# reachable, so they lower recording completeness but not the camera's online rate.
OUR_SIDE_GAP_REASONS = frozenset({"storage_full", "volume_unavailable", "internal_error", "recorder_stopped"})


def online_share(st: CameraStatus, now_us: int) -> float | None:
    """The share of the window ``nvr status`` measures completeness over (the camera's active part of the last
    24 h) that lies outside every gap the camera or its network caused; None when the camera was never active."""
    if st.window_start is None:
        return None
    base = parse_iso(st.window_start)
    if now_us <= base:
        return None
    down = sorted(
        (max(parse_iso(g.start) if g.start else base, base), min(parse_iso(g.end) if g.end else now_us, now_us))
        for g in st.gaps_24h
        if g.reason not in OUR_SIDE_GAP_REASONS
    )
    lost, reached = 0, base
    for start, end in down:  # union of the intervals, so overlapping gaps count once
        start = max(start, reached)
        if end > start:
            lost += end - start
            reached = end
    return round(max(0.0, 1 - lost / (now_us - base)), 4)


@router.get("/system/cameras")
def camera_status_list(
    ctx: Annotated[Ctx, Depends(requires("system.cameras", "system.monitor"))],
) -> CameraStatusList:
    """Each camera's recording status as ``nvr status`` shows it (recorder state, gaps of the last 24 h, recording
    completeness ``recorded_share_24h``) and its online rate ``online_share_24h``. Cameras as ``GET /cameras``
    shows them: admins all, operators the cameras a grant of theirs covers now."""
    now = ctx.now_us
    with ctx.db.session() as s:
        scope = camera_scope(s, ctx.me, now)
        found = [st for st in all_status(s, now) if scope is None or st.camera_id in scope]
        ctx.record(s, audit.Event("system.cameras", "allowed", reason=f"{len(found)} camera(s)"))
    return CameraStatusList(
        cameras=[CameraRecordingStatus(**st.as_dict(), online_share_24h=online_share(st, now)) for st in found]
    )


class _Collector:
    """Computed at scrape time from the database and the volumes, so every process reports the same truth."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def collect(self):  # type: ignore[no-untyped-def]
        ctx = self.ctx
        now = ctx.now_us
        clock = clock_now(ctx)
        with ctx.db.session() as s:
            found = storage_alarms(s, ctx.settings, ctx.db.database_id(), now, clock)
            integrity = metric_families(s)
            open_alerts = alerts.open_counts(s)
            states = dict(
                s.execute(
                    select(RecorderState.camera_id, RecorderState.state)
                    .join(Camera, Camera.id == RecorderState.camera_id)
                    .where(Camera.state == "active", RecorderState.heartbeat_us >= now - STALE_US)
                ).all()
            )
            active = list(s.scalars(select(Camera.id).where(Camera.state == "active").order_by(Camera.id)))
            stored = dict(
                s.execute(
                    select(Segment.camera_id, func.sum(Segment.bytes))
                    .where(Segment.sweep_batch_id.is_(None))
                    .group_by(Segment.camera_id)
                ).all()
            )
            # Per-camera labels follow the camera listing's visibility (api.routes.capacity.camera_scope).
            scope = camera_scope(s, ctx.me, now)
            if scope is not None:
                active = [c for c in active if c in scope]
                stored = {c: n for c, n in stored.items() if c in scope}
        full = GaugeMetricFamily(
            "nvr_storage_full", "1 when recording of the camera stopped because no volume had room", labels=["camera"]
        )
        for cam in active:
            full.add_metric([cam], 1.0 if cam in found.storage_full_cameras else 0.0)
        yield full
        yield GaugeMetricFamily(
            "nvr_storage_full_cameras", "Cameras stopped by storage_full", value=len(found.storage_full_cameras)
        )
        rec = GaugeMetricFamily(
            "nvr_recorder_state", "1 for the recorder state of each active camera", labels=["camera", "state"]
        )
        for cam in active:
            current = states.get(cam, "offline")
            for st in RECORDER_STATES:
                rec.add_metric([cam, st], 1.0 if current == st else 0.0)
        yield rec
        size = GaugeMetricFamily("nvr_camera_stored_bytes", "Footage bytes kept per camera", labels=["camera"])
        for cam, total in sorted(stored.items()):
            size.add_metric([cam], float(total or 0))
        yield size
        free = GaugeMetricFamily("nvr_volume_free_bytes", "Free bytes on each volume", labels=["volume"])
        total = GaugeMetricFamily("nvr_volume_total_bytes", "Size of each volume", labels=["volume"])
        state = GaugeMetricFamily("nvr_volume_state", "1 for the state of each volume", labels=["volume", "state"])
        for v in found.volumes:
            if v.free_bytes is not None and v.total_bytes is not None:
                free.add_metric([v.path], float(v.free_bytes))
                total.add_metric([v.path], float(v.total_bytes))
            for st in ("ok", "high_water", "critical", "unavailable"):
                state.add_metric([v.path, st], 1.0 if v.state == st else 0.0)
        yield free
        yield total
        yield state
        yield GaugeMetricFamily(
            "nvr_clock_untrusted",
            "1 while the wall clock runs ahead of the trusted time beyond the tolerance (retention deletes nothing)",
            value=0.0 if clock.trusted else 1.0,
        )
        yield GaugeMetricFamily(
            "nvr_clock_ahead_seconds",
            "Wall clock minus the trusted time (newest signed checkpoint plus monotonic time since); negative: behind",
            value=clock.ahead_seconds,
        )
        yield from integrity
        alert_gauge = GaugeMetricFamily("nvr_alerts_open", "Open abnormal-use alerts per rule", labels=["rule"])
        for rule, n in open_alerts.items():
            alert_gauge.add_metric([rule], float(n))
        yield alert_gauge


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
)
def metrics(ctx: Annotated[Ctx, Depends(requires("system.metrics", "system.monitor"))]) -> Response:
    """Prometheus metrics (scrape with a personal token of an admin or operator). Scrapes are not audited one by
    one: they carry no footage, and a scrape every 15 s would drown the audit trail."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(ctx))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")
