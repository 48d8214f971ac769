"""The authorization matrix: every role x every endpoint x grant condition. 401s first, then 403/404, then the
allowed cases. Each refusal must carry its own stable code, and a camera outside a person's grants must look
exactly like a camera that does not exist."""

from __future__ import annotations

import pytest

from nvr.clock import iso
from tests.api.conftest import DAY_US

ROLES = ["admin", "approver", "officer", "operator", "auditor", "viewer"]
FOOTAGE_ROLES = {"officer", "operator", "viewer"}


def _footage_requests(cam: str, start_us: int, end_us: int) -> dict[str, tuple[str, str, dict]]:
    q = {"start": iso(start_us), "end": iso(end_us)}
    return {
        "camera": ("GET", f"/api/v1/cameras/{cam}", {}),
        "recordings": ("GET", f"/api/v1/cameras/{cam}/recordings", q),
        "playback": ("GET", f"/api/v1/cameras/{cam}/playback", {**q, "purpose": "matrix"}),
    }


ADMIN_REQUESTS = {
    "users.list": ("GET", "/api/v1/users", None, "admin"),
    "users.create": (
        "POST",
        "/api/v1/users",
        {
            "username": "x1",
            "full_name": "X",
            "staff_number": "x1",
            "unit": "U",
            "roles": ["viewer"],
            "password": "p" * 12,
        },
        "admin",
    ),
    "cameras.create": (
        "POST",
        "/api/v1/cameras",
        {"id": "new-cam", "name": "N", "stream_url": "rtsp://h/x", "managing_unit": "Unit A"},
        "admin",
    ),
    "audit.read": ("GET", "/api/v1/audit", None, "auditor"),
    "audit.verify": ("GET", "/api/v1/audit/verify", None, "auditor"),
}


@pytest.fixture
def world(api):
    """Unit A's camera cam-a with footage, a second camera cam-b nobody is granted, users of every role."""
    starts = api.camera("cam-a", segments=5)
    api.camera("cam-b", segments=1)
    api.user("boss", ["approver"])
    for role in ROLES:
        api.user(role, [role])
    for role in FOOTAGE_ROLES:
        api.grant("boss", role, ["cam-a"], actions=["playback"])
    return api, starts


def _call(c, method, path, params=None, body=None):
    r = c.request(method, path, params=params, json=body)
    if r.headers.get("content-type", "").startswith("application/json"):
        return r.status_code, r.json()
    return r.status_code, None


@pytest.mark.parametrize("name", ["camera", "recordings", "playback", "cameras", "users.list", "audit.read", "grants"])
def test_401_without_or_with_a_bad_token(world, name) -> None:
    api, starts = world
    reqs = _footage_requests("cam-a", starts[0], starts[1])
    method, path, params = reqs.get(name, ("GET", f"/api/v1/{name.split('.')[0]}", {}))
    for headers in ({}, {"Authorization": "Bearer nvrs_not-a-token"}):
        with api.client() as c:
            r = c.request(method, path, params=params, headers=headers)
        assert r.status_code == 401, (name, r.text)
        assert r.json()["error"]["code"] in ("auth_required", "token_invalid")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(ADMIN_REQUESTS))
def test_administrative_endpoints_need_their_role(world, role, name) -> None:
    api, _ = world
    method, path, body, needed = ADMIN_REQUESTS[name]
    with api.client(role) as c:
        status, payload = _call(c, method, path, body=body)
    if role == needed:
        assert status in (200, 201), payload
    else:
        assert (status, payload["error"]["code"]) == (403, "role_forbidden")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", ["camera", "recordings", "playback"])
def test_outside_grants_is_404_exactly_like_a_missing_camera(world, role, endpoint) -> None:
    api, starts = world
    with api.client(role) as c:
        ungranted = _call(c, *_reqs_tuple(_footage_requests("cam-b", starts[0], starts[1])[endpoint]))
        missing = _call(c, *_reqs_tuple(_footage_requests("no-such-cam", starts[0], starts[1])[endpoint]))
    if role in FOOTAGE_ROLES:
        assert ungranted[0] == missing[0] == 404
        assert ungranted[1]["error"]["code"] == missing[1]["error"]["code"] == "camera_not_found"
    elif endpoint == "camera" and role in ("admin", "approver"):
        assert ungranted[0] == 200 and missing[0] == 404  # they manage the registry / issue grants
        assert "stream_url" in ungranted[1] if role == "admin" else "stream_url" not in ungranted[1]
    elif endpoint == "camera":
        assert ungranted[0] == missing[0] == 404
    else:
        assert ungranted == missing == (403, ungranted[1]) and ungranted[1]["error"]["code"] == "role_forbidden"


def _reqs_tuple(t):
    method, path, params = t
    return method, path, params


@pytest.mark.parametrize("role", sorted(FOOTAGE_ROLES))
@pytest.mark.parametrize("endpoint", ["camera", "recordings", "playback"])
@pytest.mark.parametrize("condition", ["inside", "outside_window", "expired", "suspended", "revoked"])
def test_footage_roles_inside_and_outside_their_grant(world, role, endpoint, condition) -> None:
    api, starts = world
    grant_id = _grant_of(api, role)
    start, end = starts[0], starts[1]
    if condition == "outside_window":
        start, end = api.clock.now_us() - 5 * DAY_US, api.clock.now_us() - 4 * DAY_US
    elif condition == "expired":
        api.clock.advance(31 * 86400)
    elif condition in ("suspended", "revoked"):
        with api.client("boss") as b:
            verb = "suspend" if condition == "suspended" else "revoke"
            assert b.post(f"/api/v1/grants/{grant_id}/{verb}", json={"reason": "matrix"}).status_code == 200
    with api.client(role) as c:
        status, payload = _call(c, *_reqs_tuple(_footage_requests("cam-a", start, end)[endpoint]))
    if condition == "inside" or (condition == "outside_window" and endpoint == "camera"):
        assert status == 200, payload
    elif condition == "outside_window":
        assert (status, payload["error"]["code"]) == (403, "outside_grant_window")
    else:
        assert (status, payload["error"]["code"]) == (403, f"grant_{condition}")


def _grant_of(api, username):
    with api.client("boss") as b:
        grants = b.get("/api/v1/grants", params={"user_id": api.ids[username]}).json()["grants"]
    return grants[0]["id"]


@pytest.mark.parametrize("role", ROLES)
def test_camera_listing_shows_only_granted_cameras_and_protected_fields_only_to_admins(world, role) -> None:
    api, _ = world
    with api.client(role) as c:
        cams = {cam["id"]: cam for cam in c.get("/api/v1/cameras").json()["cameras"]}
    if role in ("admin", "approver"):
        assert set(cams) == {"cam-a", "cam-b"}
    elif role in FOOTAGE_ROLES:
        assert set(cams) == {"cam-a"}
    else:
        assert cams == {}
    for cam in cams.values():
        if role == "admin":
            assert cam["stream_url"] == "rtsp://***@10.0.0.1/" + cam["id"]
            assert cam["latitude"] == pytest.approx(31.2304)
        else:
            assert not {"stream_url", "address", "latitude", "longitude", "installation_notes"} & set(cam)


@pytest.mark.parametrize("role", ROLES)
def test_only_approvers_issue_grants_and_only_they_and_admins_see_all_grants(world, role) -> None:
    api, _ = world
    now = api.clock.now_us()
    body = {
        "user_id": api.ids["operator"],
        "cameras": ["cam-b"],
        "actions": ["playback"],
        "window": {"last_days": 1},
        "valid_until": iso(now + DAY_US),
        "purpose": "p",
        "case_ref": "c",
    }
    with api.client(role) as c:
        made = c.post("/api/v1/grants", json=body)
        seen = c.get("/api/v1/grants").json()["grants"]
    if role == "approver":
        assert made.status_code == 201
    else:
        assert (made.status_code, made.json()["error"]["code"]) == (403, "role_forbidden")
    holders = {g["user_id"] for g in seen}
    if role in ("admin", "approver"):
        assert holders == {api.ids[r] for r in FOOTAGE_ROLES}
    elif role in FOOTAGE_ROLES:
        assert holders == {api.ids[role]}
    else:
        assert seen == []


@pytest.mark.parametrize("role", ROLES)
def test_playback_tickets_follow_the_same_grant_rules(world, role) -> None:
    api, starts = world
    body = {"start": iso(starts[0]), "end": iso(starts[1]), "purpose": "browser"}
    with api.client(role) as c:
        granted = c.post("/api/v1/cameras/cam-a/playback-tickets", json=body)
        ungranted = c.post("/api/v1/cameras/cam-b/playback-tickets", json=body)
    if role in FOOTAGE_ROLES:
        assert granted.status_code == 201
        assert (ungranted.status_code, ungranted.json()["error"]["code"]) == (404, "camera_not_found")
    else:
        assert (granted.status_code, granted.json()["error"]["code"]) == (403, "role_forbidden")
        assert (ungranted.status_code, ungranted.json()["error"]["code"]) == (403, "role_forbidden")
