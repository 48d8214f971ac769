"""Database engine, sessions and migrations.

One unit of work per command, worker step or request: ``with db.session() as s`` commits on success and rolls
back on error. Services call ``flush()`` when they need ids, never ``commit()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from nvr.errors import Kind, NvrError
from nvr.models import Meta

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: all nvr processes on one PostgreSQL database take this advisory lock to migrate.
_MIGRATION_LOCK_KEY = 0x6E7672_0001


def redact_db_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets status readers run while the recorder writes; synchronous=FULL makes a committed segment row
    # survive power loss, which the crash-safety order relies on (the row is the last step).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict = {"future": True}
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            url = str(parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
        if parsed.get_backend_name() != "sqlite":
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=40)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        s = self._sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def migrate(self) -> None:
        """Bring the schema to the newest revision and give the database its identity; idempotent.

        Several commands may start at once on a new database (``nvr serve`` and ``nvr status`` beside it): the
        migration and the identity are made under one lock (a PostgreSQL advisory lock, or a file lock beside the
        SQLite file), so the second one finds the work done instead of failing on "table already exists".
        """
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if conn.execute(select(Meta.value).where(Meta.key == "database_id")).first() is None:
                conn.execute(insert(Meta).values(key="database_id", value=str(uuid.uuid4())))

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        parsed = make_url(self.url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            yield
            return
        with open(str(parsed.database) + ".migrate.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def database_id(self) -> str:
        """The id volumes carry to prove they belong to this database; made once by ``migrate``, never changed."""
        with self.session() as s:
            row = s.get(Meta, "database_id")
            if row is None:
                raise NvrError(
                    Kind.FAILED_PRECONDITION,
                    "database_not_initialised",
                    f"database at {redact_db_url(self.url)} has no identity; run 'nvr init'",
                )
            return row.value

    def check_schema(self) -> None:
        with self.session() as s:
            try:
                s.execute(select(Meta).limit(1))
            except Exception as exc:
                raise NvrError(
                    Kind.FAILED_PRECONDITION,
                    "database_not_initialised",
                    f"database at {redact_db_url(self.url)} has no schema; run 'nvr init' ({exc.__class__.__name__})",
                ) from None

    def dispose(self) -> None:
        self.engine.dispose()
