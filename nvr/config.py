"""Settings: ``NVR_`` environment variables over an optional TOML file over defaults.

Unknown keys are refused at start-up with the key named, in the file and in the environment alike: a misspelt
``NVR_SEGMENT_SECONS`` must not silently record 60 s segments. Every field is documented in docs/configuration.md.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from nvr.errors import Kind, NvrError

ENV_PREFIX = "NVR_"
# Read by the loader itself, not a setting: where the TOML file is.
CONFIG_ENV = "NVR_CONFIG"


# The abnormal-use rules (api.alerts), by the names alert_suspend_rules and the alerts use.
ALERT_RULES = (
    "footage_volume",
    "camera_spread",
    "repeated_denials",
    "many_destinations",
    "off_hours",
    "unusual_cameras",
)


def parse_off_hours(text: str) -> tuple[int, int] | None:
    """``"22-06"`` -> (22, 6); None when it is not two different whole hours 0-23."""
    m = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", text)
    if m is None:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    return (start, end) if start < 24 and end < 24 and start != end else None


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nvr"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    """Holds the default database, the keys and the default volume, so every command finds the same state."""

    database_url: str | None = None
    """SQLAlchemy URL; unset means SQLite at ``<data_dir>/nvr.db``."""

    volumes: list[Path] = Field(default_factory=list)
    """Archive folders; unset means ``<data_dir>/volumes/default``. Each must carry this database's identity."""

    segment_seconds: float = Field(default=60.0, ge=1.0, le=3600.0)
    """Target segment length: a segment is cut at the first keyframe after this much media time."""

    rtsp_transport: Literal["tcp", "udp", "http"] = "tcp"
    rtsp_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Socket timeout of the RTSP input; a camera silent this long is a disconnect."""

    reconnect_min_seconds: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_seconds: float = Field(default=60.0, gt=0, le=3600)

    clock_step_threshold_seconds: float = Field(default=2.0, gt=0)
    """A jump between camera time and server time larger than this is recorded as a clock step."""

    volume_min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Critical mark: below this much free space the recorder stops writing to a volume and alarms."""

    retention_floor_days: int = Field(default=30, ge=30, le=36_500)
    """The system's retention floor: no policy may keep footage for less. It may be raised, never below 30."""
    retention_high_water_percent: float = Field(default=90.0, gt=0, le=100)
    """Above this much of a volume used, the sweeper deletes the oldest footage past its retention (oldest first,
    across cameras) until the volume is back under the low-water mark."""
    retention_low_water_percent: float = Field(default=85.0, gt=0, le=100)
    sweep_interval_seconds: float = Field(default=300.0, ge=1, le=86_400)
    """How often ``nvr serve`` runs the sweeper."""
    sweep_batch_size: int = Field(default=1000, ge=1, le=100_000)
    """Segments per sweeper batch (one garbage-list round and one audit event each)."""

    crypto_suite: Literal["ed25519-sha256", "sm2-sm3"] = "ed25519-sha256"
    """The crypto suite new signing keys are made in (integrity.suites): ``ed25519-sha256`` or ``sm2-sm3`` (SM2
    signatures, SM3 hashes, SM4 encryption). ``nvr init`` makes the first key in it; changing it takes effect with
    ``nvr keys rotate``. Material made before keeps verifying with the suite it names."""
    encryption_at_rest: bool = False
    """Encrypt every volume's new segments (storage.crypt): each segment under its own data key in the active suite's
    cipher (AES-256-GCM or SM4-GCM), wrapped by a master key in ``master_key_dir``. A volume registered encrypted
    (``nvr volume init --encrypt``, or while this is set) stays encrypted when this is later unset."""
    master_key_dir: Path | None = None
    """Where the master keys of encryption at rest live; unset means ``<data_dir>/master-keys``. Keep it off the
    footage volumes, readable by the service only, and backed up: without its keys encrypted footage is lost."""
    node_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    """This process's node id in a cluster (nvr.cluster); unset means the host name. Unique per live node."""
    node_labels: list[str] = Field(default_factory=list)
    """Placement labels of this node (e.g. ``site:north``): a camera pinned to a label is recorded only by nodes
    carrying it (``nvr node pin``)."""
    node_api_url: str | None = None
    """The base URL other nodes and clients reach this node's API at (shown by ``nvr node list``)."""
    lease_timeout_seconds: float = Field(default=15.0, ge=1.0, le=600.0)
    """A node that stops heartbeating loses its camera and job leases after this long; live nodes then take them."""
    checkpoint_interval_minutes: float = Field(default=10.0, gt=0, le=1440)
    """How often the server writes a signed checkpoint of every camera's chain head and the audit log's head."""
    trusted_key_fingerprints: list[str] = Field(default_factory=list)
    """Signing-key fingerprints trusted from outside the data folder (SHA-256 of the public key's DER, as
    ``nvr keys list`` prints them). Checkpoints and bundles verify only with keys pinned in ``<data_dir>/keys``'s key
    log or listed here; a key log whose first key is not listed is refused when this is set."""
    checkpoint_witness_path: Path | None = None
    """A file (best on another volume or host) each signed checkpoint is appended to as one JSON line, besides the
    witness kept in the keys folder; ``nvr verify`` checks the database's checkpoints against every witness."""
    clock_tolerance_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60)
    """How far the wall clock may run ahead of the trusted time (the newest signed checkpoint plus the monotonic
    time elapsed since it was read) before ``clock_untrusted`` is raised and the sweeper deletes nothing."""
    scrub_read_mb_per_second: float = Field(default=20.0, ge=0, le=10_000)
    """Read rate of the background scrubber that re-hashes segments (MB = 10^6 bytes); 0 turns it off."""
    scrub_pass_interval_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    """A scrub pass over the whole archive starts at most this often (it takes as long as the rate needs)."""
    export_approval_valid_days: int = Field(default=7, ge=1, le=90)
    """An approved export request expires this long after its approval if no bundle was made."""
    export_bundle_days: int = Field(default=30, ge=1, le=3650)
    """A finished export bundle may be downloaded for this long; then it is deleted."""
    export_max_downloads: int = Field(default=3, ge=1, le=100)
    """How many times a bundle may be downloaded (by its requester and co-signer together)."""
    export_max_window_hours: int = Field(default=24, ge=1, le=24 * 31)
    """Longest footage window one export request may cover."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    """Where ``nvr serve`` and ``nvr api`` listen. Loopback by default: put TLS in front before opening it up."""

    session_hours: float = Field(default=12.0, gt=0, le=24 * 7)
    """Lifetime of a login session token."""
    personal_token_max_days: int = Field(default=365, ge=1, le=365)
    """Longest lifetime a personal API token may be given."""
    playback_max_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    """Longest footage window one playback request may ask for."""
    listing_max_days: int = Field(default=31, ge=1, le=366)
    """Longest window one recordings listing may cover."""
    playback_ticket_seconds: int = Field(default=300, ge=10, le=3600)
    """Lifetime of a playback ticket (the credential in a ``<video src>`` URL)."""
    playback_session_idle_seconds: int = Field(default=30, ge=1, le=30)
    """A playback session (a player's HTTP Range requests of one viewing: one ``playback.start``, one
    ``playback.end``) ends once no request of it has run for this long. At most 30 s: an idle session's read pin
    holds through its last heartbeat's 30 s (storage.pins.PIN_STALE_US), which is what the sweeper respects."""
    live_viewer_queue_fragments: int = Field(default=250, ge=8, le=10_000)
    """Live view (nvr.recorder.live): fragments (one per frame) queued for one viewer before it is dropped as too
    slow (``viewer_too_slow``); 250 is 10 s of a 25 fps camera. The recording never waits for a viewer."""
    live_viewer_queue_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    """Live view: bytes queued for one viewer before it is dropped as too slow."""
    live_start_seconds: float = Field(default=10.0, gt=0, le=120)
    """Live view: how long a new stream waits for the camera's next keyframe before 409 ``camera_not_recording``."""
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Request bodies larger than this are refused with 413 before they are read."""

    # --- abuse resistance (api.throttle, api.denials) ---------------------------------------------------------
    login_max_failures: int = Field(default=5, ge=1, le=100)
    """Wrong passwords for one account before it is locked; the lock doubles with each further failure."""
    login_addr_max_failures: int = Field(default=20, ge=1, le=10_000)
    """Failed logins from one client address (any accounts) before the address is locked."""
    login_lock_seconds: float = Field(default=30.0, gt=0, le=86_400)
    """First lock after the limit; each further failure doubles it, up to ``login_lock_max_seconds``."""
    login_lock_max_seconds: float = Field(default=3600.0, gt=0, le=30 * 86_400)
    anonymous_denials_per_minute: int = Field(default=60, ge=1, le=100_000)
    """Refusals without a valid credential one client address may cause per minute before it gets 429."""
    denial_bucket_seconds: int = Field(default=60, ge=1, le=3600)
    """Anonymous refusals are counted per address, code and bucket; each bucket is one audit event."""

    # --- unified identity login (api.oidc) --------------------------------------------------------------------
    oidc_issuer: str | None = None
    """The identity provider's issuer URL; unset means local password accounts only."""
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    """Confidential clients only; the browser flow always uses PKCE as well. Never logged."""
    oidc_redirect_uri: str | None = None
    """This server's callback, e.g. https://nvr.example/api/v1/auth/oidc/callback."""
    oidc_audience: str | None = None
    """The ``aud`` a script's bearer JWT access token must carry (this API's resource identifier)."""
    oidc_scopes: list[str] = Field(default_factory=lambda: ["openid", "profile"])
    oidc_username_claim: str = "preferred_username"
    oidc_name_claim: str = "name"
    oidc_staff_number_claim: str = "staff_number"
    oidc_unit_claim: str = "unit"
    oidc_roles_claim: str = "groups"
    oidc_role_map: dict[str, str] = Field(default_factory=dict)
    """Provider group (claim value) -> local role, e.g. {"nvr-officers": "officer"}. Unmapped groups give nothing."""
    oidc_recheck_seconds: float = Field(default=0.0, ge=0, le=3600)
    """How long an identity-provider account's liveness check is trusted; 0 checks it on every request."""
    oidc_access_token_types: list[str] = Field(default_factory=lambda: ["at+jwt", "application/at+jwt"])
    """``typ`` header values a script's JWT access token must carry (RFC 9068); empty accepts any (for providers
    that send ``JWT``), leaving the audience alone to keep other tokens out."""

    # --- abnormal-use detection (api.alerts) ------------------------------------------------------------------
    alert_footage_hours_per_hour: float = Field(default=24.0, gt=0, le=100_000)
    """Hours of footage one user may retrieve (play, live, download) in any hour before an alert."""
    alert_cameras_per_hour: int = Field(default=20, ge=1, le=100_000)
    """Distinct cameras one user may reach in any hour before an alert."""
    alert_denials_per_hour: int = Field(default=10, ge=1, le=100_000)
    """Refusals of one user's requests in any hour before an alert."""
    alert_destinations_per_day: int = Field(default=3, ge=1, le=10_000)
    """Distinct download destinations one user may name in any 24 hours before an alert."""
    alert_off_hours: str = "22-06"
    """Local hours (``site_timezone``) outside the working day, as ``start-end``; empty turns the rule off."""
    alert_unusual_cameras_per_hour: int = Field(default=5, ge=1, le=10_000)
    """Cameras played in an hour that the user did not touch in the previous ``alert_usual_days`` days."""
    alert_usual_days: int = Field(default=30, ge=1, le=365)
    alert_suspend_rules: list[str] = Field(
        default_factory=lambda: ["footage_volume", "camera_spread", "repeated_denials", "many_destinations"]
    )
    """Rules whose alert suspends the user's grants at once, until an approver reviews it."""
    site_timezone: str = "UTC"
    """IANA time zone of the site, for off-hours (stored times stay UTC)."""

    demo_rtsp_host: str = "127.0.0.1"
    """Where the demo cameras listen; 0.0.0.0 to reach them from outside a container."""
    demo_rtsp_port: int = Field(default=8554, ge=0, le=65535)
    demo_cameras: int = Field(default=1, ge=1, le=256)
    demo_width: int = Field(default=640, ge=64, le=3840)
    demo_height: int = Field(default=360, ge=64, le=2160)
    demo_fps: int = Field(default=25, ge=1, le=60)
    demo_bitrate: int = Field(default=800_000, ge=50_000, le=50_000_000)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("trusted_key_fingerprints")
    @classmethod
    def _fingerprints(cls, value: list[str]) -> list[str]:
        out = []
        for fp in value:
            t = re.sub(r"[\s:]", "", fp.strip().lower().removeprefix("sha256:"))
            if not re.fullmatch(r"[0-9a-f]{64}", t):
                raise ValueError(f"{fp!r} is not a key fingerprint (64 hex digits, as 'nvr keys list' prints it)")
            out.append(t)
        return out

    @field_validator("demo_width", "demo_height")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (H.264 4:2:0 frames have even sizes)")
        return value

    @field_validator("alert_off_hours")
    @classmethod
    def _off_hours(cls, value: str) -> str:
        value = value.strip()
        if value and parse_off_hours(value) is None:
            raise ValueError("must be 'start-end' in whole local hours 0-23, start and end different, e.g. '22-06'")
        return value

    @field_validator("alert_suspend_rules")
    @classmethod
    def _suspend_rules(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in ALERT_RULES]
        if unknown:
            raise ValueError(f"unknown rule(s) {', '.join(unknown)}; the rules are {', '.join(ALERT_RULES)}")
        return value

    @field_validator("site_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. 'Europe/Berlin')") from exc
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ValueError("reconnect_max_seconds must not be below reconnect_min_seconds")
        if self.retention_low_water_percent > self.retention_high_water_percent:
            raise ValueError("retention_low_water_percent must not be above retention_high_water_percent")
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'nvr.db'}"

    @property
    def effective_volumes(self) -> list[Path]:
        if self.volumes:
            return [v.expanduser().absolute() for v in self.volumes]
        return [self.data_dir / "volumes" / "default"]

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def master_keys_dir(self) -> Path:
        """The master-key folder of encryption at rest (``master_key_dir`` or ``<data_dir>/master-keys``)."""
        return (self.master_key_dir or self.data_dir / "master-keys").expanduser().absolute()

    @property
    def exports_dir(self) -> Path:
        """Finished export bundles (and, while one is made, its ``.partial`` file)."""
        return self.data_dir / "exports"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env files and no secrets dir: one place for files (the TOML), one for overrides (the environment).
        return (init_settings, env_settings)


def _unknown_env_keys(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def _format_validation(error: ValidationError, origin: str) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(settings)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown setting {key!r} in {origin}")
        else:
            parts.append(f"setting {key!r}: {item['msg']}")
    return "; ".join(parts)


def load_settings(config_file: Path | None = None) -> Settings:
    """Load settings or raise ``NvrError(config_invalid)`` naming every bad key."""
    unknown = _unknown_env_keys(dict(os.environ))
    if unknown:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "config_invalid",
            "unknown environment setting(s): " + ", ".join(unknown) + " (see docs/configuration.md)",
        )
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    file_values: dict[str, Any] = {}
    origin = "the environment"
    if path is not None:
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NvrError(Kind.INVALID_ARGUMENT, "config_invalid", f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise NvrError(Kind.INVALID_ARGUMENT, "config_invalid", f"config file {path}: {exc}") from None
        origin = f"config file {path}"
        # Init values outrank the environment in pydantic-settings; drop the file's keys the environment sets,
        # so that an NVR_ variable overrides the file as operators expect.
        overridden = {k[len(ENV_PREFIX) :].lower() for k in os.environ if k.upper().startswith(ENV_PREFIX)}
        file_values = {k: v for k, v in file_values.items() if k.lower() not in overridden}
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise NvrError(Kind.INVALID_ARGUMENT, "config_invalid", _format_validation(exc, origin)) from None
