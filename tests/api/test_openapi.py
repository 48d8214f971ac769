"""The OpenAPI document describes the answers of the camera, grant, access-request, retention-policy and integrity
endpoints: every operation declares its success answer with a JSON schema that names fields and types (not "any
object"), and the answers of real calls, made as the people who make them, validate against those schemas. A
client generated from the document, or one checking answers against it, can rely on it.

Schemas are taken from the running server's ``/api/v1/openapi.json`` and checked with a JSON Schema 2020-12
validator (OpenAPI 3.1's dialect; jsonschema_rs, which schemathesis brings)."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import jsonschema_rs
import pytest

from integrity import checkpoints
from integrity.problems import Problem
from integrity.verify_archive import open_finding
from nvr.clock import iso
from tests.api.conftest import DAY_US, Api

V1 = "/api/v1"
# Every operation of these route modules: api/routes/{cameras,grants,requests,policies,integrity}.py.
OPERATIONS = {
    ("get", "/cameras"),
    ("post", "/cameras"),
    ("get", "/cameras/{camera_id}"),
    ("patch", "/cameras/{camera_id}"),
    ("post", "/cameras/{camera_id}/state"),
    ("put", "/cameras/{camera_id}/policy"),
    ("post", "/grants"),
    ("get", "/grants"),
    ("get", "/grants/{grant_id}"),
    ("post", "/grants/{grant_id}/suspend"),
    ("post", "/grants/{grant_id}/resume"),
    ("post", "/grants/{grant_id}/revoke"),
    ("post", "/access-requests"),
    ("get", "/access-requests"),
    ("get", "/access-requests/{request_id}"),
    ("post", "/access-requests/{request_id}/approve"),
    ("post", "/access-requests/{request_id}/reject"),
    ("post", "/access-requests/{request_id}/withdraw"),
    ("get", "/retention/policies"),
    ("post", "/retention/policies"),
    ("get", "/retention/policies/{name}"),
    ("patch", "/retention/policies/{name}"),
    ("delete", "/retention/policies/{name}"),
    ("post", "/retention/policies/{name}/default"),
    ("get", "/keys"),
    ("get", "/integrity/findings"),
    ("post", "/integrity/findings/{finding_id}/resolve"),
    ("get", "/checkpoints"),
    ("get", "/system/cameras"),
}
NO_BODY = {("delete", "/retention/policies/{name}")}  # 204 No Content
# The admin's camera record and everyone else's basic record, field for field, as the API answered before it had
# response models (clients rely on these names; the models must not add, drop or rename any).
FULL_RECORD = {
    "id", "name", "stream_url", "address", "latitude", "longitude", "managing_unit", "installation_notes",
    "share_class", "state", "state_changed", "created", "updated", "policy",
}  # fmt: skip
BASIC_RECORD = {"id", "name", "managing_unit", "share_class", "state"}


@pytest.fixture
def doc(api: Api) -> dict[str, Any]:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        r = c.get(f"{V1}/openapi.json")
    assert r.status_code == 200
    return r.json()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = doc["components"]["schemas"][name]
    return schema


def _alternatives(doc: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(doc, schema)
    if "anyOf" in schema:
        return [alt for s in schema["anyOf"] for alt in _alternatives(doc, s)]
    return [schema]


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in the document."""
    return jsonschema_rs.validator_for({**schema, "components": doc["components"]})


def _schema_of(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    declared = doc["paths"][V1 + path][method]["responses"]
    assert str(status) in declared, f"{method.upper()} {path} answered {status}, which it does not declare"
    return declared[str(status)]["content"]["application/json"]["schema"]


class Checker:
    """Calls the API and checks every answer against the schema the document declares for it."""

    def __init__(self, api: Api, doc: dict[str, Any]) -> None:
        self.api, self.doc = api, doc
        self.checked: set[tuple[str, str]] = set()

    def __call__(self, who: str, method: str, path: str, status: int, **kw: Any) -> Any:
        url = V1 + path.format(**kw.pop("at", {}))
        with self.api.client(who) as c:
            r = c.request(method.upper(), url, **kw)
        assert r.status_code == status, (method, url, r.text)
        if status == 204:
            assert r.content == b""
            self.checked.add((method, path))
            return None
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        schema = _schema_of(self.doc, method, path, status)
        errors = [e.message for e in _validator(self.doc, schema).iter_errors(body)]
        assert not errors, (method, path, errors, body)
        if status < 300:
            self.checked.add((method, path))
        return body


def test_every_operation_declares_a_success_answer_with_a_real_schema(doc: dict[str, Any]) -> None:
    found = {(m, p.removeprefix(V1)) for p, ops in doc["paths"].items() for m in ops}
    assert found >= OPERATIONS, f"not in the document: {sorted(OPERATIONS - found)}"
    for method, path in sorted(OPERATIONS):
        responses = doc["paths"][V1 + path][method]["responses"]
        ok = [code for code in responses if code.startswith("2")]
        assert len(ok) == 1, (method, path, ok)
        if (method, path) in NO_BODY:
            assert ok == ["204"] and "content" not in responses["204"], (method, path)
            continue
        schema = responses[ok[0]]["content"]["application/json"]["schema"]
        for alt in _alternatives(doc, schema):
            # An object with named, typed, required fields: not {} and not a bare {"type": "object"}.
            assert alt.get("type") == "object" and alt.get("properties") and alt.get("required"), (method, path, alt)
            assert alt.get("additionalProperties") is not True, (method, path, alt)
            for name, prop in alt["properties"].items():
                assert prop, f"{method.upper()} {path}: field {name!r} has an empty (any) schema"
        # The refusals keep their one error model.
        for code in ("401", "403", "404", "422"):
            assert _resolve(doc, responses[code]["content"]["application/json"]["schema"])["required"] == ["error"]


def test_real_answers_validate_against_the_declared_schemas(api: Api, doc: dict[str, Any]) -> None:
    api.camera("cam-a", segments=1, unit="Unit A")
    api.camera("cam-b", unit="Unit A", share_class="unconditional")
    api.user("admin", ["admin"])
    api.user("appr", ["approver"], unit="Unit A")
    api.user("off", ["officer"], unit="Unit A")
    api.user("aud", ["auditor"])
    check = Checker(api, doc)
    now = api.clock.now_us()

    # Cameras: the full record for the admin, the basic record for an approver, and validation both ways.
    listed = check("admin", "get", "/cameras", 200)["cameras"]
    assert [set(c) for c in listed] == [FULL_RECORD, FULL_RECORD]
    assert listed[0]["stream_url"] == "rtsp://***@10.0.0.1/cam-a" and listed[0]["policy"] == "default"
    assert [set(c) for c in check("appr", "get", "/cameras", 200)["cameras"]] == [BASIC_RECORD, BASIC_RECORD]
    assert set(check("appr", "get", "/cameras/{camera_id}", 200, at={"camera_id": "cam-a"})) == BASIC_RECORD
    one = check("admin", "get", "/cameras/{camera_id}", 200, at={"camera_id": "cam-a"})
    assert set(one) == FULL_RECORD and one["latitude"] == pytest.approx(31.2304)
    new = {"id": "cam-c", "name": "Gate", "stream_url": "rtsp://u:p@10.0.0.9/s", "managing_unit": "Unit A"}
    made = check("admin", "post", "/cameras", 201, json=new)
    assert (
        set(made) == FULL_RECORD | {"capacity_warnings"} and made["address"] is None and made["state"] == "registered"
    )
    patched = check("admin", "patch", "/cameras/{camera_id}", 200, at={"camera_id": "cam-c"}, json={"name": "G2"})
    assert patched["name"] == "G2" and patched["capacity_warnings"] == []
    state = check(
        "admin", "post", "/cameras/{camera_id}/state", 200, at={"camera_id": "cam-c"}, json={"state": "active"}
    )
    assert set(state) == FULL_RECORD and state["state"] == "active"
    check("admin", "get", "/cameras/{camera_id}", 404, at={"camera_id": "ghost"})

    # Retention policies.
    created = check("admin", "post", "/retention/policies", 201, json={"name": "long", "min_days": 90})
    assert created["max_days"] is None and created["cameras"] == [] and created["extended_segments"] == 0
    check("appr", "get", "/retention/policies", 200)
    check("aud", "get", "/retention/policies/{name}", 200, at={"name": "long"})
    body = {"max_days": 400, "description": "court cases"}
    assert check("admin", "patch", "/retention/policies/{name}", 200, at={"name": "long"}, json=body)["max_days"] == 400
    moved = check(
        "admin", "put", "/cameras/{camera_id}/policy", 200, at={"camera_id": "cam-a"}, json={"policy": "long"}
    )
    assert moved["camera"] == "cam-a" and moved["policy"]["cameras"] == ["cam-a"] and moved["extended_segments"] == 1
    assert check("admin", "post", "/retention/policies/{name}/default", 200, at={"name": "long"})["is_default"]
    check("admin", "post", "/retention/policies", 201, json={"name": "spare", "min_days": 30})
    check("admin", "delete", "/retention/policies/{name}", 204, at={"name": "spare"})

    # Grants: an absolute and a relative window, and every state change.
    grant = {
        "user_id": api.ids["off"],
        "cameras": ["cam-a"],
        "actions": ["playback"],
        "window": {"start": iso(now - 2 * DAY_US), "end": iso(now)},
        "valid_until": iso(now + 10 * DAY_US),
        "purpose": "incident 7",
        "case_ref": "C-7",
    }
    g = check("appr", "post", "/grants", 201, json=grant)
    assert g["window"] == {"start": iso(now - 2 * DAY_US), "end": iso(now)} and g["state_reason"] is None
    rel = check("appr", "post", "/grants", 201, json={**grant, "cameras": ["cam-b"], "window": {"last_days": 3}})
    assert rel["window"] == {"last_days": 3}
    assert len(check("off", "get", "/grants", 200)["grants"]) == 2
    check("off", "get", "/grants/{grant_id}", 200, at={"grant_id": g["id"]})
    gid = {"grant_id": g["id"]}
    assert (
        check("appr", "post", "/grants/{grant_id}/suspend", 200, at=gid, json={"reason": "r"})["state"] == "suspended"
    )
    assert check("appr", "post", "/grants/{grant_id}/resume", 200, at=gid)["state"] == "active"
    assert check("admin", "post", "/grants/{grant_id}/revoke", 200, at=gid)["state"] == "revoked"
    check("appr", "post", "/grants/{grant_id}/resume", 409, at=gid)

    # Access requests: created, listed, read, approved (with the grant it issued), rejected, withdrawn.
    ask = {k: v for k, v in grant.items() if k != "user_id"}
    ids = [check("off", "post", "/access-requests", 201, json=ask)["id"] for _ in range(3)]
    first = check("off", "get", "/access-requests/{request_id}", 200, at={"request_id": ids[0]})
    assert first["decided_by"] is None and first["decided"] is None and first["grant_id"] is None
    assert len(check("appr", "get", "/access-requests", 200, params={"state": "pending"})["requests"]) == 3
    approved = check("appr", "post", "/access-requests/{request_id}/approve", 200, at={"request_id": ids[0]})
    assert approved["request"]["grant_id"] == approved["grant"]["id"] and approved["grant"]["user_id"] == api.ids["off"]
    rejected = check(
        "appr", "post", "/access-requests/{request_id}/reject", 200, at={"request_id": ids[1]}, json={"reason": "no"}
    )
    assert rejected["state"] == "rejected" and rejected["decided_by"] == api.ids["appr"]
    withdrawn = check("off", "post", "/access-requests/{request_id}/withdraw", 200, at={"request_id": ids[2]})
    assert withdrawn["state"] == "withdrawn" and withdrawn["decided_by"] is None

    # Integrity: keys, checkpoints with the key log, findings and their resolution.
    checkpoints.sign_checkpoint(api.rt.db, api.rt.settings, api.clock)
    key = check("off", "get", "/keys", 200)["keys"][0]
    assert key["active"] is True and key["retired"] is None
    chain = check("aud", "get", "/checkpoints", 200)
    assert chain["more"] is False and chain["checkpoints"][0]["seq"] == 1 and chain["key_log"]
    with api.rt.db.session() as s:
        f = open_finding(
            s, Problem("hash_mismatch", "cam-a", 1, None, "segment cam-a #1", "sha256 differs"), "verify", 1
        )
        assert f is not None
        fid = f.id
    found = check("aud", "get", "/integrity/findings", 200)["findings"]
    assert [x["id"] for x in found] == [fid] and found[0]["intact_again"] is None and found[0]["camera_id"] == "cam-a"
    done = check(
        "aud", "post", "/integrity/findings/{finding_id}/resolve", 200, at={"finding_id": fid}, json={"note": "ok"}
    )
    assert done["note"] == "ok" and done["resolved"] is not None

    # The console's camera status: each registry camera with its recording shares.
    status = check("admin", "get", "/system/cameras", 200)["cameras"]
    assert {c["camera_id"] for c in status} == {"cam-a", "cam-b", "cam-c"}

    assert check.checked == OPERATIONS, f"not called: {sorted(OPERATIONS - check.checked)}"


def test_the_schemas_refuse_answers_of_another_shape(api: Api, doc: dict[str, Any]) -> None:
    """The schemas are exact enough to catch a changed answer: a missing or retyped field fails."""
    api.camera("cam-a")
    api.user("admin", ["admin"])
    with api.client("admin") as c:
        record = c.get(f"{V1}/cameras/cam-a").json()
    v = _validator(doc, _schema_of(doc, "get", "/cameras/{camera_id}", 200))
    assert v.is_valid(record)
    for change in (
        lambda r: r.pop("name"),  # required in both the full and the basic record
        lambda r: r.update(name=7),
        lambda r: r.update(latitude="north"),  # nullable number in the full record ...
        lambda r: r.update(state=None),
    ):
        bad = copy.deepcopy(record)
        change(bad)
        assert not v.is_valid(bad), bad
    full = _validator(doc, {"$ref": "#/components/schemas/CameraRecord"})
    without_policy = {k: v for k, v in record.items() if k != "policy"}
    assert full.is_valid({**record, "address": None}) and not full.is_valid(without_policy)  # ... required, nullable
    grant = _validator(doc, {"$ref": "#/components/schemas/GrantView"})
    assert not grant.is_valid({"id": 1, "window": {"last_days": "7"}})
