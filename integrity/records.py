"""Digests of the registry records that decide who may see footage and how long it is kept.

A camera's share class, owning unit, policy, state and location decide who may be granted its footage and how long
it stays; a retention policy's days decide when it may go. Each signed checkpoint carries a digest of every camera
record and every policy (:func:`registry_digests`), and every change to one writes an audit event naming the new
digest, so a record edited in the database is named by ``nvr verify`` (``registry_mismatch``).

A digest is SHA-256 over the canonical JSON (integrity.chain.canonical_json) of :data:`CAMERA_FIELDS` or
:data:`POLICY_FIELDS`. The stream URL is left out on purpose: it carries credentials and no access decision.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity.chain import canonical_json
from nvr.models import Camera, RetentionPolicy

RECORD_VERSION = 1
CAMERA_FIELDS = (
    "id",
    "name",
    "managing_unit",
    "share_class",
    "state",
    "policy_id",
    "address",
    "latitude",
    "longitude",
    "installation_notes",
)
POLICY_FIELDS = ("id", "name", "min_days", "max_days", "is_default")


def _digest(kind: str, fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"record": kind, "v": RECORD_VERSION, **fields})).hexdigest()


def camera_record(cam: Camera) -> dict[str, Any]:
    return {f: getattr(cam, f) for f in CAMERA_FIELDS}


def camera_digest(cam: Camera) -> str:
    return _digest("camera", camera_record(cam))


def policy_record(policy: RetentionPolicy) -> dict[str, Any]:
    return {f: getattr(policy, f) for f in POLICY_FIELDS}


def policy_digest(policy: RetentionPolicy) -> str:
    return _digest("policy", policy_record(policy))


def registry_digests(session: Session) -> dict[str, dict[str, str]]:
    """``{"cameras": {id: digest}, "policies": {str(id): digest}}`` of every record, as a checkpoint signs them."""
    cams = {c.id: camera_digest(c) for c in session.scalars(select(Camera).order_by(Camera.id))}
    pols = {str(p.id): policy_digest(p) for p in session.scalars(select(RetentionPolicy).order_by(RetentionPolicy.id))}
    return {"cameras": cams, "policies": pols}
