"""``nvr status``, ``nvr health`` and the long-running commands: ``record``, ``serve``, ``api``, ``demo``."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, emit, runtime

log = logging.getLogger("nvr")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Per camera: state, reason, last segment end, gaps and the share recorded in the last 24 h."""
    from nvr.status import all_status

    rt = runtime()
    with rt.db.session() as s:
        st = all_status(s, rt.clock.now_us())
    human = []
    for c in st:
        share = "-" if c.recorded_share_24h is None else f"{c.recorded_share_24h * 100:.1f}%"
        human.append(
            f"{c.camera_id:<24} {c.state:<12} last={c.last_segment_end or '-'} gaps24h={len(c.gaps_24h)} "
            f"recorded24h={share}" + (f"  ({c.reason})" if c.reason else "")
        )
    emit({"cameras": [c.as_dict() for c in st]}, as_json, "\n".join(human) or "no cameras")


@app.command()
def health() -> None:
    """Exit 0 when the database answers, no active camera's recorder is offline and no camera stopped for lack of
    space (for container checks); otherwise say what is wrong and exit 1."""
    from nvr.status import all_status
    from storage.alarms import storage_alarms

    rt = runtime(migrate=False)
    now = rt.clock.now_us()
    with rt.db.session() as s:
        st = all_status(s, now, include_inactive=False)
        alarms = storage_alarms(s, rt.settings, rt.db.database_id(), now)
    problems = []
    down = [c.camera_id for c in st if c.state == "offline"]
    if down:
        problems.append(f"recorder offline for {', '.join(down)}")
    if alarms.storage_full:
        problems.append(f"storage_full: recording stopped for {', '.join(alarms.storage_full_cameras)}")
    for v in alarms.volumes:
        if v.state in ("critical", "unavailable"):
            problems.append(f"volume {v.path} {v.state}" + (f" ({v.detail})" if v.detail else ""))
    if problems:
        typer.echo("unhealthy: " + "; ".join(problems), err=True)
        raise typer.Exit(1)
    typer.echo("ok")


# --- running ------------------------------------------------------------------------------------------------
def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        pass


@app.command()
def record() -> None:
    """Run the recorder (and the retention sweeper) only, in the foreground, until SIGINT/SIGTERM."""
    from nvr.recorder.supervisor import Supervisor

    rt = runtime()
    rt.init_default_volume()
    background, ctx = _sweeper_and_recorder(rt)
    sup = Supervisor(ctx)
    sup.start()
    log.info("recorder running; %d camera(s)", len(sup.workers))
    try:
        _wait_for_signal()
    finally:
        sup.stop()
        _stop_all(background)


def _sweeper_and_recorder(rt: Any) -> tuple[list[Any], Any]:
    """The retention sweeper runs wherever the recorder runs (the process that fills the disks), on its schedule
    and at once when a worker finds no volume with room; beside it the signed checkpoints and the scrubber."""
    from retention.sweeper import SweepScheduler

    sweeper = SweepScheduler(rt.db, rt.settings, rt.clock, trusted=rt.trusted)
    ctx = rt.recorder_context()
    if ctx.membership is not None:
        ctx.membership.join()  # refused (id in use, SQLite with another node, clock skew) before anything starts
    ctx.on_storage_full = sweeper.wake
    services = [sweeper, *_integrity_services(rt, scrub=True, start=False)]
    if ctx.membership is not None:
        # Once per cluster: the node holding each job's lease runs it (nvr.cluster); the others stand by.
        for service, job in zip(services, ("sweeper", "checkpoints", "scrubber"), strict=False):
            service.gate = _job_gate(ctx.membership, job)
            service.gate_retry_seconds = min(2.0, rt.settings.lease_timeout_seconds / 4)
    for service in services:
        service.start()
    return services, ctx


def _job_gate(membership: Any, job: str) -> Any:
    def holds() -> bool:
        return membership.job(job) is not None

    return holds


def _integrity_services(rt: Any, scrub: bool, start: bool = True) -> list[Any]:
    """Signed checkpoints on their schedule (every process that writes footage or audit events), and the
    background scrubber (where the recorder runs: it reads the disks)."""
    from integrity.checkpoints import CheckpointScheduler

    started: list[Any] = [CheckpointScheduler(rt.db, rt.settings, rt.clock, rt.settings.keys_dir, trusted=rt.trusted)]
    if scrub and rt.settings.scrub_read_mb_per_second > 0:
        from integrity.scrubber import Scrubber

        started.append(Scrubber(rt.db, rt.settings, rt.clock))
    if start:
        for service in started:
            service.start()
    return started


def _stop_all(services: list[Any]) -> None:
    for service in services:
        service.stop()


@app.command()
def serve(demo: Annotated[bool, typer.Option("--demo", help="Also run the built-in demo camera(s).")] = False) -> None:
    """Run the server: the recorder, the retention sweeper and the HTTP API (and, with --demo, simulated cameras)."""
    from api.server import serve as serve_api
    from nvr.recorder.supervisor import Supervisor

    rt = runtime()
    rt.init_default_volume()
    demo_server = None
    if demo:
        from api.audit import INTERNAL, Actor
        from api.cameras import Registrar
        from nvr.demo.service import start_demo

        registrar = Registrar(rt.settings, rt.clock, Actor(None, "demo", None, None), INTERNAL)
        demo_server = start_demo(rt.settings, rt.db, registrar)
    background, ctx = _sweeper_and_recorder(rt)
    sup = Supervisor(ctx)
    sup.start()
    log.info("server running; recording %d camera(s); data folder %s", len(sup.workers), rt.settings.data_dir)
    _hint_first_admin(rt)
    m = ctx.membership
    try:
        serve_api(rt, job_gate=None if m is None else (lambda job: m.job(job) is not None))
    finally:
        sup.stop()
        _stop_all(background)
        if demo_server is not None:
            demo_server.stop()


@app.command("api")
def api_cmd() -> None:
    """Run the HTTP API only (no recorder), until SIGINT/SIGTERM."""
    from api.server import serve as serve_api

    rt = runtime()
    _hint_first_admin(rt)
    background = _integrity_services(rt, scrub=False)
    try:
        serve_api(rt)
    finally:
        _stop_all(background)


def _hint_first_admin(rt: Any) -> None:
    from sqlalchemy import func, select

    from nvr.models import User

    with rt.db.session() as s:
        if not s.scalar(select(func.count()).select_from(User)):
            log.warning(
                "no users yet: create the first with 'nvr user create --role admin' (there is no default account)"
            )


@app.command("demo")
def demo_cmd() -> None:
    """Same as ``nvr serve --demo``: simulated RTSP cameras, registered and recorded."""
    serve(demo=True)
