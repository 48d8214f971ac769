"""The camera registry: one camera, one record, with its lifecycle.

A stream URL may carry credentials (in the userinfo or, on some makes, in the query string). They are stored so the
recorder can connect, and never leave through logs, CLI output or API responses: everything printable goes through
:func:`redact_url`.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nvr.errors import Kind, NvrError
from nvr.models import Camera, CameraStateChange, RetentionPolicy

SHARE_CLASSES = ("unconditional", "authorized", "non_shared")
STATES = ("registered", "active", "suspended", "decommissioned")
# From → allowed targets. Decommissioned is final: its footage stays, the record stays, recording never resumes.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "registered": ("active", "decommissioned"),
    "active": ("suspended", "decommissioned"),
    "suspended": ("active", "decommissioned"),
    "decommissioned": (),
}
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
GB28181 = re.compile(r"[0-9]{20}")
_SECRET_QUERY_KEYS = re.compile(r"(user|pass|pwd|token|auth|key|secret|sig)", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&][^=&\s]*(?:user|pass|pwd|token|auth|key|secret|sig)[^=&\s]*=)[^&\s'\"]*", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """The URL with any userinfo and secret-looking query values replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if _SECRET_QUERY_KEYS.search(k) else v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Remove URL credentials from free text (an FFmpeg message, a log line)."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)


def validate_id(camera_id: str) -> str:
    if GB28181.fullmatch(camera_id):
        return camera_id
    if camera_id.isdigit():
        # All digits but not 20 of them: a mistyped device code, not a slug.
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "camera_id_invalid",
            f"camera id {camera_id!r} is all digits but not 20 of them; GB/T 28181 device codes have 20 digits",
        )
    if SLUG.fullmatch(camera_id):
        return camera_id
    raise NvrError(
        Kind.INVALID_ARGUMENT,
        "camera_id_invalid",
        "camera id must be a 20-digit GB/T 28181 device code or a slug of lowercase letters, digits, '-' and '_' "
        "(at most 64, starting with a letter or digit)",
    )


def validate_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise NvrError(Kind.INVALID_ARGUMENT, "stream_url_invalid", "stream URL is not a valid URL") from None
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "stream_url_invalid",
            f"stream URL must be rtsp:// or rtsps:// with a host (got {redact_url(url)!r})",
        )
    if port is not None and not 0 < port < 65536:
        raise NvrError(Kind.INVALID_ARGUMENT, "stream_url_invalid", "stream URL port out of range")
    return url


@dataclass
class CameraFields:
    """What a person may set on a camera. ``None`` in an update means "leave as it is"."""

    name: str | None = None
    stream_url: str | None = None
    address: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    managing_unit: str | None = None
    installation_notes: str | None = None
    share_class: str | None = None


def _validate_fields(f: CameraFields) -> None:
    if f.name is not None and not f.name.strip():
        raise NvrError(Kind.INVALID_ARGUMENT, "camera_name_invalid", "camera name must not be empty")
    if f.name is not None and len(f.name) > 200:
        raise NvrError(Kind.INVALID_ARGUMENT, "camera_name_invalid", "camera name is longer than 200 characters")
    if f.stream_url is not None:
        validate_url(f.stream_url)
    if f.latitude is not None and not -90.0 <= f.latitude <= 90.0:
        raise NvrError(Kind.INVALID_ARGUMENT, "location_invalid", "latitude must be between -90 and 90")
    if f.longitude is not None and not -180.0 <= f.longitude <= 180.0:
        raise NvrError(Kind.INVALID_ARGUMENT, "location_invalid", "longitude must be between -180 and 180")
    if f.managing_unit is not None and not f.managing_unit.strip():
        raise NvrError(Kind.INVALID_ARGUMENT, "managing_unit_invalid", "managing unit must not be empty")
    if f.share_class is not None and f.share_class not in SHARE_CLASSES:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "share_class_invalid", f"share class must be one of {', '.join(SHARE_CLASSES)}"
        )


def get(session: Session, camera_id: str) -> Camera:
    cam = session.get(Camera, camera_id)
    if cam is None:
        raise NvrError(Kind.NOT_FOUND, "camera_not_found", f"no camera {camera_id!r}")
    return cam


def add(session: Session, camera_id: str, fields: CameraFields, *, actor: str, now_us: int) -> Camera:
    validate_id(camera_id)
    missing = [n for n in ("name", "stream_url", "managing_unit") if getattr(fields, n) is None]
    if missing:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "camera_field_missing", f"missing required field(s): {', '.join(missing)}"
        )
    if (fields.latitude is None) != (fields.longitude is None):
        raise NvrError(Kind.INVALID_ARGUMENT, "location_invalid", "give latitude and longitude together")
    _validate_fields(fields)
    if session.get(Camera, camera_id) is not None:
        raise NvrError(Kind.CONFLICT, "camera_exists", f"camera {camera_id!r} already exists")
    policy_id = session.scalar(select(RetentionPolicy.id).where(RetentionPolicy.is_default.is_(True)))
    if policy_id is None:
        raise NvrError(Kind.FAILED_PRECONDITION, "policy_default_missing", "no default retention policy exists")
    cam = Camera(
        id=camera_id,
        name=fields.name,
        stream_url=fields.stream_url,
        address=fields.address,
        latitude=fields.latitude,
        longitude=fields.longitude,
        managing_unit=fields.managing_unit,
        installation_notes=fields.installation_notes,
        share_class=fields.share_class or "authorized",
        state="registered",
        state_changed_us=now_us,
        created_us=now_us,
        updated_us=now_us,
        policy_id=policy_id,
    )
    session.add(cam)
    session.flush()
    session.add(
        CameraStateChange(
            camera_id=camera_id, from_state=None, to_state="registered", at_us=now_us, actor=actor, reason=None
        )
    )
    session.flush()
    return cam


def update(session: Session, camera_id: str, fields: CameraFields, *, now_us: int) -> Camera:
    cam = get(session, camera_id)
    if cam.state == "decommissioned":
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "camera_decommissioned",
            f"camera {camera_id!r} is decommissioned; its record is kept as it was",
        )
    _validate_fields(fields)
    changed = False
    for name, value in fields.__dict__.items():
        if value is not None and getattr(cam, name) != value:
            setattr(cam, name, value)
            changed = True
    if changed:
        cam.updated_us = now_us
    session.flush()
    return cam


def transition(
    session: Session, camera_id: str, to_state: str, *, actor: str, now_us: int, reason: str | None = None
) -> Camera:
    cam = get(session, camera_id)
    if to_state not in TRANSITIONS[cam.state]:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "camera_state_invalid",
            f"camera {camera_id!r} is {cam.state}; it cannot become {to_state}"
            + (f" (allowed: {', '.join(TRANSITIONS[cam.state])})" if TRANSITIONS[cam.state] else ""),
        )
    session.add(
        CameraStateChange(
            camera_id=camera_id, from_state=cam.state, to_state=to_state, at_us=now_us, actor=actor, reason=reason
        )
    )
    cam.state = to_state
    cam.state_changed_us = now_us
    cam.updated_us = now_us
    session.flush()
    return cam


def list_cameras(session: Session, state: str | None = None) -> list[Camera]:
    q = select(Camera).order_by(Camera.id)
    if state is not None:
        q = q.where(Camera.state == state)
    return list(session.scalars(q))


def history(session: Session, camera_id: str) -> list[CameraStateChange]:
    return list(
        session.scalars(
            select(CameraStateChange).where(CameraStateChange.camera_id == camera_id).order_by(CameraStateChange.id)
        )
    )


def public_view(cam: Camera) -> dict[str, Any]:
    """The record as it may be shown: the stream URL with credentials removed."""
    return {
        "id": cam.id,
        "name": cam.name,
        "stream_url": redact_url(cam.stream_url),
        "address": cam.address,
        "latitude": cam.latitude,
        "longitude": cam.longitude,
        "managing_unit": cam.managing_unit,
        "installation_notes": cam.installation_notes,
        "share_class": cam.share_class,
        "state": cam.state,
        "state_changed_us": cam.state_changed_us,
        "created_us": cam.created_us,
        "updated_us": cam.updated_us,
    }
