"""``nvr init``, ``nvr volume``, ``nvr camera`` and ``nvr segments``: data folder, volumes, camera registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, YesOpt, app, camera_app, cli_actor, emit, runtime, segment_app, volume_app
from nvr.cli.keys import SuiteOpt, chosen_suite
from nvr.clock import iso
from nvr.errors import NvrError


# --- init and volumes ---------------------------------------------------------------------------------------
@app.command()
def init(suite: SuiteOpt = None) -> None:
    """Create the data folder, the database schema, the default volume and the first signing key (in --suite,
    default the crypto_suite setting)."""
    from integrity import audit_log, keys
    from integrity.signing import format_fingerprint
    from nvr.recorder.context import volume_infos

    rt = runtime()
    wanted = chosen_suite(suite, rt.settings)
    rt.init_default_volume()
    with rt.db.session() as s:
        key = keys.ensure_key(s, rt.settings.keys_dir, rt.clock.now_us(), wanted, actor=cli_actor(), meta=audit_log.CLI)
        key_id, fingerprint, key_suite = key.key_id, key.fingerprint, key.suite
    typer.echo(f"data folder {rt.settings.data_dir} ready (database id {rt.db.database_id()})")
    typer.echo(f"signing key {key_id} ({key_suite}), fingerprint {fingerprint}")
    if key_suite != wanted:
        typer.echo(
            f"note: the existing active key is {key_suite}, not {wanted}; 'nvr keys rotate --suite {wanted}' "
            "switches it (what the old key signed keeps verifying)",
            err=True,
        )
    typer.echo(f"  (read aloud: {format_fingerprint(fingerprint)}); give it to bundle recipients separately")
    if rt.settings.encryption_at_rest:
        from storage.keyring import Keyring, ensure_master_key
        from storage.volumes import mark_encrypted

        with rt.db.session() as s:
            for v in volume_infos(rt.db, rt.settings.effective_volumes):
                if not v.encrypted:
                    mark_encrypted(s, v)
            mk = ensure_master_key(s, Keyring(rt.settings.master_keys_dir), rt.clock.now_us())
        typer.echo(
            f"encryption at rest: master key {mk.key_id} in {rt.settings.master_keys_dir}; back it up apart from the "
            "footage (without it encrypted footage cannot be decrypted)"
        )


@volume_app.command("init")
def volume_init(
    path: Path,
    encrypt: Annotated[
        bool,
        typer.Option(
            "--encrypt",
            help="Encrypt the segments recorded on this volume from now on (for good; also for an existing volume).",
        ),
    ] = False,
) -> None:
    """Make an empty folder a volume of this database (writes its identity file)."""
    from storage import volumes as vol
    from storage.keyring import Keyring, ensure_master_key

    rt = runtime()
    with rt.db.session() as s:
        info = vol.init_volume(s, path, rt.db.database_id(), rt.clock.now_us(), encrypt=encrypt)
        if info.encrypted:
            mk = ensure_master_key(s, Keyring(rt.settings.master_keys_dir), rt.clock.now_us())
    typer.echo(f"volume {info.id} at {info.path}" + (" (encrypted at rest)" if info.encrypted else ""))
    if info.encrypted:
        typer.echo(f"master key {mk.key_id} in {rt.settings.master_keys_dir}: back it up apart from the footage")


@volume_app.command("list")
def volume_list(as_json: JsonOpt = False) -> None:
    """Volumes with their identity state, free space and bytes per camera."""
    from sqlalchemy import select

    from nvr.models import Volume
    from storage import volumes as vol

    rt = runtime()
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
                    "encrypted": v.encryption is not None or rt.settings.encryption_at_rest,
                    "bytes_per_camera": vol.bytes_per_camera(s, v.id),
                }
            )
    lines = [
        f"{o['path']}  {o['identity']}  {'encrypted' if o['encrypted'] else 'plain'}  free={o['free_bytes']}  "
        + " ".join(f"{c}={b}" for c, b in sorted(o["bytes_per_camera"].items()))
        for o in out
    ]
    emit(out, as_json, "\n".join(lines) or "no volumes")


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
    from nvr.cli.policies import cli_change, confirmed, warning_lines

    fields = _fields(name, url, unit, address, lat, lon, notes, share_class)
    rt = runtime()

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
    emit(view, as_json, f"camera {view['id']} {view['state']} (policy {view['policy']})" + warning_lines(warnings))


@camera_app.command("list")
def camera_list(
    state: Annotated[str | None, typer.Option(help="Only cameras in this state.")] = None, as_json: JsonOpt = False
) -> None:
    """All cameras (stream URLs shown without credentials)."""
    from nvr import registry

    rt = runtime()
    with rt.db.session() as s:
        views = [registry.public_view(c) for c in registry.list_cameras(s, state)]
    lines = [
        f"{v['id']:<24} {v['state']:<15} {v['share_class']:<14} {v['name']}  [{v['managing_unit']}]" for v in views
    ]
    emit(views, as_json, "\n".join(lines) or "no cameras")


@camera_app.command("show")
def camera_show(camera_id: str, as_json: JsonOpt = False) -> None:
    """One camera's record and its lifecycle history."""
    from nvr import registry

    rt = runtime()
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
    emit(view, as_json, human)


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
    from nvr.cli.policies import cli_change, confirmed, warning_lines

    fields = _fields(name, url, unit, address, lat, lon, notes, share_class)
    rt = runtime()

    def run(acknowledge: bool) -> tuple[dict[str, Any], list[Any]]:
        with rt.db.session() as s:
            edited = cameras.edit_camera(s, cli_change(rt, acknowledge), camera_id, fields, policy=policy)
            view = registry.public_view(edited.camera)
            view["policy"] = edited.policy.name
            return view, edited.warnings

    view, warnings = confirmed(run, yes)
    emit(view, as_json, f"camera {camera_id} updated" + warning_lines(warnings))


def _transition(camera_id: str, to_state: str, reason: str | None) -> None:
    from api import cameras
    from nvr.cli.policies import cli_change

    rt = runtime()
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

    rt = runtime()
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
    emit(out, as_json, "\n".join(lines) or "no segments")
