"""GET /api/v1/checkpoints: the signed checkpoint chain and the pinned key log, for auditors to keep as a witness
copy (`nvr verify --against FILE` reads the document as it comes)."""

from __future__ import annotations

import json

from integrity import checkpoints, witness
from integrity.verify_archive import verify_archive
from tests.api.conftest import Api

V1 = "/api/v1"


def test_auditors_fetch_the_chain_over_http(api: Api) -> None:
    api.camera("cam-a", segments=2)
    for _ in range(3):
        checkpoints.sign_checkpoint(api.rt.db, api.rt.settings, api.clock)
    api.user("aud", ["auditor"])
    api.user("off", ["officer"])
    with api.client("off") as c:
        r = c.get(f"{V1}/checkpoints")
        assert r.status_code == 403 and r.json()["error"]["code"] == "role_forbidden"
    with api.client("aud") as c:
        page = c.get(f"{V1}/checkpoints", params={"limit": 2}).json()
        assert [e["seq"] for e in page["checkpoints"]] == [1, 2] and page["more"] is True
        rest = c.get(f"{V1}/checkpoints", params={"after_seq": 2}).json()
        assert [e["seq"] for e in rest["checkpoints"]] == [3] and rest["more"] is False
        assert page["key_log"] and all("body" in e and "signature" in e for e in page["checkpoints"])
    # The HTTP document is itself a copy `nvr verify --against` reads.
    copy = api.scratch / "copy.json"
    copy.write_text(json.dumps({"checkpoints": page["checkpoints"] + rest["checkpoints"], "key_log": page["key_log"]}))
    assert [e["seq"] for e in witness.read(copy)] == [1, 2, 3]
    assert verify_archive(api.rt.db, api.rt.settings, against=[copy]).ok


def test_only_an_auditor_resolves_a_finding_and_only_with_a_note(api: Api) -> None:
    from integrity.problems import Problem
    from integrity.verify_archive import open_finding

    api.user("aud", ["auditor"])
    api.user("boss", ["admin"])
    with api.rt.db.session() as s:
        f = open_finding(
            s, Problem("hash_mismatch", "cam-a", 3, None, "segment cam-a #3", "sha256 differs"), "verify", 1
        )
        assert f is not None
        fid = f.id
    url = f"{V1}/integrity/findings/{fid}/resolve"
    with api.client("boss") as c:  # an admin may read findings but not clear the alarm about the archive they run
        assert c.get(f"{V1}/integrity/findings").status_code == 200
        r = c.post(url, json={"note": "fine"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "role_forbidden"
    with api.client("aud") as c:
        assert c.post(url, json={"note": ""}).status_code == 422
        r = c.post(url, json={"note": "file restored from the offsite copy; hash checked"})
        assert r.status_code == 200 and r.json()["resolved_by"]
        again = c.post(url, json={"note": "again"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "finding_resolved"
        missing = c.post(f"{V1}/integrity/findings/999999/resolve", json={"note": "x"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "finding_not_found"
        assert c.get(f"{V1}/integrity/findings").json()["findings"] == []
