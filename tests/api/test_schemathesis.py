"""Schemathesis against the real server's OpenAPI document: no request it makes may get a server error (5xx), and
every answer must have a status code, content type and body schema that the document declares for it.

The CLI runs as a subprocess (its flags are steadier across versions than its Python API), against the real uvicorn
server of the ``api`` fixture on 127.0.0.1 only, with a fixed seed and no example database, so CI is reproducible.
Schemathesis 4 has no telemetry or report upload; it writes its cache (crash records for ``st replay``) into the
working directory, which is this test's temporary folder.

Four passes, each authenticated with a bearer token of its own:

1. an officer holding a playback grant on a camera with real footage: the footage endpoints in depth (dictionaries
   below feed it the real camera id, its grant id and times inside the footage, some of the time, beside the random
   values);
2. an admin (separation of duties forbids an admin any other role that decides on or audits footage): users,
   cameras, retention policies and the system in depth;
3. an approver who is also auditor: grants, access requests, holds, exports and the audit trail in depth;
4. the operations that can end the caller's own session, each alone with a throwaway admin's token (see
   ``SELF_ENDING``): left in the first three passes they would log the pass out half way, and everything after would
   only see 401s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent
from tests.api.conftest import PASSWORD

SEED = 20261121
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# Operations that can end the caller's own token or account: logout revokes the token it is called with, DELETE
# /tokens/{id} can revoke it (an admin may revoke any token, and token ids are small integers), and PATCH
# /users/{id} and POST /users/{id}/disable can disable the caller (or the next pass's user) or take away its roles.
# Excluded from the main passes, run alone at the end.
SELF_ENDING = (
    "POST /api/v1/auth/logout",
    "DELETE /api/v1/tokens/{token_id}",
    "PATCH /api/v1/users/{user_id}",
    "POST /api/v1/users/{user_id}/disable",
)


def _toml_list(values: list[object]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"  # JSON strings and numbers are TOML ones too


def _config(path: Path, dictionaries: dict[str, list[object]], bindings: dict[str, tuple[str, float]]) -> Path:
    """A schemathesis.toml: named value lists, and which parameters draw from them how often (the rest of the
    time the value is generated from the schema as usual)."""
    lines = []
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml_list(values)}", ""]
    lines.append("[parameters]")
    for key, (name, probability) in bindings.items():
        lines.append(f'"{key}" = {{ dictionary = "{name}", probability = {probability} }}')
    path.write_text("\n".join(lines) + "\n")
    return path


def _schemathesis(
    url: str, token: str, config: Path, cwd: Path, examples: int, *, only: str | None = None
) -> tuple[int, str, float]:
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(examples),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        # Hypothesis' health checks judge data generation speed and are no finding about the server; on a loaded
        # CI machine they would only make the run flaky.
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "30",
        "--output-truncate",
        "false",
    ]
    if only is not None:
        cmd += ["--include-name", only]
    else:
        for name in SELF_ENDING:
            cmd += ["--exclude-name", name]
    # Loopback only: no proxy may see this traffic.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    began = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    out = f"$ {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    (cwd / f"{config.stem}.log").write_text(out)
    return done.returncode, out, time.monotonic() - began


def test_no_server_error_and_only_documented_responses(api) -> None:
    now = api.clock.now_us()
    # Thousands of generated requests, most of them refused, are exactly what the abnormal-use rules catch: they
    # still raise alerts here, but suspend nothing, so every pass keeps reaching the footage routes behind them.
    api.rt.settings.alert_suspend_rules = []
    t0 = api.camera("cam-1", segments=3)[0]
    api.camera("cam-2")
    # An admin may not also be approver or auditor (api.roles.ADMIN_EXCLUDES): grant issuing and the audit trail
    # get a pass of their own, as one approver who is also auditor.
    api.user("admin", ["admin"])
    api.user("overseer", ["approver", "auditor"])
    api.user("approver", ["approver"])
    api.user("officer", ["officer"])
    # A change another admin filed, for the admin pass to confirm, reject or try to cancel (api.users).
    api.user("admin2", ["admin"])
    with api.client("admin2") as c:
        new = {"username": "pending1", "full_name": "P", "staff_number": "P1", "unit": "U", "roles": ["approver"]}
        change = c.post("/api/v1/users", json={**new, "password": PASSWORD}).json()["id"]
    officer_grant = api.grant("approver", "officer", ["cam-1"])["id"]
    spare_grant = api.grant("approver", "officer", ["cam-2"])["id"]
    sec = 1_000_000
    common: dict[str, list[object]] = {
        "cameras": ["cam-1", "cam-2"],
        "new_cameras": ["cam-3", "cam-4"],
        "stream_urls": ["rtsp://127.0.0.1:8554/cam"],
        # Inside the footage, across it, before it (a gap), and windows that end before they start; and a time of
        # each kind outside the accepted range (time_invalid): year 0001, and past year 9999 once in UTC.
        "starts": [iso(t) for t in (t0, t0 + sec, t0 - 10 * sec, t0 + 3 * sec)] + ["0001-01-01T00:00:00Z"],
        "ends": [iso(t) for t in (t0 + 6 * sec, t0 + 4 * sec, t0 + 2 * sec, t0 + 60 * sec)]
        + ["9999-12-31T23:59:59-01:00"],
        "purposes": ["investigation of incident 42"],
        "future": [iso(now + 7 * 86_400 * sec), "2200-01-01T00:00:00Z"],
        "actions": ["playback", "live", "export"],
        "usernames": ["newuser", "officer"],
        "passwords": [PASSWORD],
        "roles": ["officer", "viewer", "auditor"],
        "requests": [1, 2, 3],
        "camera_states": ["suspended", "active"],
        "changes": [change],
    }
    bindings = {
        "path.camera_id": ("cameras", 0.7),
        "path.grant_id": ("grants", 0.6),
        "path.user_id": ("users", 0.6),
        "path.request_id": ("requests", 0.6),
        "path.change_id": ("changes", 0.6),
        "query.start": ("starts", 0.6),
        "query.end": ("ends", 0.6),
        "query.since": ("starts", 0.5),
        "query.until": ("ends", 0.5),
        "query.purpose": ("purposes", 0.5),
        "body.id": ("new_cameras", 0.5),
        "body.stream_url": ("stream_urls", 0.5),
        "body.start": ("starts", 0.6),
        "body.end": ("ends", 0.6),
        "body.purpose": ("purposes", 0.5),
        "body.cameras[*]": ("cameras", 0.7),
        "body.actions[*]": ("actions", 0.7),
        "body.valid_from": ("starts", 0.4),
        "body.valid_until": ("future", 0.5),
        "body.window.start": ("starts", 0.5),
        "body.window.end": ("ends", 0.5),
        "body.user_id": ("users", 0.6),
        "body.username": ("usernames", 0.5),
        "body.password": ("passwords", 0.5),
        "body.roles[*]": ("roles", 0.6),
        "body.state": ("camera_states", 0.6),
    }
    failures, timings = [], []

    def run(
        who: str,
        dictionaries: dict[str, list[object]],
        binds: dict[str, tuple[str, float]],
        examples: int,
        only: str | None = None,
    ) -> None:
        cfg = _config(api.scratch / f"{who}.toml", dictionaries, binds)
        rc, out, took = _schemathesis(api.url, api.tokens[who], cfg, api.scratch, examples, only=only)
        timings.append(f"{only or who}: {took:.1f}s")
        if rc != 0:
            failures.append(f"--- {only or 'all operations'} as {who}: exit {rc}\n{out}")

    run("officer", {**common, "grants": [officer_grant], "users": [api.ids["officer"]]}, bindings, 35)
    # The admin and overseer passes suspend and revoke grants, and suspend cameras: the spare grant, and they run
    # after the officer's.
    others = [api.ids["officer"], api.ids["approver"]]
    run("admin", {**common, "grants": [spare_grant], "users": others}, bindings, 20)
    run("overseer", {**common, "grants": [spare_grant], "users": others}, bindings, 20)
    # Each self-ending operation alone, as a throwaway admin made just before (so no earlier pass could revoke its
    # token), free to end its own session: the user ids it is fed include its own.
    for i, name in enumerate(SELF_ENDING):
        who = f"admin-x{i}"
        api.user(who, ["admin"])
        users = [api.ids[who], api.ids["officer"], api.ids["approver"]]
        run(who, {"users": users}, {"path.user_id": ("users", 0.5)}, 20, only=name)
    print("schemathesis run times:", ", ".join(timings))
    assert not failures, "\n\n".join(failures)

    # It went past the front door: the audit trail shows footage served and admin changes made.
    with api.rt.db.session() as s:
        done = {
            (actor, action)
            for actor, action in s.execute(
                select(AuditEvent.actor_id, AuditEvent.action).where(AuditEvent.outcome.in_(("allowed", "ok")))
            )
        }
    officer, admin, overseer = api.ids["officer"], api.ids["admin"], api.ids["overseer"]
    for actor, action in [
        (officer, "recordings.list"),
        (officer, "playback.ticket"),
        (officer, "playback.start"),
        (admin, "camera.update"),
        (overseer, "audit.read"),
    ]:
        assert (actor, action) in done, f"schemathesis never got {action} through as user {actor}"
