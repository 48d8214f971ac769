"""Several recorder nodes on one PostgreSQL (issue 15): three ``nvr record`` processes on this machine share six demo
cameras through leases; one is SIGKILLed (and later restarted), one SIGSTOPped past its lease and resumed, one cut
off from PostgreSQL by a relay and reconnected, one stopped gracefully, and PostgreSQL is restarted under them. Per
camera the chain stays one chain (seqs 1..n, no overlap, no file twice), with gaps only where no node could record,
and a stale node's late segment is refused by its fencing token and reported.

On SQLite a cluster cannot be: the second node is refused with ``cluster_needs_postgresql``.

Bounds (lease timeout 4 s unless a test says otherwise, segments 2 s, GOP 1 s):

- sync_s(lease): a lease given up or expired is taken at the taker's next sync, at most this later (the supervisor
  syncs every 2 s, or every quarter of the lease timeout when that is shorter);
- RECONNECT_S: the taker's new worker opens the RTSP session and waits for the first keyframe (one GOP), after
  which its first segment starts;
- SLACK_S: scheduling on a loaded two-core CI machine.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from storage import fmp4
from tests.support.cluster import CAMERAS, US, Cluster, Seg, chain_problems, holes
from tests.support.recording import wait_for

LEASE_S = 4.0
SEGMENT_S = 2.0


def sync_s(lease_s: float) -> float:
    return min(2.0, lease_s / 4)


SYNC_S = sync_s(LEASE_S)
RECONNECT_S = 2.0
SLACK_S = 2.0


# A handover without a death (rebalancing as nodes join, a graceful stop): the giver finishes its segment and frees
# the lease at once; the taker takes it at its next sync and starts at its first keyframe.
def handover_max_s(lease_s: float) -> float:
    return sync_s(lease_s) + RECONNECT_S + SLACK_S


HANDOVER_MAX_S = handover_max_s(LEASE_S)

NODES = ["n1", "n2", "n3"]

pytestmark = pytest.mark.database("postgresql")


def _now_us() -> int:
    return time.time_ns() // 1000


def _by_node(holders: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cam, node in sorted(holders.items()):
        out.setdefault(node, []).append(cam)
    return out


def _busiest(holders: dict[str, str]) -> tuple[str, list[str]]:
    node, cams = max(_by_node(holders).items(), key=lambda kv: (len(kv[1]), kv[0]))
    return node, cams


def _chains(c: Cluster, cams: list[str]) -> dict[str, list[Seg]]:
    segs = {cam: c.segments(cam) for cam in cams}
    problems = {cam: chain_problems(cam, segs[cam]) for cam in cams}
    broken = {cam: p for cam, p in problems.items() if p}
    assert not broken, "chain broken:\n" + "\n".join(
        f"{p}\n    chain: " + ", ".join(str(x) for x in segs[cam]) for cam, ps in broken.items() for p in ps
    )
    return segs


def _new_segments_after(c: Cluster, cam: str, after_us: int, node: str | None = None) -> list[Seg]:
    return [s for s in c.segments(cam) if s.start_us >= after_us and (node is None or s.node == node)]


def _wait_segments(c: Cluster, cams: list[str], after_us: int, count: int, timeout: float, node_of=None) -> None:
    """Until each camera has ``count`` registered segments starting after ``after_us`` (on ``node_of(cam)``'s volume
    when given)."""

    def enough() -> bool:
        return all(
            len(_new_segments_after(c, cam, after_us, node_of(cam) if node_of else None)) >= count for cam in cams
        )

    try:
        wait_for(enough, timeout, f"{count} new segment(s) on each of {cams}")
    except AssertionError as exc:
        seen = {cam: [str(s) for s in c.segments(cam)[-3:]] for cam in cams}
        logs = {n.name: n.log_tail(15) for n in c.nodes.values()}
        raise AssertionError(f"{exc}; last segments {seen}; holders {c.holders(cams)}; node logs {logs}") from None


def _start_three(cluster_factory, **kw) -> tuple[Cluster, dict[str, str], int]:
    c = cluster_factory(**kw)
    c.add_nodes(*NODES)
    c.start(*NODES)
    holders, settled_us = c.wait_stable(CAMERAS, NODES)
    return c, holders, settled_us


def _assert_shared(holders: dict[str, str], node_ids: list[str]) -> None:
    counts = {n: len(_by_node(holders).get(n, [])) for n in node_ids}
    assert sum(counts.values()) == len(CAMERAS), f"cameras held: {holders}"
    assert all(1 <= k <= 3 for k in counts.values()), f"each node should record 2 ± 1 cameras; counts {counts}"


def _fragments(p: Path) -> int:
    try:
        return len(fmp4.scan(p).fragments)
    except (OSError, fmp4.Fmp4Error):  # renamed meanwhile, or its first box is being written
        return 0


def _partial_start_us(p: Path) -> int:
    return int(p.name.split(".")[0].split("-")[0])


# --- a. three nodes share six cameras -------------------------------------------------------------------------------
def test_three_nodes_share_six_cameras(cluster_factory) -> None:
    c, holders, settled_us = _start_three(cluster_factory)
    _assert_shared(holders, NODES)

    listed = c.node_list()
    nodes = {n["id"]: n for n in listed["nodes"]}
    assert {i: n["state"] for i, n in nodes.items()} == dict.fromkeys(NODES, "alive"), f"nvr node list: {listed}"
    assert {i: n["pid"] for i, n in nodes.items()} == {n: c.nodes[n].proc.pid for n in NODES}, listed
    leases = {x["resource"]: x for x in listed["leases"] if x["resource"].startswith("camera:")}
    assert {r: x["node_id"] for r, x in leases.items()} == {f"camera:{k}": v for k, v in holders.items()}, listed
    assert all(x["token"] >= 1 and 0 < x["expires_in_s"] <= LEASE_S for x in leases.values()), listed
    wait_for(
        lambda: (
            {i: n["cameras"] for i, n in c.view_nodes().items()} == {n: len(v) for n, v in _by_node(holders).items()}
        ),
        10,
        f"each node's heartbeat to report its camera count {_by_node(holders)}",
    )

    # While they record, a camera's segment in progress is only ever on its holder's volume: one writer per camera.
    deadline = time.monotonic() + 3 * SEGMENT_S + 2
    while time.monotonic() < deadline:
        for cam, holder in holders.items():
            writers = {n for n in NODES if c.files(n, cam, "*.partial")}
            assert writers <= {holder}, f"{cam} (leased to {holder}) is being written on {sorted(writers)}'s volumes"
        time.sleep(0.3)
    _wait_segments(c, CAMERAS, settled_us, 3, 20)
    assert c.holders(CAMERAS) == holders, "holders changed while nothing happened"

    segs = _chains(c, CAMERAS)
    for cam, ss in segs.items():
        late = [s for s in ss if s.end_us >= settled_us]
        assert {s.node for s in late} == {holders[cam]}, f"{cam}: after settling, recorded by {[str(s) for s in late]}"
        bad = [str(h) for h in holes(ss) if h.seconds > HANDOVER_MAX_S or h.after.end_us >= settled_us]
        assert not bad, f"{cam}: gaps beyond start-up handovers (≤ {HANDOVER_MAX_S} s): {bad}"


# --- b. SIGKILL ----------------------------------------------------------------------------------------------------
def test_sigkill_node_cameras_move_within_lease_timeout(cluster_factory) -> None:
    c, holders, settled_us = _start_three(cluster_factory)
    victim, moved = _busiest(holders)
    others = [n for n in NODES if n != victim]

    # Kill it mid-segment, with a complete fragment in each of its segments in progress: those are torn segments
    # its recovery will find when it comes back.
    def torn() -> bool:
        partials = [p for cam in moved for p in c.files(victim, cam, "*.partial")]
        return len(partials) == len(moved) and all(_fragments(p) >= 1 for p in partials)

    wait_for(torn, 10, f"{victim}'s segments in progress to hold a complete fragment each")
    killed_us = _now_us()
    c.kill(victim)
    t_kill = time.monotonic()
    # Its leases expire at most LEASE_S after its last renewal (which was before the kill); a live node takes each at
    # its next sync.
    takeover_s = LEASE_S + SYNC_S + SLACK_S
    wait_for(
        lambda: all(h in others for h in c.holders(moved).values()),
        takeover_s,
        f"{victim}'s cameras {moved} to be leased to {others} after SIGKILL",
    )
    took_s = time.monotonic() - t_kill
    assert took_s >= LEASE_S - SYNC_S - 0.5, f"cameras moved {took_s:.1f} s after the kill, before its lease ran out"
    new_holders = c.holders(CAMERAS)
    acquired_us = {cam: lease.acquired_us for cam, lease in c.lease_rows(moved).items() if lease}
    _assert_after_kill = {cam: new_holders[cam] for cam in moved}
    _wait_segments(c, moved, killed_us, 2, 3 * SEGMENT_S + RECONNECT_S + SLACK_S + 5, node_of=_assert_after_kill.get)

    listed = c.node_list()
    states = {n["id"]: n["state"] for n in listed["nodes"]}
    assert states == {victim: "dead", **dict.fromkeys(others, "alive")}, f"nvr node list after SIGKILL: {listed}"
    assert all(x["node_id"] != victim for x in listed["leases"]), f"a lease still names {victim}: {listed['leases']}"
    counts = {n: len(_by_node({k: v for k, v in new_holders.items() if v}).get(n, [])) for n in others}
    assert sorted(counts.values()) == [3, 3], f"the two survivors should record 3 cameras each: {counts}"

    segs = _chains(c, CAMERAS)
    # The gap around the death: from the end of the victim's last registered segment to the start of the taker's
    # first. The victim's segment in progress (up to one segment long) is lost to the chain until its volume is
    # recovered; then its lease runs out (≤ LEASE_S after the kill), a survivor takes it at its next sync and starts
    # at its first keyframe.
    death_max = LEASE_S + SYNC_S + RECONNECT_S + SEGMENT_S + SLACK_S
    for cam in moved:
        ss = segs[cam]
        first_new = next(i for i, s in enumerate(ss) if s.node != victim and s.start_us >= killed_us)
        before, after = ss[first_new - 1], ss[first_new]
        assert before.node == victim, f"{cam}: the segment before {after} is {before}, not the victim {victim}'s"
        gap = (after.start_us - before.end_us) / US
        parts = (
            f"last segment ended {(killed_us - before.end_us) / US:.2f} s before the kill, lease taken "
            f"{(acquired_us[cam] - killed_us) / US:.2f} s after it, first segment "
            f"{(after.start_us - acquired_us[cam]) / US:.2f} s after that"
        )
        print(f"{cam}: death gap {gap:.2f} s: {parts}")
        assert 0 <= gap <= death_max, (
            f"{cam}: gap after {victim}'s death is {gap:.2f} s ({before} -> {after}; {parts}); at most {death_max} s "
            f"(lease {LEASE_S} + sync {SYNC_S} + reconnect {RECONNECT_S} + one segment {SEGMENT_S} + {SLACK_S} slack)"
        )
        others_holes = [str(h) for h in holes(ss) if h.after.end_us >= settled_us and h.before is not after]
        assert not others_holes, f"{cam}: gaps other than the death's after settling: {others_holes}"
    for cam in set(CAMERAS) - set(moved):
        late = [str(h) for h in holes(segs[cam]) if h.after.end_us >= settled_us]
        assert not late, f"{cam} (not on {victim}) has gaps after settling: {late}"

    # The victim comes back: start-up recovery deals with the torn segments it left. A torn segment may be
    # registered only if that keeps the chain one chain; otherwise it is fenced. Either way no .partial from before
    # the kill is left and the chain holds.
    restarted_us = _now_us()
    c.start(victim)

    def recovered() -> bool:
        return not [p for cam in moved for p in c.files(victim, cam, "*.partial") if _partial_start_us(p) < killed_us]

    wait_for(recovered, 30, f"{victim}'s recovery of the segments torn by SIGKILL")
    left = {cam: [p.name for p in c.files(victim, cam, "*.partial")] for cam in moved}
    fenced = {cam: [p.name for p in c.files(victim, cam, "*.fenced")] for cam in moved}
    segs = _chains(c, CAMERAS)
    for cam in moved:
        late_rows = [str(s) for s in segs[cam] if s.node == victim and s.start_us < killed_us < s.end_us]
        assert not (late_rows and fenced[cam]), f"{cam}: torn segment both registered {late_rows} and fenced {fenced}"
    # Rebalancing after its return hands cameras over without deaths.
    for cam in CAMERAS:
        bad = [str(h) for h in holes(segs[cam]) if h.after.end_us >= restarted_us and h.seconds > HANDOVER_MAX_S]
        assert not bad, f"{cam}: gaps beyond a handover after {victim} rejoined: {bad}; partials {left}"


# --- c. SIGSTOP past the lease, then SIGCONT: fencing -----------------------------------------------------------------
def test_paused_node_is_fenced_when_it_resumes(cluster_factory) -> None:
    c, holders, settled_us = _start_three(cluster_factory)
    victim, moved = _busiest(holders)
    others = [n for n in NODES if n != victim]

    stopped_us = _now_us()
    c.nodes[victim].signal(signal.SIGSTOP)
    wait_for(
        lambda: all(h in others for h in c.holders(moved).values()),
        LEASE_S + SYNC_S + SLACK_S + 1,
        f"the paused {victim}'s cameras {moved} to be leased to {others}",
    )
    takers = {cam: h for cam, h in c.holders(moved).items() if h}
    taken_tokens = {cam: lease.token for cam, lease in c.lease_rows(moved).items() if lease}
    # The takers' chains move on while the victim sleeps, so what it wrote meanwhile can only be a fork.
    _wait_segments(c, moved, stopped_us, 1, RECONNECT_S + 2 * SEGMENT_S + SLACK_S + 3, node_of=takers.get)

    resumed_us = _now_us()
    c.nodes[victim].signal(signal.SIGCONT)

    _assert_fenced(c, victim, moved, taken_tokens, stopped_us, resumed_us, settled_us, "SIGCONT")


def _assert_fenced(
    c: Cluster,
    victim: str,
    moved: list[str],
    taken_tokens: dict[str, int],
    lost_us: int,
    back_us: int,
    settled_us: int,
    how: str,
) -> None:
    """After ``victim`` lost ``moved`` (at ``lost_us``: paused, cut off) and came back (at ``back_us``): what it
    recorded under its old lease is refused and kept aside as ``.fenced``, reported by a camera event and an audit
    event naming it; the chain has no fork or duplicate; it does not keep recording those cameras under the old
    lease (rebalancing may give it some back under a new token, from when it acquired them)."""
    stopped_us, resumed_us = lost_us, back_us

    def fenced_files() -> dict[str, list[Path]]:
        return {cam: c.files(victim, cam, "*.fenced") for cam in moved}

    try:
        wait_for(lambda: all(fenced_files().values()), SEGMENT_S + SYNC_S + SLACK_S + 8, "a .fenced file per camera")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: after {how} {victim}'s volume holds {fenced_files()}; partials "
            f"{ {cam: c.files(victim, cam, '*.partial') for cam in moved} }; log:\n{c.nodes[victim].log_tail()}"
        ) from None
    fenced = fenced_files()
    registered = {s.path for cam in moved for s in c.segments(cam)}
    for cam, files in fenced.items():
        for f in files:
            assert f.with_suffix("") not in registered and f not in registered, f"{f} is fenced yet registered"

    wait_for(
        lambda: {e.camera_id for e in c.camera_events("segment_fenced")} >= set(moved),
        10,
        f"segment_fenced camera events for {moved}",
    )
    wait_for(
        lambda: {e.camera_id for e in c.audit_events("recorder.segment_fenced")} >= set(moved),
        10,
        f"recorder.segment_fenced audit events for {moved}",
    )
    events = [e for e in c.camera_events("segment_fenced") if e.camera_id in moved]
    audits = [e for e in c.audit_events("recorder.segment_fenced") if e.camera_id in moved]
    fenced = fenced_files()  # again: a cut-off node may fence several queued segments, one after another
    for e in events:
        names = [f.name.split(".")[0] for f in fenced[e.camera_id]]
        assert victim in e.detail and any(n in e.detail for n in names), (
            f"segment_fenced event for {e.camera_id} should name the node {victim} and the file {names}: {e.detail!r}"
        )
    for a in audits:
        text = " ".join(str(x) for x in (a.object_id, a.reason) if x)
        assert victim in text or any(f.name.split(".")[0] in text for f in fenced[a.camera_id]), (
            f"recorder.segment_fenced audit event for {a.camera_id} names neither {victim} nor the file: {text!r}"
        )

    _wait_segments(c, moved, resumed_us, 2, RECONNECT_S + 3 * SEGMENT_S + SLACK_S + 5)
    assert c.view_nodes()[victim]["state"] == "alive", c.view_nodes()
    leases = c.lease_rows(moved)
    segs = _chains(c, CAMERAS)
    for cam in moved:
        lease = leases[cam]
        assert lease is not None
        stale = [s for s in segs[cam] if s.node == victim and s.end_us > stopped_us]
        if stale:
            assert lease.node_id == victim and lease.token > taken_tokens[cam], (
                f"{cam}: {victim} registered {[str(s) for s in stale]} after its lease was taken (token "
                f"{taken_tokens[cam]}), without holding it again (lease now {lease.node_id}, token {lease.token})"
            )
            early = [str(s) for s in stale if s.start_us < lease.acquired_us - US]
            assert not early, f"{cam}: {victim} registered {early} from before it re-acquired the lease"
        old = [p for p in c.files(victim, cam, "*.partial") if _partial_start_us(p) < resumed_us]
        sizes = {p: p.stat().st_size for p in old if p.exists()}
        time.sleep(SEGMENT_S)  # a negative check: nothing begun under the old lease grows any more
        writing = [p.name for p, n in sizes.items() if p.exists() and p.stat().st_size != n]
        assert not writing, f"{cam}: {victim} still writes {writing}, begun under its old lease"
        bad = [str(h) for h in holes(segs[cam]) if h.after.end_us >= settled_us and h.seconds > LEASE_S + 8]
        assert not bad, f"{cam}: gaps beyond the one {how} made: {bad}"


# --- c'. cut off from PostgreSQL while its cameras stay reachable ---------------------------------------------------
def test_node_cut_off_from_the_database_is_fenced_when_back(db_proxy, cluster_factory) -> None:
    """A partition between one node and PostgreSQL (a relay in front of the database, reset and refusing, for that
    node only): unlike a paused node it goes on recording to its disk and queues the rows it cannot write; once
    back, every one of those recorded after the others took its cameras is refused by its old token."""
    proxy, proxied_url = db_proxy
    c = cluster_factory()
    c.add_nodes(*NODES)
    victim = "n3"
    c.nodes[victim].env["NVR_DATABASE_URL"] = proxied_url
    c.start(*NODES)
    holders, settled_us = c.wait_stable(CAMERAS, NODES)
    moved = _by_node(holders)[victim]
    others = [n for n in NODES if n != victim]

    cut_us = _now_us()
    proxy.cut()
    wait_for(
        lambda: all(h in others for h in c.holders(moved).values()),
        LEASE_S + SYNC_S + SLACK_S + 1,
        f"the cut-off {victim}'s cameras {moved} to be leased to {others}",
    )
    takers = {cam: h for cam, h in c.holders(moved).items() if h}
    taken_tokens = {cam: lease.token for cam, lease in c.lease_rows(moved).items() if lease}
    # It keeps recording to its disk meanwhile (rows it cannot write), also after the others took over.
    taken_us = _now_us()

    def recording_on() -> bool:
        return all(any(_partial_start_us(p) >= taken_us for p in c.files(victim, cam, "*.mp4*")) for cam in moved)

    try:
        wait_for(recording_on, 2 * SEGMENT_S + SLACK_S + 2, f"{victim} to go on recording while cut off")
    except AssertionError as exc:
        files = {cam: [p.name for p in c.files(victim, cam, "*")] for cam in moved}
        raise AssertionError(
            f"{exc}; taken at {taken_us}; its files {files}; log:\n{c.nodes[victim].log_tail()}"
        ) from None
    assert c.nodes[victim].alive(), f"{victim} exited while cut off:\n{c.nodes[victim].log_tail()}"
    _wait_segments(c, moved, cut_us, 1, RECONNECT_S + 2 * SEGMENT_S + SLACK_S + 3, node_of=takers.get)

    back_us = _now_us()
    proxy.restore()
    _assert_fenced(c, victim, moved, taken_tokens, cut_us, back_us, settled_us, "the partition healed")


# --- d. graceful stop -----------------------------------------------------------------------------------------------
GRACEFUL_LEASE_S = 12.0


def test_graceful_stop_hands_leases_over_at_once(cluster_factory) -> None:
    # A long lease, so that a handover at once is told apart from one after the lease ran out.
    c, holders, settled_us = _start_three(cluster_factory, lease_timeout=GRACEFUL_LEASE_S)
    victim, moved = _busiest(holders)
    others = [n for n in NODES if n != victim]

    term_us = _now_us()
    t_term = time.monotonic()
    rc = c.terminate(victim)
    stop_s = time.monotonic() - t_term
    assert rc == 0, f"{victim} exited {rc} on SIGTERM:\n{c.nodes[victim].log_tail()}"
    wait_for(
        lambda: all(h in others for h in c.holders(moved).values()),
        GRACEFUL_LEASE_S / 2,
        f"{victim}'s cameras {moved} to be taken by {others} well before its lease ({GRACEFUL_LEASE_S} s) would end",
    )
    handover_s = time.monotonic() - t_term
    assert handover_s <= stop_s + sync_s(GRACEFUL_LEASE_S) + SLACK_S, (
        f"handover took {handover_s:.1f} s (the stop itself {stop_s:.1f})"
    )

    listed = c.node_list()
    states = {n["id"]: n["state"] for n in listed["nodes"]}
    assert states == {victim: "stopped", **dict.fromkeys(others, "alive")}, f"nvr node list after SIGTERM: {listed}"
    assert all(x["node_id"] != victim for x in listed["leases"]), f"a lease still names {victim}: {listed['leases']}"

    takers = {cam: h for cam, h in c.holders(moved).items() if h}
    _wait_segments(c, moved, term_us, 1, RECONNECT_S + 2 * SEGMENT_S + SLACK_S + 3, node_of=takers.get)
    assert not [p for cam in CAMERAS for p in c.files(victim, cam, "*.partial")], "the stopped node left .partial files"
    segs = _chains(c, CAMERAS)
    for cam in moved:
        ss = segs[cam]
        last = [s for s in ss if s.node == victim][-1]
        # Its open segment was finished and registered, not left to recovery.
        assert last.end_us >= term_us - US, f"{cam}: {victim}'s last segment {last} ends well before SIGTERM"
        nxt = ss[ss.index(last) + 1]
        gap = (nxt.start_us - last.end_us) / US
        assert gap <= handover_s + RECONNECT_S + SLACK_S, f"{cam}: gap {gap:.2f} s at the handover ({last} -> {nxt})"
        assert gap < GRACEFUL_LEASE_S / 2, f"{cam}: gap {gap:.2f} s, not well under the lease ({GRACEFUL_LEASE_S} s)"
    for cam in CAMERAS:
        bad = [
            str(h)
            for h in holes(segs[cam])
            if h.after.end_us >= settled_us and h.seconds > handover_max_s(GRACEFUL_LEASE_S)
        ]
        assert not bad, f"{cam}: gaps beyond a handover: {bad}"


# --- e. PostgreSQL restart while recording ----------------------------------------------------------------------------
PG_RESTART_LEASE_S = 10.0


def test_postgresql_restart_while_recording(private_cluster_factory) -> None:
    """The nodes' PostgreSQL (a private server of this test's own: restarting the shared one would break every
    other test using it) goes away for a few seconds, longer than a segment, shorter than the lease: recording goes
    on, the segments finished meanwhile are registered once it is back, in order, and no camera moves."""
    pg, factory = private_cluster_factory
    cams = CAMERAS[:4]
    c = factory(cameras=4, lease_timeout=PG_RESTART_LEASE_S)
    names = ["n1", "n2"]
    c.add_nodes(*names)
    c.start(*names)
    holders, settled_us = c.wait_stable(cams, names)

    down_us = _now_us()
    t_down = time.monotonic()
    r = pg.ctl("stop", "-m", "fast")
    assert r.returncode == 0, f"pg_ctl stop failed: {r.stdout}{r.stderr}"

    # Down until every camera has begun two more segments on disk meanwhile (so at least one finished segment per
    # camera is waiting for its row, and the recorder has cut segments while the database was away).
    def begun_while_down() -> dict[str, list[Path]]:
        out = {}
        for cam, holder in holders.items():
            name = next(n for n in names if c.nodes[n].node_id == holder)
            out[cam] = [p for p in c.files(name, cam, "*.mp4*") if _partial_start_us(p) > down_us]
        return out

    wait_for(
        lambda: all(len(f) >= 2 for f in begun_while_down().values()),
        3 * SEGMENT_S + SLACK_S + 2,
        "two segments begun per camera while PostgreSQL is down",
    )
    during = {cam: [p for p in files if p.suffix != ".partial"] for cam, files in begun_while_down().items()}
    r = pg.ctl("start", "-l", str(pg.datadir / "server.log"))
    assert r.returncode == 0, f"pg_ctl start failed: {r.stdout}{r.stderr}"
    down_s = time.monotonic() - t_down
    assert down_s < PG_RESTART_LEASE_S - 2, f"PostgreSQL was down {down_s:.1f} s; the test needs it under the lease"
    up_us = _now_us()

    for n in names:
        assert c.nodes[n].alive(), f"{n} exited while PostgreSQL was down:\n{c.nodes[n].log_tail()}"
    want = {p for files in during.values() for p in files}

    def backfilled() -> bool:
        return want <= {s.path for cam in cams for s in c.segments(cam)}

    try:
        wait_for(backfilled, 30, "the segments finished while PostgreSQL was down to be registered")
    except AssertionError as exc:
        logs = {n: c.nodes[n].log_tail(20) for n in names}
        missing = sorted(str(p) for p in want - {s.path for cam in cams for s in c.segments(cam)})
        raise AssertionError(f"{exc}: still unregistered {missing}; logs {logs}") from None
    _wait_segments(c, cams, up_us, 2, 3 * SEGMENT_S + SLACK_S + 5)
    assert c.holders(cams) == holders, f"cameras moved over a database outage shorter than the lease: {c.holders(cams)}"
    segs = _chains(c, cams)
    for cam in cams:
        bad = [str(h) for h in holes(segs[cam]) if h.after.end_us >= settled_us]
        assert not bad, (
            f"{cam}: recording stopped around the PostgreSQL restart (down {down_s:.1f} s from "
            f"{down_us / US:.3f}): {bad}"
        )
        assert segs[cam][0].start_us <= down_us and segs[cam][-1].end_us >= up_us, (
            f"{cam}: the outage [{down_us / US:.3f}, {up_us / US:.3f}] is not inside the chain "
            f"{segs[cam][0]} .. {segs[cam][-1]}"
        )


# --- f. two nodes with one id ---------------------------------------------------------------------------------------
def test_second_node_with_same_id_is_refused(cluster_factory) -> None:
    c = cluster_factory(cameras=2)
    c.add_nodes("n1", "n1-again", node_ids={"n1-again": "n1"})
    c.start("n1")
    first_pid = c.nodes["n1"].proc.pid
    rc, out = c.run_to_exit("n1-again")
    assert rc != 0 and "node_id_in_use" in out, f"a second node n1 exited {rc}: {out[-2000:]}"
    assert c.nodes["n1"].alive(), f"the first n1 died:\n{c.nodes['n1'].log_tail()}"
    assert c.view_nodes()["n1"]["pid"] == first_pid, f"the refused process took over the node row: {c.view_nodes()}"
    refused_us = _now_us()
    _wait_segments(c, CAMERAS[:2], refused_us, 1, 2 * SEGMENT_S + RECONNECT_S + SLACK_S + 5, node_of=lambda _: "n1")
    assert not list(c.nodes["n1-again"].volume.rglob("*.mp4*")), "the refused node wrote footage"


# --- SQLite: one node only --------------------------------------------------------------------------------------------
@pytest.mark.database("sqlite")
def test_sqlite_refuses_a_second_node(cluster_factory) -> None:
    c = cluster_factory(cameras=2)
    c.add_nodes("n1", "n2")
    c.start("n1")
    rc, out = c.run_to_exit("n2")
    assert rc != 0 and "cluster_needs_postgresql" in out, f"a second node on SQLite exited {rc}: {out[-2000:]}"
    assert c.nodes["n1"].alive(), f"n1 died when n2 was refused:\n{c.nodes['n1'].log_tail()}"
    assert not list(c.nodes["n2"].volume.rglob("*.mp4*")), "the refused node wrote footage"
    # Still a single-node archive: once n1 stopped, another node may record from it.
    assert c.terminate("n1") == 0
    c.start("n2")
    since = _now_us()
    _wait_segments(c, CAMERAS[:2], since, 1, 2 * SEGMENT_S + RECONNECT_S + SLACK_S + 8, node_of=lambda _: "n2")
    _chains(c, CAMERAS[:2])
