"""The auditors' screens in a real browser: searching the audit trail by action and user shows the matching events
only, a page at a time; the CSV export saves a file whose rows are those events; the integrity screen shows the
audit chain's verification, intact and then, after an event was edited behind the system's back, broken at that
event. And an auditor whose browser asks for Chinese gets these screens in Chinese."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from selenium.webdriver.common.by import By
from sqlalchemy import update

from nvr.models import AuditEvent
from tests.api.conftest import Api
from tests.console.conftest import Console
from tests.support.browser import poll


def _activity(api: Api) -> None:
    """Some audited work by two people: olga lists cameras three times, boss twice, and boss lists grants."""
    api.camera("cam-a", segments=2)
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.grant("boss", "olga", ["cam-a"])
    for who, times in (("olga", 3), ("boss", 2)):
        with api.client(who) as c:
            for _ in range(times):
                assert c.get("/api/v1/cameras").status_code == 200
    with api.client("boss") as c:
        assert c.get("/api/v1/grants").status_code == 200


def _api_events(api: Api, **params: str | int) -> list[dict]:
    with api.client("audrey") as c:
        r = c.get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def _shown_rows(console: Console) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")] for tr in console.find_all("#audit-table tbody tr")
    ]


def test_search_by_action_and_user_shows_only_their_events_page_by_page(console: Console) -> None:
    api = console.api
    _activity(api)
    api.user("audrey", ["auditor"])
    expected = [e["seq"] for e in _api_events(api, action="camera.list", actor_id=api.ids["olga"])]
    assert len(expected) == 3
    console.login("audrey")
    console.open("/audit")
    form = console.find("#audit-form")
    form.find_element(By.NAME, "action").send_keys("camera.list")
    form.find_element(By.NAME, "actor_id").send_keys(str(api.ids["olga"]))
    limit = form.find_element(By.NAME, "limit")
    limit.clear()
    limit.send_keys("2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    poll(lambda: "actor_id" in console.driver.current_url and len(_shown_rows(console)) == 2, "the first page")
    first = _shown_rows(console)
    assert all(row[3] == "camera.list" and "Olga" in row[2] for row in first)
    console.screenshot("audit-search")
    console.find("#audit-next").click()
    poll(lambda: "after_seq" in console.driver.current_url and len(_shown_rows(console)) == 1, "the second page")
    second = _shown_rows(console)
    assert [int(r[0]) for r in first + second] == expected  # every match once, in sequence order, nobody else's
    assert second[0][3] == "camera.list" and "Olga" in second[0][2]


def test_csv_export_saves_the_searched_events(console: Console, tmp_path: Path) -> None:
    api = console.api
    _activity(api)
    api.user("audrey", ["auditor"])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    console.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    console.login("audrey")
    console.open(f"/audit?action=camera.list&actor_id={api.ids['boss']}")
    poll(lambda: len(_shown_rows(console)) == 2, "boss's two camera listings")
    console.find("#audit-csv").click()
    console.text_appears("audit.csv", "#banner")
    saved = poll(lambda: [p for p in downloads.glob("*.csv") if p.stat().st_size > 0], "the saved CSV")
    rows = list(csv.DictReader(io.StringIO(saved[0].read_text(encoding="utf-8"))))
    expected = _api_events(api, action="camera.list", actor_id=api.ids["boss"])
    assert [int(r["seq"]) for r in rows] == [e["seq"] for e in expected] and len(rows) == 2
    assert {r["action"] for r in rows} == {"camera.list"} and {r["actor_id"] for r in rows} == {str(api.ids["boss"])}
    assert [r["hash"] for r in rows] == [e["hash"] for e in expected]
    # Exporting is itself audited, like any read of the trail.
    reads = _api_events(api, action="audit.read", actor_id=api.ids["audrey"])
    assert any(e["reason"] == "2 event(s) as csv" for e in reads)


def test_integrity_screen_shows_the_chain_verification(console: Console) -> None:
    api = console.api
    _activity(api)
    api.user("audrey", ["auditor"])
    console.login("audrey")
    console.open("/integrity")
    result = console.find("#verify-result")
    assert result.get_attribute("data-ok") == "true" and "Intact" in result.text
    console.text_appears("Signing keys", "h2")  # the keys an auditor checks signatures against
    console.text_appears("Signed checkpoints", "h2")
    console.screenshot("integrity")
    target = _api_events(api, action="camera.list", actor_id=api.ids["olga"])[0]["seq"]
    with api.rt.db.session() as s:  # someone edits an event behind the system's back
        s.execute(update(AuditEvent).where(AuditEvent.seq == target).values(reason="nothing to see"))
        s.commit()
    console.find("#verify-again").click()
    console.text_appears(f"BROKEN at event {target}", "#verify-result")
    assert console.find("#verify-result").get_attribute("data-ok") == "false"


def test_audit_and_integrity_screens_in_chinese(console_zh: Console) -> None:
    api = console_zh.api
    _activity(api)
    api.user("audrey", ["auditor"])
    console_zh.login("audrey")
    console_zh.open("/audit?action=camera.list")
    console_zh.text_appears("审计记录", "h1")
    console_zh.text_appears("导出 CSV", "#audit-csv")
    assert "操作人" in console_zh.find("#audit-table thead").text
    poll(lambda: len(_shown_rows(console_zh)) == 5, "the five camera listings")
    console_zh.open("/integrity")
    console_zh.text_appears("已校验", "#verify-result")
    console_zh.screenshot("integrity-zh")
