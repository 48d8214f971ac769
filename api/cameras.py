"""The camera registry's use cases: one function each, called alike by the HTTP routes (api.routes.cameras), the
``nvr camera`` commands (nvr.cli.cameras) and the demo cameras (``nvr serve --demo``).

Reading (:func:`list_visible`, :func:`read_camera`) applies who may see which camera and how much of its record
(admins: the full record; approvers: every camera's basic record; others: the cameras a grant in force names, any
other camera answering 404 as if it did not exist), and writes one ``camera.list`` / ``camera.read`` event.

Each change writes exactly one audit event in the caller's transaction, as the last thing it does, with
``camera_id`` set and a reason ending in ``; record sha256 <digest>``: the camera record's digest right after the
change (integrity.records.camera_digest), which ``nvr verify`` compares with the record and with the signed
checkpoints (integrity.registry_check). Who acts, from where and when comes in a
:class:`retention.policies.Change`, the same object policy changes take (it also carries the settings and the
acknowledgement the capacity check needs); its ``now_us`` stamps the record and the event alike.

| action | reason |
|---|---|
| ``camera.create`` | ``policy=<name>[; acknowledged capacity warning(s): …][; activated]; record sha256 <digest>`` |
| ``camera.update`` | ``<the changed fields' names, or "no change">; record sha256 <digest>`` (never values) |
| ``camera.state`` | ``<from> → <to>[: <the reason given>]; record sha256 <digest>`` |
| ``retention.policy.assign`` | the camera's policy: :func:`retention.policies.assign` is that use case's function |

A change reads the camera's row under a row lock (:func:`retention.policies.locked_camera`), so two changes of one
camera take turns and each event's digest is that of the record its change left (a change made on a stale copy
would name a digest no stored record ever had, and ``nvr verify`` would later report a hand edit that never
happened).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import grants
from api.people import Principal
from integrity.audit_log import Actor, Event, RequestMeta, record
from integrity.records import camera_digest
from integrity.registry_check import flag_if_edited, with_digest
from nvr import registry
from nvr.clock import Clock
from nvr.config import Settings
from nvr.errors import Kind, NvrError
from nvr.models import Camera, RetentionPolicy
from retention import policies
from retention.capacity import CapacityWarning

FIELDS = tuple(registry.CameraFields.__dataclass_fields__)


@dataclass
class Created:
    camera: Camera
    placed: policies.Saved
    """Its retention policy and the capacity warnings acknowledged in adding it."""


@dataclass
class Seen:
    """A camera as one person may see it: ``full`` (admins) is the whole record with ``policy``, its retention
    policy's name; otherwise only the basic record may be shown (and ``policy`` is None)."""

    camera: Camera
    full: bool
    policy: str | None = None


@dataclass
class Edited:
    """A camera after :func:`edit_camera`: its retention policy and the capacity warnings acknowledged in moving it."""

    camera: Camera
    policy: RetentionPolicy
    warnings: list[CapacityWarning] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------------------
def sees_full_record(p: Principal) -> bool:
    """Stream URL (without credentials), exact location and installation details: admins only."""
    return p.can("cameras.protected")


def sees_every_camera(p: Principal) -> bool:
    """Admins and approvers (who issue grants) see every camera's record; others only what their grants name."""
    return p.can("cameras.protected") or p.can("cameras.catalog")


def visible_camera(s: Session, p: Principal, camera_id: str, now_us: int) -> Camera:
    """The camera if this person may see its record: 404 ``camera_not_found`` for a camera that does not exist and,
    alike, for one no grant of theirs names; 403 when the grant naming it is not in force. No audit event (the
    callers write theirs)."""
    registry.validate_id(camera_id)
    if not sees_every_camera(p):
        grants.check_camera_visible(s, p, camera_id, now_us)
    cam = s.get(Camera, camera_id)
    if cam is None:
        raise NvrError(Kind.NOT_FOUND, "camera_not_found", f"no camera {camera_id!r}")
    return cam


def _policy_names(s: Session) -> dict[str, str]:
    return {cid: name for cid, name in s.execute(select(Camera.id, RetentionPolicy.name).join(RetentionPolicy))}


def list_visible(s: Session, p: Principal, meta: RequestMeta, now_us: int) -> list[Seen]:
    """Every camera this person may see, in id order: one ``camera.list`` event naming how many."""
    cams = registry.list_cameras(s)
    if not sees_every_camera(p):
        ids = grants.visible_camera_ids(s, p, now_us)
        cams = [c for c in cams if c.id in ids]
    full = sees_full_record(p)
    names = _policy_names(s) if full else {}
    out = [Seen(c, full, names.get(c.id)) for c in cams]
    record(s, now_us, p.actor, meta, Event("camera.list", "allowed", reason=f"{len(out)} camera(s)"))
    return out


def read_camera(s: Session, p: Principal, meta: RequestMeta, camera_id: str, now_us: int) -> Seen:
    """One camera, if this person may see it (:func:`visible_camera`): one ``camera.read`` event."""
    cam = visible_camera(s, p, camera_id, now_us)
    full = sees_full_record(p)
    seen = Seen(cam, full, policies.policy_of(s, cam.id).name if full else None)
    record(s, now_us, p.actor, meta, Event("camera.read", "allowed", camera_id=cam.id))
    return seen


# --- changing -----------------------------------------------------------------------------------------------
def history_actor(actor: Actor) -> str:
    """Who a lifecycle change names in the camera's history (``camera_state_changes.actor``)."""
    return f"user:{actor.id}" if actor.id is not None else actor.name or "unknown"


def _audit(s: Session, ch: policies.Change, action: str, cam: Camera, reason: str) -> None:
    s.flush()
    record(
        s,
        ch.now_us,
        ch.actor,
        ch.meta,
        Event(action, "ok", camera_id=cam.id, reason=with_digest(reason, camera_digest(cam))),
    )


def create_camera(
    s: Session,
    ch: policies.Change,
    camera_id: str,
    fields: registry.CameraFields,
    *,
    policy: str | None = None,
    activate: bool = False,
) -> Created:
    """Register a camera on ``policy`` (the default one when None), checking the capacity forecast
    (``capacity_insufficient`` unless ``ch.acknowledge``), and with ``activate`` start it at once: one
    ``camera.create`` event."""
    who = history_actor(ch.actor)
    cam = registry.add(s, camera_id, fields, actor=who, now_us=ch.now_us)
    placed = policies.place_new_camera(s, ch, cam.id, policy)
    if activate:
        registry.transition(s, cam.id, "active", actor=who, now_us=ch.now_us)
    _audit(s, ch, "camera.create", cam, policies.creation_note(placed) + ("; activated" if activate else ""))
    return Created(cam, placed)


def update_camera(s: Session, ch: policies.Change, camera_id: str, fields: registry.CameraFields) -> Camera:
    """Change the record's fields (``None``: leave as it is): one ``camera.update`` naming the fields that
    changed (not their values: a stream URL may carry credentials)."""
    before = policies.locked_camera(s, camera_id)
    flag_if_edited(s, before, ch.now_us)
    old = {f: getattr(before, f) for f in FIELDS}
    cam = registry.update(s, camera_id, fields, now_us=ch.now_us)
    changed = [f for f in FIELDS if getattr(cam, f) != old[f]]
    _audit(s, ch, "camera.update", cam, ", ".join(changed) or "no change")
    return cam


def edit_camera(
    s: Session, ch: policies.Change, camera_id: str, fields: registry.CameraFields, *, policy: str | None = None
) -> Edited:
    """``PATCH /cameras/{id}`` and ``nvr camera update``: change the record's fields (:func:`update_camera`, also
    when nothing at all is given, so the call is audited) and, with ``policy``, move the camera to that retention
    policy exactly as :func:`retention.policies.assign` does (its own event, the same capacity check)."""
    if policy is None or any(getattr(fields, f) is not None for f in FIELDS):
        update_camera(s, ch, camera_id, fields)
    warnings: list[CapacityWarning] = []
    if policy is not None:
        warnings = policies.assign(s, ch, camera_id, policy).warnings
    return Edited(registry.get(s, camera_id), policies.policy_of(s, camera_id), warnings)


def change_state(s: Session, ch: policies.Change, camera_id: str, to_state: str, reason: str | None = None) -> Camera:
    """Activate, suspend or decommission (``camera_state_invalid``: 422 for a state that does not exist, 409 when
    the lifecycle forbids the step): one ``camera.state``; ``reason`` is kept in the camera's history and in the
    event."""
    if to_state not in registry.STATES:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "camera_state_invalid", f"state must be one of {', '.join(registry.STATES)}"
        )
    current = policies.locked_camera(s, camera_id)
    flag_if_edited(s, current, ch.now_us)
    old = current.state
    cam = registry.transition(s, camera_id, to_state, actor=history_actor(ch.actor), now_us=ch.now_us, reason=reason)
    _audit(s, ch, "camera.state", cam, f"{old} → {to_state}" + (f": {reason}" if reason else ""))
    return cam


class Registrar:
    """The demo cameras' registrar (nvr.demo.service.Registrar): these functions, acting as ``actor``, each change
    at the clock's time. The demo adds its cameras whatever the capacity forecast says (the warnings go into the
    event)."""

    def __init__(self, settings: Settings, clock: Clock, actor: Actor, meta: RequestMeta) -> None:
        self.settings, self.clock, self.actor, self.meta = settings, clock, actor, meta

    def _change(self, acknowledge: bool) -> policies.Change:
        return policies.Change(self.settings, self.clock.now_us(), self.actor, self.meta, acknowledge)

    def add(self, s: Session, camera_id: str, fields: registry.CameraFields) -> None:
        create_camera(s, self._change(True), camera_id, fields)

    def update(self, s: Session, camera_id: str, fields: registry.CameraFields) -> None:
        update_camera(s, self._change(False), camera_id, fields)

    def transition(self, s: Session, camera_id: str, to_state: str) -> None:
        change_state(s, self._change(False), camera_id, to_state)
