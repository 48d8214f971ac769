"""Putting the pieces together for a command: settings, logging, database, volumes, recorder context."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nvr.clock import Clock, SystemClock
from nvr.cluster import Membership, NodeSpec, default_node_id
from nvr.config import Settings, load_settings
from nvr.db import Database
from nvr.recorder import live
from nvr.recorder.context import RecorderContext, volume_infos
from nvr.recorder.live import LiveHub
from nvr.registry import redact_text
from storage import volumes as vol

if TYPE_CHECKING:
    from integrity.trusted_time import TrustedClock

log = logging.getLogger(__name__)


class RedactingFilter(logging.Filter):
    """Belt and braces: whatever a message says, URL credentials never reach a log."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set: the traceback (which may quote a URL) is cleaned once here.
            record.exc_text = redact_text(self._formatter.formatException(record.exc_info))
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Migrations announce themselves at INFO on every start; only their problems matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clock: Clock

    @classmethod
    def open(cls, settings: Settings | None = None, clock: Clock | None = None, migrate: bool = True) -> Runtime:
        settings = settings or load_settings()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        if migrate:
            db.migrate()
        else:
            db.check_schema()
        return cls(settings, db, clock or SystemClock())

    @property
    def trusted(self) -> TrustedClock:
        """The process's trusted time over this database and clock (integrity.trusted_time): what retention and
        new checkpoints go by. The same object for every caller, so its monotonic reading spans the whole run."""
        from integrity.trusted_time import shared

        return shared(self.db, self.settings, self.clock)

    def init_default_volume(self) -> None:
        """The default volume (inside the data folder) is made on first use; configured ones never are."""
        if self.settings.volumes:
            return
        path = self.settings.effective_volumes[0]
        with self.db.session() as s:
            if vol.read_identity(path) is None:
                vol.init_volume(s, path, self.db.database_id(), self.clock.now_us())

    @property
    def live(self) -> LiveHub:
        """The process's live-view hub over this database (nvr.recorder.live.shared): the recorder publishes into it,
        the API of the same process serves viewers from it."""
        return live.shared(self.db)

    def recorder_context(self) -> RecorderContext:
        infos = volume_infos(self.db, self.settings.effective_volumes)
        if self.settings.encryption_at_rest or any(v.encrypted for v in infos):
            infos = self.prepare_encryption(infos)
        return RecorderContext(
            settings=self.settings,
            db=self.db,
            clock=self.clock,
            database_id=self.db.database_id(),
            volumes=infos,
            live=self.live,
            membership=self.membership(),
        )

    def membership(self) -> Membership:
        """This process as a node of the cluster (nvr.cluster), from the ``node_*`` settings."""
        s = self.settings
        spec = NodeSpec(s.node_id or default_node_id(), s.node_api_url, tuple(s.node_labels))
        return Membership(self.db, spec, int(s.lease_timeout_seconds * 1_000_000), self.clock.now_us)

    def prepare_encryption(self, infos: list[vol.VolumeInfo]) -> list[vol.VolumeInfo]:
        """With ``encryption_at_rest`` every configured volume becomes an encrypted one for good; the first master key
        is made on first use. A missing master key is not fatal here (the API must still come up to say so): the
        recorder refuses to open a segment on an encrypted volume and ``/health`` raises ``master_key_missing``."""
        from storage.keyring import Keyring, KeyringError, ensure_master_key

        with self.db.session() as s:
            if self.settings.encryption_at_rest:
                infos = [v if v.encrypted else vol.mark_encrypted(s, v) for v in infos]
        try:
            with self.db.session() as s:
                ensure_master_key(s, Keyring(self.settings.master_keys_dir), self.clock.now_us())
        except (KeyringError, OSError) as exc:
            log.error("encryption at rest: %s", exc)
        return infos
