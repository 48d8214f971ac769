"""Several recorder nodes on one database: membership, leases and fencing tokens.

Every ``nvr record``/``nvr serve`` process is a **node** (a ``nodes`` row: id, a random instance id per start, a
heartbeat). What a node may do is held through **leases** (``leases`` rows): ``camera:<id>`` to record a camera,
``job:<name>`` to run a once-per-cluster job (checkpoints, the sweeper, the scrubber, the export runner). All times
here are the database's own clock (PostgreSQL ``clock_timestamp()``), so nodes whose clocks differ agree on expiry;
a node whose clock differs from the database's by more than the lease timeout is refused at start.

A lease is held until ``expires_us``; its holder renews it at every sync. A node that stops heartbeating (killed,
paused, cut off) loses its leases when they expire, and live nodes take its cameras at their next sync, balanced by
count (and by placement: a camera may be pinned to nodes or labels). Each acquisition increments the lease's
**token**, which never goes back. A segment is registered only with the token its node held when it began
(:func:`check_fence`, in the insert's transaction): once another node has acquired the camera, the old holder's
late writes are refused (``lease_lost``) instead of forking or duplicating the chain.

On SQLite (one file, one machine) there is one node: a second live node is refused (``cluster_needs_postgresql``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from nvr.db import Database
from nvr.errors import Kind, NvrError
from nvr.models import Camera, Lease, Node

log = logging.getLogger(__name__)

CAMERA = "camera:"
ORDER_TOLERANCE_US = 1_000_000
"""How far a recovered segment may start before the camera's newest segment ends (clock jitter between nodes)."""
JOB = "job:"


def camera_resource(camera_id: str) -> str:
    return CAMERA + camera_id


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def db_now_us(session: Session, fallback: Callable[[], int]) -> int:
    """The database's clock in µs (PostgreSQL); on SQLite, one process on one machine, ``fallback()`` (the
    injected clock)."""
    if is_postgresql(session):
        return int(
            session.execute(text("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")).scalar_one()
        )
    return fallback()


def _lock(stmt):  # type: ignore[no-untyped-def]
    return stmt.with_for_update()


def _insert_ignore(session: Session) -> Any:
    """INSERT of free lease rows that does nothing for a row another node inserted first (ON CONFLICT DO NOTHING)."""
    ins = pg_insert(Lease) if is_postgresql(session) else sqlite_insert(Lease)
    return ins.values(node_id=None, token=0, acquired_us=0, expires_us=0).on_conflict_do_nothing(
        index_elements=["resource"]
    )


@dataclass(frozen=True)
class NodeSpec:
    id: str
    api_url: str | None = None
    labels: tuple[str, ...] = ()
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    instance: str = field(default_factory=lambda: str(uuid.uuid4()))


def default_node_id() -> str:
    return socket.gethostname()[:64] or "node"


def _eligible(placement: str | None, node_id: str, labels: Iterable[str]) -> bool:
    if not placement:
        return True
    wanted = {p.strip() for p in placement.split(",") if p.strip()}
    return node_id in wanted or bool(wanted & set(labels))


@dataclass(frozen=True)
class CameraLeases:
    record: dict[str, int]
    """Camera id -> the token to register its segments under: the cameras this node should record now."""
    give_back: set[str]
    """Cameras this node still holds but should hand over: stop their workers, then ``release`` them."""


def _pid_alive(pid: int) -> bool:
    """On the same machine a node's process can be asked directly: a killed node need not wait out its lease to be
    restarted under its id."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeLost(NvrError):
    """This process is no longer the node it started as (another instance took the id, or its row went)."""


class Membership:
    """One node's view of the cluster: join, heartbeat and lease bookkeeping (one per process)."""

    def __init__(self, db: Database, node: NodeSpec, lease_timeout_us: int, clock_us: Callable[[], int]) -> None:
        self.db = db
        self.node = node
        self.timeout_us = lease_timeout_us
        self.clock_us = clock_us
        self.tokens: dict[str, int] = {}
        """Resource -> the token this node holds it under (what it last acquired or renewed)."""
        self.joined = False

    # --- membership --------------------------------------------------------------------------------------------
    def join(self) -> None:
        """Register this process as the node, or refuse: the id is held by another live instance
        (``node_id_in_use``), another node is alive on SQLite (``cluster_needs_postgresql``), or this machine's
        clock is off the database's by more than the lease timeout (``node_clock_skew``). Once per process."""
        if self.joined:
            return
        with self.db.session() as s:
            now = db_now_us(s, self.clock_us)
            skew = self.clock_us() - now
            if abs(skew) > self.timeout_us:
                raise NvrError(
                    Kind.FAILED_PRECONDITION,
                    "node_clock_skew",
                    f"this machine's clock is {skew / 1e6:+.1f} s off the database's, more than the lease timeout "
                    f"({self.timeout_us / 1e6:.0f} s): fix its time synchronisation before it records",
                )
            alive_after = now - self.timeout_us
            rows = list(s.scalars(_lock(select(Node))))
            mine = next((n for n in rows if n.id == self.node.id), None)
            if (
                mine is not None
                and mine.state == "running"
                and mine.heartbeat_us > alive_after
                and not (mine.hostname == self.node.hostname and not _pid_alive(mine.pid))
            ):
                raise NvrError(
                    Kind.CONFLICT,
                    "node_id_in_use",
                    f"node id {self.node.id!r} is in use by a live process (pid {mine.pid} on {mine.hostname}, "
                    f"heartbeat {(now - mine.heartbeat_us) / 1e6:.1f} s ago); give this one another node_id",
                )
            others = [n for n in rows if n.id != self.node.id and n.state == "running" and n.heartbeat_us > alive_after]
            if others and not is_postgresql(s):
                raise NvrError(
                    Kind.FAILED_PRECONDITION,
                    "cluster_needs_postgresql",
                    f"node {others[0].id!r} (pid {others[0].pid} on {others[0].hostname}) already records from this "
                    "SQLite database; several nodes need PostgreSQL (NVR_DATABASE_URL)",
                )
            values = {
                "instance": self.node.instance,
                "hostname": self.node.hostname[:255],
                "pid": self.node.pid,
                "api_url": self.node.api_url,
                "labels": ",".join(self.node.labels),
                "state": "running",
                "started_us": now,
                "heartbeat_us": now,
                "cameras": 0,
                "clock_skew_us": skew,
                "lease_timeout_us": self.timeout_us,
            }
            if mine is None:
                s.add(Node(id=self.node.id, **values))
            else:
                for k, v in values.items():
                    setattr(mine, k, v)
        self.joined = True
        log.info("node %s joined (instance %s)", self.node.id, self.node.instance)

    def heartbeat(self, cameras: int) -> None:
        with self.db.session() as s:
            now = db_now_us(s, self.clock_us)
            n = s.execute(
                update(Node)
                .where(Node.id == self.node.id, Node.instance == self.node.instance)
                .values(heartbeat_us=now, cameras=cameras, clock_skew_us=self.clock_us() - now, state="running")
            ).rowcount  # type: ignore[attr-defined]
        if n != 1:
            raise NodeLost(
                Kind.CONFLICT,
                "node_id_in_use",
                f"node {self.node.id!r}: another process took over this node id; this one stops recording",
            )

    def leave(self) -> None:
        """Graceful stop: hand every lease over at once and say so, so others need not wait for the timeout."""
        with self.db.session() as s:
            s.execute(update(Lease).where(Lease.node_id == self.node.id).values(node_id=None, expires_us=0))
            s.execute(
                update(Node)
                .where(Node.id == self.node.id, Node.instance == self.node.instance)
                .values(state="stopped", cameras=0)
            )
        self.tokens.clear()

    # --- leases ------------------------------------------------------------------------------------------------
    def sync_cameras(self) -> CameraLeases:
        """One transaction: renew every camera lease this node holds, take its share of the free or expired ones,
        and say which it should record and which it should give back (above its share now that other nodes are
        short, or no longer active or placed here). Nothing is released here: the caller first stops the worker,
        whose last segment is then registered under a lease still held, and then calls :meth:`release`."""
        with self.db.session() as s:
            now = db_now_us(s, self.clock_us)
            alive_after = now - self.timeout_us
            active = set(s.scalars(select(Camera.id).where(Camera.state == "active")))
            have = set(s.scalars(select(Lease.resource).where(Lease.resource.like(CAMERA + "%"))))
            missing = [camera_resource(c) for c in sorted(active) if camera_resource(c) not in have]
            if missing:  # a lease row per active camera, made once; two nodes starting together may both try
                s.execute(_insert_ignore(s), [{"resource": r} for r in missing])
            # Renew what is still ours under the token we hold it by (nobody took it meanwhile, even if it expired
            # while the database was away). A lease row naming us that we never acquired in this process is one a
            # previous run of this node held (it is dead: join checked): adopted, so its journals still register.
            held: dict[str, tuple[int, int]] = {}  # camera -> (token, acquired_us)
            for lease in s.scalars(
                _lock(select(Lease).where(Lease.node_id == self.node.id, Lease.resource.like(CAMERA + "%")))
            ):
                token = self.tokens.get(lease.resource)
                if token is not None and token != lease.token:
                    continue
                lease.expires_us = now + self.timeout_us
                held[lease.resource[len(CAMERA) :]] = (lease.token, lease.acquired_us)
            placement = {
                r[len(CAMERA) :]: p
                for r, p in s.execute(select(Lease.resource, Lease.placement).where(Lease.resource.like(CAMERA + "%")))
            }
            live_ids = set(
                s.scalars(select(Node.id).where(Node.state == "running", Node.heartbeat_us > alive_after))
            ) | {self.node.id}
            mine = [c for c in active if _eligible(placement.get(c), self.node.id, self.node.labels)]
            share = math.ceil(len(mine) / max(len(live_ids), 1)) if mine else 0
            keep = {c for c in held if c in active and _eligible(placement.get(c), self.node.id, self.node.labels)}
            if len(keep) < share:
                stmt = (
                    select(Lease)
                    .where(
                        Lease.resource.in_([camera_resource(c) for c in mine]),
                        or_(Lease.node_id.is_(None), Lease.expires_us <= now, Lease.node_id.not_in(live_ids)),
                    )
                    .order_by(Lease.resource)
                )
                if is_postgresql(s):
                    stmt = stmt.with_for_update(skip_locked=True)  # two nodes claiming at once take different rows
                for lease in s.scalars(stmt):
                    if len(keep) >= share:
                        break
                    cam = lease.resource[len(CAMERA) :]
                    if cam in held:
                        continue
                    lease.node_id, lease.token, lease.acquired_us = self.node.id, lease.token + 1, now
                    lease.expires_us = now + self.timeout_us
                    held[cam] = (lease.token, now)
                    keep.add(cam)
            elif len(keep) > share + 1 or (len(keep) > share and self._someone_short(s, share, live_ids, now)):
                # Others joined: give back the most recently acquired above our share; they take them next sync.
                for cam in sorted(keep, key=lambda c: held[c][1], reverse=True)[: len(keep) - share]:
                    keep.discard(cam)
        self.tokens = {camera_resource(c): t for c, (t, _a) in held.items()} | {
            r: t for r, t in self.tokens.items() if r.startswith(JOB)
        }
        return CameraLeases({c: held[c][0] for c in keep}, set(held) - keep)

    def release(self, camera_ids: Iterable[str]) -> None:
        """Give camera leases back at once (their workers are stopped): another node takes them at its next sync."""
        resources = [camera_resource(c) for c in camera_ids]
        if not resources:
            return
        with self.db.session() as s:
            s.execute(
                update(Lease)
                .where(Lease.resource.in_(resources), Lease.node_id == self.node.id)
                .values(node_id=None, expires_us=0)
            )
        for r in resources:
            self.tokens.pop(r, None)

    @staticmethod
    def _someone_short(s: Session, share: int, live_ids: set[str], now: int) -> bool:
        counts = {n: 0 for n in live_ids}
        for node_id in s.scalars(
            select(Lease.node_id).where(
                Lease.resource.like(CAMERA + "%"), Lease.node_id.is_not(None), Lease.expires_us > now
            )
        ):
            if node_id in counts:
                counts[node_id] += 1
        return any(c < share - 1 for c in counts.values())

    def job(self, name: str) -> int | None:
        """Hold (acquire or renew) the once-per-cluster job ``name``; its token when this node holds it, else None."""
        resource = JOB + name
        with self.db.session() as s:
            now = db_now_us(s, self.clock_us)
            s.execute(_insert_ignore(s), [{"resource": resource}])
            lease = s.scalar(_lock(select(Lease).where(Lease.resource == resource)))
            assert lease is not None
            if lease.node_id == self.node.id and self.tokens.get(resource) in (None, lease.token):
                lease.expires_us = now + self.timeout_us
            elif lease.node_id is None or lease.expires_us <= now:
                lease.node_id, lease.token, lease.acquired_us = self.node.id, lease.token + 1, now
                lease.expires_us = now + self.timeout_us
            else:
                self.tokens.pop(resource, None)
                return None
            self.tokens[resource] = lease.token
            return lease.token


def check_fence(
    session: Session,
    camera_id: str,
    fence: tuple[str, int] | None,
    end_us: int = 0,
    recovered: bool = False,
    start_us: int = 0,
    last_end_us: int | None = None,
) -> None:
    """In a segment insert's transaction: refuse unless ``fence`` = (node id, token) is still the camera's lease
    token (the row is locked until commit, so a concurrent acquisition waits for it or sees the new token).

    The token, not the expiry, decides: a node whose lease expired while nobody took the camera (the database was
    away, the node was slow) still registers what it recorded, since no one else recorded it; once another node
    has acquired the camera, everything the old holder writes is refused. ``recovered``: a file start-up recovery
    found after a crash may still be registered when it ended (``end_us``) before the new holder acquired the
    camera and begins after the camera's newest segment (``last_end_us``): it then overlaps nothing and keeps the
    chain in time order; otherwise it is fenced like a late write. ``None``: a caller outside the recorder."""
    if fence is None:
        return
    node_id, token = fence
    lease = session.scalar(_lock(select(Lease).where(Lease.resource == camera_resource(camera_id))))
    if lease is not None and (lease.node_id, lease.token) == (node_id, token):
        return
    if (
        recovered
        and lease is not None
        and lease.token > token
        and end_us <= lease.acquired_us
        and (last_end_us is None or start_us >= last_end_us - ORDER_TOLERANCE_US)
    ):
        return
    holder = "nobody" if lease is None or lease.node_id is None else f"node {lease.node_id!r}"
    raise NvrError(
        Kind.CONFLICT,
        "lease_lost",
        f"camera {camera_id}: node {node_id!r} lost its lease (token {token}; now {holder}, token "
        f"{lease.token if lease else '-'}); its segment is not registered",
    )


def cluster_view(session: Session, timeout_us: int, clock_us: Callable[[], int]) -> dict[str, object]:
    """``nvr node list`` / ``GET /api/v1/nodes``: every node with its state and load, and every lease."""
    now = db_now_us(session, clock_us)
    nodes = []
    for n in session.scalars(select(Node).order_by(Node.id)):
        limit = n.lease_timeout_us or timeout_us  # the node's own timeout, not the reader's setting
        state = n.state if n.state != "running" else ("alive" if n.heartbeat_us > now - limit else "dead")
        nodes.append(
            {
                "id": n.id,
                "state": state,
                "heartbeat_age_s": round((now - n.heartbeat_us) / 1e6, 3),
                "cameras": n.cameras if state == "alive" else 0,
                "labels": [x for x in n.labels.split(",") if x],
                "api_url": n.api_url,
                "hostname": n.hostname,
                "pid": n.pid,
                "clock_skew_s": round(n.clock_skew_us / 1e6, 3),
                "started_us": n.started_us,
                "lease_timeout_s": round(limit / 1e6, 3),
            }
        )
    leases = [
        {
            "resource": lease.resource,
            "node_id": lease.node_id if lease.expires_us > now else None,
            "token": lease.token,
            "expires_in_s": round((lease.expires_us - now) / 1e6, 3) if lease.expires_us > now else None,
            "placement": lease.placement,
        }
        for lease in session.scalars(select(Lease).order_by(Lease.resource))
    ]
    return {"nodes": nodes, "leases": leases}


def held_by(session: Session, resource: str, now_us: int) -> str | None:
    """The node holding ``resource`` now, if any."""
    lease = session.scalar(select(Lease).where(Lease.resource == resource, and_(Lease.expires_us > now_us)))
    return None if lease is None else lease.node_id


def set_placement(session: Session, camera_id: str, targets: list[str]) -> str | None:
    """Pin a camera to node ids or labels (``[]``: any node); returns the placement stored."""
    if session.get(Camera, camera_id) is None:
        raise NvrError(Kind.NOT_FOUND, "camera_not_found", f"no camera {camera_id!r}")
    clean = [t.strip() for t in targets if t.strip()]
    for t in clean:
        if "," in t or len(t) > 64:
            raise NvrError(
                Kind.INVALID_ARGUMENT, "placement_invalid", f"placement target {t[:80]!r} is not a node id or label"
            )
    placement = ",".join(clean) or None
    lease = session.get(Lease, camera_resource(camera_id))
    if lease is None:
        session.add(
            Lease(
                resource=camera_resource(camera_id),
                node_id=None,
                token=0,
                acquired_us=0,
                expires_us=0,
                placement=placement,
            )
        )
    else:
        lease.placement = placement
    return placement
