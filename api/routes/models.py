"""Response models: the stable answers of the API, as pydantic models, so the OpenAPI document gives each operation
a response schema and the answers are serialized through them.

Each model describes the JSON the endpoint already sent before it had one: the same field names, types and
nullability (a field that can be null is required and nullable, never left out). Where an answer is one of two
shapes (a camera's full or basic record, a grant's absolute or relative window) the basic record and both windows
allow no other field, so an answer matches exactly one shape and a damaged full record cannot pass for a basic one.
Times are ISO 8601 text in UTC (``nvr.clock.iso``); a field named ``*_us`` is an integer of microseconds since the
epoch. Error answers are :class:`api.app.ErrorBody`, declared on every operation by the app.

Routes build these from the dictionaries the service layer's view functions return (``Model(**view)``), so the CLI
(which prints those dictionaries as JSON) and the API show one record the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


# --- retention and capacity ---------------------------------------------------------------------------------------
class WarningView(BaseModel):
    """A camera whose retention policy the volumes could not then keep (retention.capacity.CapacityWarning)."""

    code: str = Field(description="``policy_unmeetable``.")
    camera: str
    needs_days: int = Field(description="Days of footage the camera's policy requires.")
    holds_days: float = Field(description="Days of footage the forecast says its volume can hold (2 decimals).")
    volume: str


class PolicyView(BaseModel):
    name: str
    min_days: int
    effective_min_days: int = Field(description="What segments finished now get: min_days, or the floor if higher.")
    max_days: int | None
    is_default: bool
    description: str | None
    cameras: list[str]
    created: str
    updated: str


class PolicyList(BaseModel):
    policies: list[PolicyView]


class PolicySaved(PolicyView):
    extended_segments: int = Field(description="Existing segments whose retain_until this change moved later.")
    capacity_warnings: list[WarningView]


class CameraPolicy(BaseModel):
    camera: str
    policy: PolicyView
    extended_segments: int
    capacity_warnings: list[WarningView]


# --- cameras ------------------------------------------------------------------------------------------------------
class CameraSummary(BaseModel):
    """A camera's basic record: what approvers (every camera) and grant holders (the cameras a grant in force names)
    see. Nothing else: so a full record (:class:`CameraRecord`) never passes for a basic one."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    managing_unit: str
    share_class: str = Field(description="``unconditional``, ``authorized`` or ``non_shared``.")
    state: str = Field(description="``registered``, ``active``, ``suspended`` or ``decommissioned``.")


class CameraRecord(BaseModel):
    """A camera's full record, for admins: the stream URL without credentials, the exact location, the installation
    notes, and its retention policy."""

    id: str
    name: str
    stream_url: str = Field(description="The stream URL with any user name and password replaced by ``***``.")
    address: str | None
    latitude: float | None
    longitude: float | None
    managing_unit: str
    installation_notes: str | None
    share_class: str = Field(description="``unconditional``, ``authorized`` or ``non_shared``.")
    state: str = Field(description="``registered``, ``active``, ``suspended`` or ``decommissioned``.")
    state_changed: str
    created: str
    updated: str
    policy: str | None = Field(
        description="The name of the camera's retention policy (null only if the record names none that exists)."
    )


class CameraSaved(CameraRecord):
    capacity_warnings: list[WarningView] = Field(
        description="The capacity warnings acknowledged with ``acknowledge_capacity_warning`` (else empty)."
    )


class CameraList(BaseModel):
    cameras: list[CameraRecord | CameraSummary] = Field(
        description="Full records for admins, basic records for everyone else; only the cameras the caller may see."
    )


# --- grants and access requests -----------------------------------------------------------------------------------
class AbsoluteWindow(BaseModel):
    """Footage from ``start`` to ``end``."""

    model_config = ConfigDict(extra="forbid")

    start: str | None
    end: str | None


class RelativeWindow(BaseModel):
    """Footage of the ``last_days`` days before each request."""

    model_config = ConfigDict(extra="forbid")

    last_days: int


class GrantView(BaseModel):
    id: int
    user_id: int
    cameras: list[str]
    actions: list[str] = Field(description="Some of ``live``, ``playback``, ``export``.")
    window: AbsoluteWindow | RelativeWindow
    valid_from: str
    valid_until: str
    purpose: str
    case_ref: str
    max_streams: int
    state: str = Field(description="``active``, ``suspended``, ``revoked``, or ``expired`` (from valid_until).")
    state_reason: str | None
    granted_by: int
    created: str
    updated: str


class GrantList(BaseModel):
    grants: list[GrantView]


class AccessRequestView(BaseModel):
    id: int
    requester_id: int
    cameras: list[str]
    actions: list[str]
    window: AbsoluteWindow | RelativeWindow
    valid_until: str
    purpose: str
    case_ref: str
    max_streams: int
    state: str = Field(description="``pending``, ``approved``, ``rejected`` or ``withdrawn``.")
    decided_by: int | None
    decided: str | None
    decision_reason: str | None
    grant_id: int | None
    created: str


class AccessRequestList(BaseModel):
    requests: list[AccessRequestView]


class Approved(BaseModel):
    request: AccessRequestView
    grant: GrantView = Field(description="The grant the approval issued to the requester.")


# --- integrity ----------------------------------------------------------------------------------------------------
class KeyView(BaseModel):
    key_id: str
    suite: str
    fingerprint: str = Field(description="SHA-256 of the public key's DER SubjectPublicKeyInfo, lowercase hex.")
    public_key_pem: str
    created: str
    retired: str | None
    active: bool


class KeyList(BaseModel):
    keys: list[KeyView]


class FindingView(BaseModel):
    id: int
    kind: str
    camera_id: str | None
    seq: int | None
    at: str | None = Field(description="The footage time the problem concerns, when there is one.")
    subject: str
    detail: str
    source: str = Field(description="``scrubber``, ``verify``, ``playback`` or ``registry``.")
    found: str
    intact_again: str | None = Field(description="When an automatic check last found the subject intact again.")


class FindingList(BaseModel):
    findings: list[FindingView]


class FindingResolved(BaseModel):
    id: int
    kind: str
    subject: str
    resolved: str | None
    resolved_by: str | None
    note: str | None


class CheckpointEntry(BaseModel):
    """One signed checkpoint (integrity.witness.entry): ``body`` is the exact canonical JSON that was signed."""

    seq: int
    id: int
    created_us: int
    key_id: str
    hash: str = Field(description="SHA-256 of ``body``.")
    prev_hash: str | None
    suite: str
    body: str
    signature: str


class CheckpointChain(BaseModel):
    key_log: list[dict[str, Any]] = Field(
        description="The pinned key log's records exactly as stored (``body``, ``self_sig``, ``prev_sig``)."
    )
    checkpoints: list[CheckpointEntry]
    more: bool = Field(description="Whether checkpoints after the last one here exist (page with ``after_seq``).")


# --- recording status ---------------------------------------------------------------------------------------------
class GapInfo(BaseModel):
    start: str | None
    end: str | None = Field(description="null while the outage lasts.")
    reason: str = Field(description="The recorder's reason code (``disconnected``, ``storage_full``, …).")
    detail: str | None


class CameraRecordingStatus(BaseModel):
    """What ``nvr status`` shows for one camera (nvr.status.CameraStatus), plus its online rate."""

    camera_id: str
    name: str
    camera_state: str = Field(description="The registry state (``registered``, ``active``, …).")
    state: str = Field(description="The recorder's state: ``recording``, ``reconnecting``, ``error`` or ``offline``.")
    reason: str | None
    since: str | None
    last_segment_end: str | None
    segments_24h: int
    gaps_24h: list[GapInfo]
    recorded_share_24h: float | None = Field(
        description="Recording completeness: recorded time over the camera's active part of the last 24 h (0..1)."
    )
    online_share_24h: float | None = Field(
        description="Online rate: the share of that time not inside a gap the camera or its network caused (0..1)."
    )
    window_start: str | None = Field(description="Where, within the last 24 h, both shares are measured from.")


class CameraStatusList(BaseModel):
    cameras: list[CameraRecordingStatus]
