"""The ``nvr`` command line.

Every command loads the same settings (``NVR_`` environment, optional TOML via ``--config`` or ``NVR_CONFIG``),
so all of them find the same data folder, database and volumes. Errors print ``error: <code>: <message>`` on
stderr and exit non-zero (2 for bad input, 1 for everything else); credentials never appear in any output.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from nvr.clock import iso
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


def _settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = load_settings(_state.get("config"))
    return _state["settings"]


def _runtime(migrate: bool = True):
    from nvr.runtime import Runtime, setup_logging

    s = _settings()
    setup_logging(s.log_level)
    return Runtime.open(s, migrate=migrate)


def _emit(data: Any, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(human)


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


# --- init and volumes ---------------------------------------------------------------------------------------
@app.command()
def init() -> None:
    """Create the data folder, the database schema and the default volume."""
    from integrity import audit_log, keys
    from integrity.signing import format_fingerprint

    rt = _runtime()
    rt.init_default_volume()
    with rt.db.session() as s:
        key = keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), actor=_cli_actor(), meta=audit_log.CLI)
        key_id, fingerprint = key.key_id, key.fingerprint
    typer.echo(f"data folder {rt.settings.data_dir} ready (database id {rt.db.database_id()})")
    typer.echo(f"signing key {key_id}, fingerprint {fingerprint}")
    typer.echo(f"  (read aloud: {format_fingerprint(fingerprint)}); give it to bundle recipients separately")


@volume_app.command("init")
def volume_init(path: Path) -> None:
    """Make an empty folder a volume of this database (writes its identity file)."""
    from storage import volumes as vol

    rt = _runtime()
    with rt.db.session() as s:
        info = vol.init_volume(s, path, rt.db.database_id(), rt.clock.now_us())
    typer.echo(f"volume {info.id} at {info.path}")


@volume_app.command("list")
def volume_list(as_json: JsonOpt = False) -> None:
    """Volumes with their identity state, free space and bytes per camera."""
    from sqlalchemy import select

    from nvr.models import Volume
    from storage import volumes as vol

    rt = _runtime()
    out = []
    with rt.db.session() as s:
        for v in s.scalars(select(Volume).order_by(Volume.path)):
            path = Path(v.path)
            try:
                vol.check_volume(path, rt.db.database_id(), v.id)
                identity, free = "ok", vol.free_bytes(path)
            except NvrError as exc:
                identity, free = exc.code, None
            out.append(
                {
                    "id": v.id,
                    "path": v.path,
                    "identity": identity,
                    "free_bytes": free,
                    "configured": path in rt.settings.effective_volumes,
                    "bytes_per_camera": vol.bytes_per_camera(s, v.id),
                }
            )
    lines = [
        f"{o['path']}  {o['identity']}  free={o['free_bytes']}  "
        + " ".join(f"{c}={b}" for c, b in sorted(o["bytes_per_camera"].items()))
        for o in out
    ]
    _emit(out, as_json, "\n".join(lines) or "no volumes")


# --- cameras ------------------------------------------------------------------------------------------------
def _fields(name, url, unit, address, lat, lon, notes, share):
    from nvr.registry import CameraFields

    return CameraFields(
        name=name,
        stream_url=url,
        managing_unit=unit,
        address=address,
        latitude=lat,
        longitude=lon,
        installation_notes=notes,
        share_class=share,
    )


NameOpt = Annotated[str | None, typer.Option(help="Display name.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="rtsp:// URL; may carry credentials, never printed.")]
UnitOpt = Annotated[str | None, typer.Option("--unit", help="Managing unit.")]
AddrOpt = Annotated[str | None, typer.Option(help="Street address.")]
LatOpt = Annotated[float | None, typer.Option("--lat", help="Latitude.")]
LonOpt = Annotated[float | None, typer.Option("--lon", help="Longitude.")]
NotesOpt = Annotated[str | None, typer.Option("--notes", help="Installation notes.")]
ShareOpt = Annotated[str | None, typer.Option("--share-class", help="unconditional | authorized | non_shared")]


PolicyOpt = Annotated[str | None, typer.Option("--policy", help="Retention policy (default: the default one).")]
YesOpt = Annotated[bool, typer.Option("--yes", help="Save even if the capacity forecast then warns.")]


@camera_app.command("add")
def camera_add(
    camera_id: str,
    name: NameOpt = None,
    url: UrlOpt = None,
    unit: UnitOpt = None,
    address: AddrOpt = None,
    lat: LatOpt = None,
    lon: LonOpt = None,
    notes: NotesOpt = None,
    share_class: ShareOpt = None,
    policy: PolicyOpt = None,
    activate: Annotated[bool, typer.Option(help="Start recording at once.")] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a camera (id: 20-digit GB/T 28181 code or a slug) on a retention policy. If the capacity forecast
    says a policy could then not be met, it asks first (--yes: do not ask; no terminal: refuse)."""
    from api import cameras
    from nvr import registry
    from nvr.cli_policies import cli_change, confirmed, warning_lines

    fields = _fields(name, url, unit, address, lat, lon, notes, share_class)
    rt = _runtime()

    def run(acknowledge: bool) -> tuple[dict[str, Any], list[Any]]:
        with rt.db.session() as s:
            made = cameras.create_camera(
                s, cli_change(rt, acknowledge), camera_id, fields, policy=policy, activate=activate
            )
            view = registry.public_view(made.camera)
            view["policy"] = made.placed.policy.name
            view["capacity_warnings"] = [w.as_dict() for w in made.placed.warnings]
            return view, made.placed.warnings

    view, warnings = confirmed(run, yes)
    _emit(view, as_json, f"camera {view['id']} {view['state']} (policy {view['policy']})" + warning_lines(warnings))


@camera_app.command("list")
def camera_list(
    state: Annotated[str | None, typer.Option(help="Only cameras in this state.")] = None, as_json: JsonOpt = False
) -> None:
    """All cameras (stream URLs shown without credentials)."""
    from nvr import registry

    rt = _runtime()
    with rt.db.session() as s:
        views = [registry.public_view(c) for c in registry.list_cameras(s, state)]
    lines = [
        f"{v['id']:<24} {v['state']:<15} {v['share_class']:<14} {v['name']}  [{v['managing_unit']}]" for v in views
    ]
    _emit(views, as_json, "\n".join(lines) or "no cameras")


@camera_app.command("show")
def camera_show(camera_id: str, as_json: JsonOpt = False) -> None:
    """One camera's record and its lifecycle history."""
    from nvr import registry

    rt = _runtime()
    with rt.db.session() as s:
        view = registry.public_view(registry.get(s, camera_id))
        view["history"] = [
            {"from": h.from_state, "to": h.to_state, "at": iso(h.at_us), "actor": h.actor, "reason": h.reason}
            for h in registry.history(s, camera_id)
        ]
    human = "\n".join(f"{k}: {v}" for k, v in view.items() if k != "history")
    human += "\nhistory:\n" + "\n".join(
        f"  {h['at']} {h['from']} -> {h['to']} by {h['actor']}" for h in view["history"]
    )
    _emit(view, as_json, human)


@camera_app.command("update")
def camera_update(
    camera_id: str,
    name: NameOpt = None,
    url: UrlOpt = None,
    unit: UnitOpt = None,
    address: AddrOpt = None,
    lat: LatOpt = None,
    lon: LonOpt = None,
    notes: NotesOpt = None,
    share_class: ShareOpt = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Move the camera to this retention policy.")] = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a camera's record (the id never changes). --policy works as 'nvr retention policy assign'."""
    from api import cameras
    from nvr import registry
    from nvr.cli_policies import cli_change, confirmed, warning_lines
    from retention import policies

    fields = _fields(name, url, unit, address, lat, lon, notes, share_class)
    rt = _runtime()

    def run(acknowledge: bool) -> tuple[dict[str, Any], list[Any]]:
        with rt.db.session() as s:
            warnings = []
            ch = cli_change(rt, acknowledge)
            if policy is None or any(v is not None for v in fields.__dict__.values()):
                cameras.update_camera(s, ch, camera_id, fields)
            if policy is not None:
                warnings = policies.assign(s, ch, camera_id, policy).warnings
            view = registry.public_view(registry.get(s, camera_id))
            view["policy"] = policies.policy_of(s, camera_id).name
            return view, warnings

    view, warnings = confirmed(run, yes)
    _emit(view, as_json, f"camera {camera_id} updated" + warning_lines(warnings))


def _transition(camera_id: str, to_state: str, reason: str | None) -> None:
    from api import cameras
    from nvr.cli_policies import cli_change

    rt = _runtime()
    with rt.db.session() as s:
        cam = cameras.change_state(s, cli_change(rt), camera_id, to_state, reason)
        typer.echo(f"camera {cam.id} {cam.state}")


ReasonOpt = Annotated[str | None, typer.Option(help="Why (kept in the camera's history).")]


@camera_app.command("activate")
def camera_activate(camera_id: str, reason: ReasonOpt = None) -> None:
    """Start recording the camera."""
    _transition(camera_id, "active", reason)


@camera_app.command("suspend")
def camera_suspend(camera_id: str, reason: ReasonOpt = None) -> None:
    """Stop recording for now; the camera can be activated again."""
    _transition(camera_id, "suspended", reason)


@camera_app.command("decommission")
def camera_decommission(camera_id: str, reason: ReasonOpt = None) -> None:
    """Stop recording for good; the record and all footage are kept."""
    _transition(camera_id, "decommissioned", reason)


# --- segments and status --------------------------------------------------------------------------------------
@segment_app.command("list")
def segments_list(
    camera: Annotated[str | None, typer.Option(help="Only this camera.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The newest segments with their hashes and chain links (paths relative to their volume)."""
    from sqlalchemy import select

    from nvr.models import Segment, Volume

    rt = _runtime()
    with rt.db.session() as s:
        q = select(Segment, Volume.path).join(Volume, Segment.volume_id == Volume.id)
        if camera:
            q = q.where(Segment.camera_id == camera)
        rows = s.execute(q.order_by(Segment.start_us.desc(), Segment.id.desc()).limit(limit)).all()
        out = [
            {
                "camera_id": r.camera_id,
                "seq": r.seq,
                "start": iso(r.start_us),
                "end": iso(r.end_us),
                "start_us": r.start_us,
                "end_us": r.end_us,
                "bytes": r.bytes,
                "frames": r.frames,
                "codecs": r.codecs,
                "sha256": r.sha256,
                "prev_link": r.prev_link,
                "link": r.link,
                "recovered": r.recovered,
                "path": str(Path(vp) / r.rel_path),
            }
            for r, vp in rows
        ]
    lines = [
        f"{o['camera_id']} #{o['seq']} {o['start']} {o['bytes']:>10}B {o['sha256'][:16]}… {o['path']}" for o in out
    ]
    _emit(out, as_json, "\n".join(lines) or "no segments")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Per camera: state, reason, last segment end, gaps and the share recorded in the last 24 h."""
    from nvr.status import all_status

    rt = _runtime()
    with rt.db.session() as s:
        st = all_status(s, rt.clock.now_us())
    human = []
    for c in st:
        share = "-" if c.recorded_share_24h is None else f"{c.recorded_share_24h * 100:.1f}%"
        human.append(
            f"{c.camera_id:<24} {c.state:<12} last={c.last_segment_end or '-'} gaps24h={len(c.gaps_24h)} "
            f"recorded24h={share}" + (f"  ({c.reason})" if c.reason else "")
        )
    _emit({"cameras": [c.as_dict() for c in st]}, as_json, "\n".join(human) or "no cameras")


@app.command()
def health() -> None:
    """Exit 0 when the database answers, no active camera's recorder is offline and no camera stopped for lack of
    space (for container checks); otherwise say what is wrong and exit 1."""
    from nvr.status import all_status
    from storage.alarms import storage_alarms

    rt = _runtime(migrate=False)
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

    rt = _runtime()
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
    ctx.on_storage_full = sweeper.wake
    sweeper.start()
    return [sweeper, *_integrity_services(rt, scrub=True)], ctx


def _integrity_services(rt: Any, scrub: bool) -> list[Any]:
    """Signed checkpoints on their schedule (every process that writes footage or audit events), and the
    background scrubber (where the recorder runs: it reads the disks)."""
    from integrity.checkpoints import CheckpointScheduler

    started: list[Any] = [CheckpointScheduler(rt.db, rt.settings, rt.clock, rt.settings.keys_dir, trusted=rt.trusted)]
    if scrub and rt.settings.scrub_read_mb_per_second > 0:
        from integrity.scrubber import Scrubber

        started.append(Scrubber(rt.db, rt.settings, rt.clock))
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

    rt = _runtime()
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
    try:
        serve_api(rt)
    finally:
        sup.stop()
        _stop_all(background)
        if demo_server is not None:
            demo_server.stop()


@app.command("api")
def api_cmd() -> None:
    """Run the HTTP API only (no recorder), until SIGINT/SIGTERM."""
    from api.server import serve as serve_api

    rt = _runtime()
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


# --- users and the audit trail ------------------------------------------------------------------------------
def _cli_actor() -> Any:
    import getpass

    from api.audit import Actor

    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(None, f"cli:{who}", None, None)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = typer.prompt("password", hide_input=True)
    second = typer.prompt("repeat password", hide_input=True)
    if first != second:
        raise NvrError(Kind.INVALID_ARGUMENT, "password_mismatch", "the two passwords differ")
    return first


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Option("--username", help="Login name: lowercase letters, digits, . _ -")],
    full_name: Annotated[str, typer.Option("--name", help="Real name.")],
    staff_number: Annotated[str, typer.Option("--staff-number", help="Staff (badge) number, unique.")],
    unit: Annotated[str, typer.Option("--unit", help="Organisational unit.")],
    role: Annotated[list[str], typer.Option("--role", help="admin|approver|officer|operator|auditor|viewer; repeat.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user. There is no default account: this makes the first admin."""
    from api import audit, people
    from api.routes.auth import user_view

    rt = _runtime()
    password = _read_password(password_stdin)
    with rt.db.session() as s:
        u = people.create_user(
            s,
            username=username,
            full_name=full_name,
            staff_number=staff_number,
            unit=unit,
            roles=role,
            password=password,
            now_us=rt.clock.now_us(),
        )
        audit.record(
            s,
            rt.clock.now_us(),
            _cli_actor(),
            audit.CLI,
            audit.Event("user.create", "ok", object_id=f"user:{u.id}", reason=f"roles={u.roles}"),
        )
        view = user_view(u)
    _emit(view, as_json, f"created user {u.username} (id {u.id}, roles {u.roles})")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    from sqlalchemy import select

    from api.routes.auth import user_view
    from nvr.models import User

    rt = _runtime()
    with rt.db.session() as s:
        users = [user_view(u) for u in s.scalars(select(User).order_by(User.id))]
    human = [f"{u['id']:>4} {u['username']:<20} {u['state']:<9} {','.join(u['roles']):<24} {u['unit']}" for u in users]
    _emit({"users": users}, as_json, "\n".join(human) or "no users")


def _user_state(username: str, state: str) -> None:
    from api import audit, people

    rt = _runtime()
    with rt.db.session() as s:
        u = people.find_user(s, username)
        people.set_state(s, u, state, rt.clock.now_us())
        audit.record(
            s,
            rt.clock.now_us(),
            _cli_actor(),
            audit.CLI,
            audit.Event("user.update", "ok", object_id=f"user:{u.id}", reason=f"state={state}"),
        )
    typer.echo(f"user {username} is {state}")


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable a user: their tokens and running streams stop at once."""
    _user_state(username, "disabled")


@user_app.command("enable")
def user_enable(username: str) -> None:
    _user_state(username, "active")


@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Recompute the audit chain and check it against every signed checkpoint (and the witness copies): exit 1
    naming the first event edited, removed or reordered, or a tail re-chained or cut off since a checkpoint."""
    from integrity import checkpoint_verify
    from integrity.audit_log import verify

    rt = _runtime(migrate=False)
    with rt.db.session() as s:
        checked, problem = verify(s)
    cps = checkpoint_verify.check(rt.db, rt.settings, cameras=False)
    against = cps.problems
    data = {
        "ok": problem is None and not against,
        "checked": checked,
        "checkpoints": cps.checkpoints,
        "problem": None if problem is None else problem.__dict__,
        "checkpoint_problems": [p.as_dict() for p in against],
    }
    lines = [p.line() for p in against]
    if problem is None and not against:
        _emit(data, as_json, f"audit trail intact: {checked} event(s) verified, {cps.checkpoints} checkpoint(s) agree")
        return
    head = (
        f"AUDIT TRAIL BROKEN at {problem} ({checked} event(s) verified before it)"
        if problem is not None
        else f"AUDIT TRAIL DISAGREES WITH ITS CHECKPOINTS ({checked} event(s) chain by themselves)"
    )
    _emit(data, as_json, "\n".join([head, *lines]))
    raise typer.Exit(1)


# Command groups kept in their own modules register onto the apps above (they import this module's helpers).
from nvr import (  # noqa: E402,F401
    cli_backup,
    cli_capacity,
    cli_checkpoints,
    cli_clock,
    cli_holds,
    cli_integrity,
    cli_keys,
    cli_policies,
    cli_sweep,
    cli_verify,
    cli_verify_export,
)
