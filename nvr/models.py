"""The catalogue's tables (SQLAlchemy 2). Changed only through Alembic migrations in nvr/migrations.

Times are UTC microseconds since the epoch in BigInteger columns (``*_us``); media durations are microseconds of
stream time. Hashes and links are lowercase hex.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about this database; ``database_id`` ties volumes to it."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Camera(Base):
    """One camera, one record. ``stream_url`` may hold credentials: never print it, use ``registry.redact_url``."""

    __tablename__ = "cameras"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    stream_url: Mapped[str] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(Text, nullable=True)
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    managing_unit: Mapped[str] = mapped_column(String(200))
    installation_notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    share_class: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20))
    state_changed_us: Mapped[int] = mapped_column(BigInteger)
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)
    policy_id: Mapped[int] = mapped_column(ForeignKey("retention_policies.id"), index=True)
    """Its retention policy: every camera has exactly one (the default one unless another is assigned)."""


class RetentionPolicy(Base):
    """How long footage is kept. ``min_days`` is the floor (never below the system floor, 30 days); ``max_days``,
    when set, is how old footage may get before the sweeper removes it (once nothing else protects it)."""

    __tablename__ = "retention_policies"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    min_days: Mapped[int] = mapped_column(Integer)
    max_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)


class CameraStateChange(Base):
    """Every lifecycle transition, kept forever: when a camera was recording is evidence too."""

    __tablename__ = "camera_state_changes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    at_us: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Volume(Base):
    """An archive folder. The folder holds an identity file naming this id and the database's id."""

    __tablename__ = "volumes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    encryption: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """``on`` when new segments on this volume are encrypted at rest (storage.crypt), None for plain files. Each
    segment is encrypted with the cipher of the suite active when it starts and its row records which; the volume's
    identity file carries the same mark (storage.volumes.mark_encrypted)."""
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The node that writes to this volume (nvr.cluster); another node started with it configured is refused. None
    until a node first records to it."""


class Segment(Base):
    """A finished segment file. A row exists only for a file completely written, fsynced, renamed and hashed.

    ``link`` = SHA-256(``prev_link`` ‖ canonical encoding of the row), see integrity.chain; ``seq`` counts from 1
    per camera without holes, so a removed row shows as a missing number and a broken link.
    """

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("camera_id", "seq", name="uq_segments_camera_seq"),
        Index("ix_segments_camera_start", "camera_id", "start_us"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"))
    rel_path: Mapped[str] = mapped_column(Text)
    start_us: Mapped[int] = mapped_column(BigInteger)
    """Server wall clock when the segment's first packet arrived."""
    end_us: Mapped[int] = mapped_column(BigInteger)
    """``start_us`` plus the media duration: the stream's own clock measures length."""
    media_duration_us: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    frames: Mapped[int] = mapped_column(Integer)
    """Video frames (packets of the first video stream)."""
    codecs: Mapped[str] = mapped_column(String(200))
    clock_offset_us: Mapped[int] = mapped_column(BigInteger)
    """Server wall clock minus camera media time at the segment's first packet."""
    sha256: Mapped[str] = mapped_column(String(64))
    """Digest of the stored bytes under ``hash_alg`` (the column's name is from when SHA-256 was the only one)."""
    hash_alg: Mapped[str] = mapped_column(String(16), default="sha256", server_default="sha256")
    """``sha256`` or ``sm3`` (integrity.suites): the algorithm of ``sha256``, ``plain_digest`` and ``link``."""
    plain_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """An encrypted segment's plaintext (fMP4) digest under ``hash_alg``; None for a plain one."""
    encryption: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """The cipher of an encrypted segment (``aes-256-gcm``, ``sm4-gcm``); None for a plain one (storage.crypt)."""
    prev_link: Mapped[str] = mapped_column(String(64))
    link: Mapped[str] = mapped_column(String(64), unique=True)
    recovered: Mapped[bool] = mapped_column(Boolean, default=False)
    """True when start-up recovery cut this segment back from a file a crash left behind."""
    created_us: Mapped[int] = mapped_column(BigInteger)
    retain_until_us: Mapped[int] = mapped_column(BigInteger, index=True)
    """Nothing deletes or rewrites the segment before this: its end plus its camera's ``min_days`` when it was
    finished; raising a policy moves it later, nothing ever moves it earlier. Not part of the chain link."""
    sweep_batch_id: Mapped[int | None] = mapped_column(ForeignKey("sweep_batches.id"), nullable=True, index=True)
    """Set when the sweeper has marked the segment for deletion (its garbage list); such a row is no longer
    footage: listings and playback skip it, and the batch finishes or resumes its deletion."""


class SweepBatch(Base):
    """One step of the sweeper's garbage list: mark rows → unlink files → remove rows and write tombstones.
    ``state`` is ``marked``, ``unlinked`` or ``done``; a batch not ``done`` is resumed by the next sweep."""

    __tablename__ = "sweep_batches"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(40))
    """``max_age`` or ``space`` (or both, comma-separated)."""
    segments: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    started_us: Mapped[int] = mapped_column(BigInteger)
    finished_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actor: Mapped[str] = mapped_column(String(200))


class SegmentTombstone(Base):
    """Stands for segments ``first_seq..last_seq`` of a camera the sweeper deleted: ``prev_link`` is the link the
    first of them continued from and ``last_link`` the link of the last, so the chain still verifies across the
    hole (integrity.chain.verify_rows). Adjacent deletions of one camera extend one tombstone."""

    __tablename__ = "segment_tombstones"
    __table_args__ = (Index("ix_tombstones_camera_seq", "camera_id", "first_seq", unique=True),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"))
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    prev_link: Mapped[str] = mapped_column(String(64))
    last_link: Mapped[str] = mapped_column(String(64))
    start_us: Mapped[int] = mapped_column(BigInteger)
    end_us: Mapped[int] = mapped_column(BigInteger)
    segments: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    deleted_us: Mapped[int] = mapped_column(BigInteger)
    """When the newest part of it was deleted."""
    last_batch_id: Mapped[int] = mapped_column(BigInteger)


class EvidenceHold(Base):
    """Keeps every segment of its cameras overlapping [start_us, end_us) — ``end_us`` None: until released, which
    also covers footage still being recorded — unaltered, past any retention, until two people release it.

    ``state``: ``active``; ``release_requested`` (one user with the release permission asked; still protects);
    ``released`` (a second, different user confirmed; protects nothing any more)."""

    __tablename__ = "evidence_holds"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_ref: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    start_us: Mapped[int] = mapped_column(BigInteger)
    end_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[str] = mapped_column(String(20))
    placed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    placed_by_name: Mapped[str] = mapped_column(String(200))
    placed_us: Mapped[int] = mapped_column(BigInteger)
    release_requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    release_requested_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    released_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    released_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class HoldCamera(Base):
    __tablename__ = "hold_cameras"
    hold_id: Mapped[int] = mapped_column(ForeignKey("evidence_holds.id"), primary_key=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"), primary_key=True, index=True)


class Gap(Base):
    """A span in which a camera that should have been recording was not (outage, error, full disk)."""

    __tablename__ = "gaps"
    __table_args__ = (Index("ix_gaps_camera_start", "camera_id", "start_us"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"))
    start_us: Mapped[int] = mapped_column(BigInteger)
    end_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """None while the outage lasts."""
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class CameraEvent(Base):
    """Things worth knowing about a camera's recording that are not gaps: clock steps, recoveries, errors."""

    __tablename__ = "camera_events"
    __table_args__ = (Index("ix_camera_events_camera_at", "camera_id", "at_us"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"))
    at_us: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text)


class RecorderState(Base):
    """What each camera's worker is doing now, so ``nvr status`` in another process can tell."""

    __tablename__ = "recorder_state"
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"), primary_key=True)
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    since_us: Mapped[int] = mapped_column(BigInteger)
    heartbeat_us: Mapped[int] = mapped_column(BigInteger)


# --- people, grants and the audit trail (api/) --------------------------------------------------------------
class User(Base):
    """A real-name account. ``roles`` is a comma-separated subset of api.roles.ROLES; ``state`` active|disabled."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    staff_number: Mapped[str] = mapped_column(String(64), unique=True)
    unit: Mapped[str] = mapped_column(String(200))
    roles: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(Text)
    """argon2id, never the password; never leaves the server. Empty for an identity-provider account."""
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)
    auth_source: Mapped[str] = mapped_column(String(20), server_default="local")
    """``local`` (password, for small sites and break-glass) or ``oidc`` (the unit's identity platform)."""
    oidc_subject: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    """``iss`` + ``sub`` of the identity-provider account this user is, when ``auth_source`` is ``oidc``."""
    tokens_valid_after_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Tokens created before this are refused: set when the user is disabled or re-enabled, so re-enabling a user
    never revives a session or script token issued before."""


class Token(Base):
    """A bearer credential: a login session or a personal API token. Only the SHA-256 of the secret is kept."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    """``session`` (from login) or ``personal`` (for scripts)."""
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    expires_us: Mapped[int] = mapped_column(BigInteger)
    revoked_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Grant(Base):
    """Access for one user to a set of cameras, for some actions, over a footage window, for a limited time.

    The footage window is absolute (``window_start_us``..``window_end_us``) or relative (``window_last_days``:
    the last N days before the moment of each request). ``state`` is what people set (active, suspended,
    revoked); ``expired`` is derived from ``valid_until_us`` and the clock, never stored.
    """

    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    actions: Mapped[str] = mapped_column(String(100))
    window_start_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_end_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_last_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    valid_from_us: Mapped[int] = mapped_column(BigInteger)
    valid_until_us: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(Text)
    case_ref: Mapped[str] = mapped_column(String(200))
    max_streams: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    granted_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)


class AccessRequest(Base):
    """An officer's request for footage access for a case; an approver turns it into a grant or rejects it.
    ``cameras`` and ``actions`` are comma-separated; the window and validity mean what they mean on a grant."""

    __tablename__ = "access_requests"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    cameras: Mapped[str] = mapped_column(Text)
    actions: Mapped[str] = mapped_column(String(100))
    window_start_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_end_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_last_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    valid_until_us: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(Text)
    case_ref: Mapped[str] = mapped_column(String(200))
    max_streams: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    """pending, approved, rejected, withdrawn."""
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    decided_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    created_us: Mapped[int] = mapped_column(BigInteger)


class GrantCamera(Base):
    __tablename__ = "grant_cameras"
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"), primary_key=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"), primary_key=True, index=True)


class ReadPin(Base):
    """A read in progress (a playback stream): counts against its grant's stream limit, and the segments of
    ``camera_id`` between ``start_us`` and ``end_us`` must not be deleted while it lasts. A pin whose heartbeat is
    older than api.streams.PIN_STALE_US belongs to a process that died and no longer counts."""

    __tablename__ = "read_pins"
    __table_args__ = (Index("ix_read_pins_camera", "camera_id", "start_us"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), index=True, nullable=True)
    """The grant a playback stream counts against; None for an export job's pin (``request_id`` "export-<job>")."""
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"))
    start_us: Mapped[int] = mapped_column(BigInteger)
    end_us: Mapped[int] = mapped_column(BigInteger)
    started_us: Mapped[int] = mapped_column(BigInteger)
    heartbeat_us: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="stream", server_default="stream")
    """``stream``: one request's stream (or an export job's read). ``session``: one audited playback session made
    of a player's HTTP Range requests (api.footage, "Playback sessions"); the columns below are its state."""
    ticket_id: Mapped[int | None] = mapped_column(BigInteger, index=True, nullable=True)
    """The playback ticket that opened the session, if one did (no foreign key: a pin is transient state)."""
    session_key: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    """A bearer session's key: SHA-256 of token, camera, window and purpose."""
    client_addr: Mapped[str | None] = mapped_column(String(100), nullable=True)
    """The address the session was opened from; only requests from it join."""
    active: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Requests of the session running now."""
    requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Range requests the session answered with footage."""
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    idle_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """With no request running: the session stays open (and counts) until then, then is closed."""
    start_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """The audit sequence number of the session's ``playback.start`` (None until a request started streaming)."""
    end_outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Set when the session must end (its grant stopped holding, a damaged segment): joins are refused and it
    closes with this outcome once no request runs."""
    audit_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: the actor, request facts and event fields the session's ``playback.end`` is written with."""


class PlaybackTicket(Base):
    """A short-lived credential for one playback URL, so a ``<video src>`` (which cannot send headers) can play it.
    Bound to its user, camera, window and purpose; only the SHA-256 of the secret is kept."""

    __tablename__ = "playback_tickets"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"))
    camera_id: Mapped[str] = mapped_column(ForeignKey("cameras.id"))
    start_us: Mapped[int] = mapped_column(BigInteger)
    end_us: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(Text)
    created_us: Mapped[int] = mapped_column(BigInteger)
    expires_us: Mapped[int] = mapped_column(BigInteger)
    used_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When the ticket was claimed by its one stream (a single conditional UPDATE); a used ticket is refused."""
    used_addr: Mapped[str | None] = mapped_column(String(100), nullable=True)


class AuditEvent(Base):
    """One line of the audit trail. ``hash = H(prev_hash ‖ canonical(event))`` (integrity.audit_chain), ``H`` the
    event's ``hash_alg`` (None: SHA-256, as every event before suites could change);
    ``seq`` counts from 1 without holes. Rows are only ever inserted: no code path updates or deletes them."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_at", "at_us"),
        Index("ix_audit_actor", "actor_id", "at_us"),
        Index("ix_audit_camera", "camera_id", "at_us"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at_us: Mapped[int] = mapped_column(BigInteger)
    actor_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actor_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    actor_unit: Mapped[str | None] = mapped_column(String(200), nullable=True)
    actor_roles: Mapped[str | None] = mapped_column(String(200), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    camera_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    window_start_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    window_end_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    object_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    purpose: Mapped[str | None] = mapped_column(Text, nullable=True)
    case_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    destination: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    hash_alg: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """``sm3`` when the event was chained with SM3; None for SHA-256 (every event before suites could change)."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row (id 1) naming the newest audit event. Appending first updates this row, which serialises
    writers (a row lock on PostgreSQL, the write lock on SQLite) so sequence numbers and links never fork; it also
    lets the verifier notice when the newest events were cut off."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


# --- signing keys, checkpoints, exports and integrity findings (integrity/, storage/, api/) -----------------
class SigningKey(Base):
    """The public half of every signing key the server has used, so checkpoints and bundles it ever signed still
    verify after a rotation. The private half lives only in ``<data_dir>/keys`` (integrity.keys), readable by the
    service alone. ``fingerprint`` = SHA-256 of the public key's DER SubjectPublicKeyInfo, lowercase hex."""

    __tablename__ = "signing_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    suite: Mapped[str] = mapped_column(String(40))
    public_key_pem: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    retired_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When a rotation replaced it; None for the key in use."""


class Checkpoint(Base):
    """A signed statement of every camera's chain head (latest seq and link, across tombstones) and the audit log's
    head at ``created_us``: a segment finished before it is proven to have existed unaltered then. ``body`` is
    the canonical JSON that was signed, byte for byte; ``signature`` its hex signature by ``key_id``."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        Index("ix_checkpoints_created", "created_us"),
        Index("ux_checkpoints_seq", "seq", unique=True),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(ForeignKey("signing_keys.key_id", name="fk_checkpoints_key"))
    suite: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """1, 2, 3, ... without holes, in creation order; version 2 bodies sign it."""
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the previous checkpoint's body (None for the first); version 2 bodies sign it."""
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of ``body``: what the next checkpoint's ``prev_hash`` names."""


class CameraChainHead(Base):
    """The newest seq and link ever issued in a camera's chain, kept apart from the rows: deleting the newest rows
    (or their tombstones) never lets the recorder issue their sequence numbers again (storage.catalog)."""

    __tablename__ = "camera_chain_heads"
    camera_id: Mapped[str] = mapped_column(
        ForeignKey("cameras.id", name="fk_camera_chain_heads_camera"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    link: Mapped[str] = mapped_column(String(64))


class ExportRequest(Base):
    """One matter, one application: an officer's request to copy footage out, co-signed by a second officer of the
    same unit and approved by an approver of each camera's owning unit (or covered by the requester's export grant
    when every camera is ``unconditional``). ``cameras`` is comma-separated.

    ``state``: ``pending_cosign`` → ``pending_approval`` → ``approved``; or ``rejected`` / ``withdrawn``. An
    approved request past ``approved_until_us`` with no bundle made is ``expired`` (derived, never stored)."""

    __tablename__ = "export_requests"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id", name="fk_export_requests_requester"), index=True)
    cameras: Mapped[str] = mapped_column(Text)
    window_start_us: Mapped[int] = mapped_column(BigInteger)
    window_end_us: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(Text)
    case_ref: Mapped[str] = mapped_column(String(200), index=True)
    legal_basis: Mapped[str] = mapped_column(Text)
    recipient: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(Text)
    recipient_key_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The public key (X25519 or SM2, PEM) the bundle is encrypted to, or None for a bundle in the clear."""
    recipient_key_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """``x25519`` or ``sm2``."""
    recipient_key_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the recipient key's DER SubjectPublicKeyInfo, as the audit records it."""
    route: Mapped[str] = mapped_column(String(20))
    """``approval`` (approvers of the owning units decide) or ``grant`` (unconditional cameras, export grant)."""
    grant_id: Mapped[int | None] = mapped_column(
        ForeignKey("grants.id", name="fk_export_requests_grant"), nullable=True
    )
    state: Mapped[str] = mapped_column(String(20))
    cosigner_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", name="fk_export_requests_cosigner"), nullable=True
    )
    cosigned_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decided_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    approved_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)


class ExportApproval(Base):
    """One owning unit's decision on an export request, by an approver of that unit."""

    __tablename__ = "export_approvals"
    request_id: Mapped[int] = mapped_column(
        ForeignKey("export_requests.id", name="fk_export_approvals_request"), primary_key=True
    )
    unit: Mapped[str] = mapped_column(String(200), primary_key=True)
    approver_id: Mapped[int] = mapped_column(ForeignKey("users.id", name="fk_export_approvals_approver"))
    decision: Mapped[str] = mapped_column(String(20))
    """``approved`` or ``rejected``."""
    reason: Mapped[str] = mapped_column(Text)
    decided_us: Mapped[int] = mapped_column(BigInteger)


class ExportJob(Base):
    """Making one bundle for an approved request, in the background. ``state``: ``queued``, ``running``, ``done``,
    ``failed``, ``cancelled``; ``deleted`` once the bundle's lifetime ended and its file was removed.
    ``bundle_name`` is the file's name in ``<data_dir>/exports``; nothing is there until it is complete."""

    __tablename__ = "export_jobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_requests.id", name="fk_export_jobs_request"), index=True)
    state: Mapped[str] = mapped_column(String(20))
    started_by: Mapped[int] = mapped_column(ForeignKey("users.id", name="fk_export_jobs_started_by"))
    created_us: Mapped[int] = mapped_column(BigInteger)
    started_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    heartbeat_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    bundle_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    bundle_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    expires_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    deleted_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class IntegrityFinding(Base):
    """A problem the scrubber or ``nvr verify`` found in the archive (``kind``: hash_mismatch, missing_file,
    missing_row, chain_break, unknown_file, bad_signature). Open (``resolved_us`` None) findings raise the
    ``integrity_mismatch`` alarm; one open row per (kind, camera, seq, subject)."""

    __tablename__ = "integrity_findings"
    __table_args__ = (Index("ix_integrity_findings_open", "resolved_us", "kind"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    camera_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Footage time the problem concerns (a segment's start), when there is one."""
    subject: Mapped[str] = mapped_column(Text)
    """What is affected: a file path, ``segment <camera> #<seq>``, ``checkpoint 12``, ``audit event 40``."""
    detail: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(20))
    """``scrubber``, ``verify``, ``playback`` or ``registry`` (a service call that found its record edited)."""
    found_us: Mapped[int] = mapped_column(BigInteger)
    resolved_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When a person resolved it (integrity.findings.resolve); never set by an automatic check."""
    resolved_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    resolution_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    intact_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When an automatic check last found the subject intact again (None while it still fails): a hint for the
    person resolving it, not a resolution."""


class UserChange(Base):
    """A change to a user that needs a second admin (two-person rule): creating a user with, or adding, a role
    that reaches footage, grants or the audit trail (admin, approver, officer, auditor), or re-enabling a user.
    ``payload`` is the JSON of the change (a new user's password only as its argon2 hash). ``state``: pending,
    confirmed, rejected, cancelled. Requester and confirmer are always two different people."""

    __tablename__ = "user_changes"
    __table_args__ = (Index("ix_user_changes_state", "state"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    """``create``, ``roles`` or ``enable``."""
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    username: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    """The requesting admin; None for a change filed on the command line (``requested_by_name`` says who)."""
    requested_by_name: Mapped[str] = mapped_column(String(200))
    requested_us: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(20))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    decided_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class LoginThrottle(Base):
    """Failed logins per account (``user:<name>``) and per client address (``addr:<ip>``): after
    ``login_max_failures`` the key is locked for an exponentially growing time; an admin may unlock it."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_us: Mapped[int] = mapped_column(BigInteger)
    locked_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class DenialTally(Base):
    """Anonymous and forged-token refusals counted per client address, code and time bucket, so a flood costs one
    audit event per bucket (written when the bucket is summarised) rather than one per request."""

    __tablename__ = "denial_tally"
    bucket_us: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    client_addr: Mapped[str] = mapped_column(String(100), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_us: Mapped[int] = mapped_column(BigInteger)
    last_us: Mapped[int] = mapped_column(BigInteger)
    summarised: Mapped[bool] = mapped_column(Boolean, server_default="0")


class Alert(Base):
    """An abnormal-use rule that fired for a user (api.alerts). ``state``: open (awaiting an approver's review),
    restored (reviewed; the grants it suspended are active again) or upheld (reviewed; they stay suspended).
    ``suspended_grants`` lists the ids of the grants this alert suspended, comma-separated."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_user_rule_state", "user_id", "rule", "state"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(20))
    raised_us: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text)
    suspended_grants: Mapped[str] = mapped_column(Text, server_default="")
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    reviewed_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class OidcLoginState(Base):
    """A browser login begun at the identity provider (api.oidc): single-use (``used_us`` is set by one conditional
    UPDATE) and expiring. Only SHA-256 hashes of the ``state`` value and of the browser-binding cookie are kept."""

    __tablename__ = "oidc_login_states"
    __table_args__ = (
        Index("ix_oidc_login_states_expires_us", "expires_us"),
        Index("ix_oidc_login_states_client_addr", "client_addr", "expires_us"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(100))
    code_verifier: Mapped[str] = mapped_column(String(128))
    return_to: Mapped[str | None] = mapped_column(String(500), nullable=True)
    client_addr: Mapped[str] = mapped_column(String(64))
    """Who began it: one address may have only so many logins pending (api.oidc.MAX_PENDING_PER_ADDR)."""
    created_us: Mapped[int] = mapped_column(BigInteger)
    expires_us: Mapped[int] = mapped_column(BigInteger)
    used_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class OidcLink(Base):
    """How the server checks an identity-provider account at the provider (api.oidc): the provider's access and
    refresh tokens from the account's newest browser login here. ``state``: live, or dead once the provider refused
    them (``state_reason`` says how); a new browser login makes it live again."""

    __tablename__ = "oidc_links"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True, autoincrement=False)
    subject: Mapped[str] = mapped_column(String(255))
    access_token: Mapped[str] = mapped_column(Text)
    access_expires_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refresh_token: Mapped[str | None] = mapped_column(Text, nullable=True)
    linked_us: Mapped[int] = mapped_column(BigInteger)
    checked_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When the provider last vouched for the account (trusted for ``oidc_recheck_seconds``)."""
    refreshing_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Set while one request renews the access token with the refresh token, so that only one does."""
    state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Node(Base):
    """One recorder/API process (nvr.cluster): its id (the ``node_id`` setting, unique in the cluster), the instance
    (random per start, so a second process started with the same id is told apart and refused), its heartbeat in the
    database's own time, and the base URL other nodes and clients reach its API at."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance: Mapped[str] = mapped_column(String(36))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    api_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    labels: Mapped[str] = mapped_column(Text, default="")
    """Comma-separated placement labels (e.g. ``site:north``) a camera's placement may name."""
    state: Mapped[str] = mapped_column(String(20))
    """``running`` or ``stopped`` (a graceful stop); a running node whose heartbeat is old is dead."""
    started_us: Mapped[int] = mapped_column(BigInteger)
    heartbeat_us: Mapped[int] = mapped_column(BigInteger)
    cameras: Mapped[int] = mapped_column(Integer, default=0)
    """How many camera leases it held at its last heartbeat (its load)."""
    clock_skew_us: Mapped[int] = mapped_column(BigInteger, default=0)
    """Its wall clock minus the database's, at its last heartbeat."""
    lease_timeout_us: Mapped[int] = mapped_column(BigInteger, default=15_000_000)
    """Its lease timeout: it counts as dead once its heartbeat is older than this (whatever a reader's setting)."""


class Lease(Base):
    """Who may do one thing now (nvr.cluster): record a camera (``camera:<id>``) or run a once-per-cluster job
    (``job:<name>``). ``token`` grows by one at every acquisition and never goes back: it is the fencing token a
    segment insert checks in its transaction, so a node that lost the lease (paused, partitioned) cannot register
    what it wrote meanwhile. Times are the database's."""

    __tablename__ = "leases"
    resource: Mapped[str] = mapped_column(String(200), primary_key=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    token: Mapped[int] = mapped_column(BigInteger, default=0)
    acquired_us: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_us: Mapped[int] = mapped_column(BigInteger, default=0)
    placement: Mapped[str | None] = mapped_column(Text, nullable=True)
    """For a camera: comma-separated node ids or labels it may be recorded on (None: any node)."""
