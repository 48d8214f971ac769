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
