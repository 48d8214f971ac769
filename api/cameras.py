"""Changing the camera registry: one function per use case, called alike by the HTTP routes (api.routes.cameras),
the ``nvr camera`` commands (nvr.cli) and the demo cameras (``nvr serve --demo``).

Each writes exactly one audit event in the caller's transaction, as the last thing it does, with ``camera_id`` set
and a reason ending in ``; record sha256 <digest>``: the camera record's digest right after the change
(integrity.records.camera_digest), which ``nvr verify`` compares with the record and with the signed checkpoints
(integrity.registry_check). Who acts, from where and when comes in a :class:`retention.policies.Change`, the same
object policy changes take (it also carries the settings and the acknowledgement the capacity check needs); its
``now_us`` stamps the record and the event alike.

| action | reason |
|---|---|
| ``camera.create`` | ``policy=<name>[; acknowledged capacity warning(s): …][; activated]; record sha256 <digest>`` |
| ``camera.update`` | ``<the changed fields' names, or "no change">; record sha256 <digest>`` (never values) |
| ``camera.state`` | ``<from> → <to>[: <the reason given>]; record sha256 <digest>`` |
| ``retention.policy.assign`` | the camera's policy: :func:`retention.policies.assign` is that use case's function |
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from integrity.audit_log import Actor, Event, RequestMeta, record
from integrity.records import camera_digest
from integrity.registry_check import flag_if_edited, with_digest
from nvr import registry
from nvr.clock import Clock
from nvr.config import Settings
from nvr.models import Camera
from retention import policies

FIELDS = tuple(registry.CameraFields.__dataclass_fields__)


@dataclass
class Created:
    camera: Camera
    placed: policies.Saved
    """Its retention policy and the capacity warnings acknowledged in adding it."""


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
    before = registry.get(s, camera_id)
    flag_if_edited(s, before, ch.now_us)
    old = {f: getattr(before, f) for f in FIELDS}
    cam = registry.update(s, camera_id, fields, now_us=ch.now_us)
    changed = [f for f in FIELDS if getattr(cam, f) != old[f]]
    _audit(s, ch, "camera.update", cam, ", ".join(changed) or "no change")
    return cam


def change_state(s: Session, ch: policies.Change, camera_id: str, to_state: str, reason: str | None = None) -> Camera:
    """Activate, suspend or decommission (``camera_state_invalid`` when the lifecycle forbids it): one
    ``camera.state``; ``reason`` is kept in the camera's history and in the event."""
    current = registry.get(s, camera_id)
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
