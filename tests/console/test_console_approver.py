"""The approver's console in a real browser: an officer files access requests, the approver approves one and
rejects the other with a reason (the officer sees both outcomes), and the approver issues a grant and suspends it,
after which the grant's holder is refused."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from nvr.clock import iso
from tests.console.conftest import Console
from tests.support.browser import poll


def _fill(console: Console, form: str, name: str, text: str) -> None:
    el = console.find(f"{form} [name='{name}']")
    el.clear()
    el.send_keys(text)


def _file_request(console: Console, cameras: str, purpose: str, case_ref: str) -> None:
    _fill(console, "#request-form", "cameras", cameras)
    _fill(console, "#request-form", "purpose", purpose)
    _fill(console, "#request-form", "case_ref", case_ref)
    console.find("#request-form button[type=submit]").click()


def _row(console: Console, css: str, text: str) -> WebElement:
    """The table row (under ``css``) whose text holds ``text``."""

    def found() -> WebElement | None:
        for tr in console.find_all(f"{css} tbody tr"):
            if text in tr.text:
                return tr
        return None

    return poll(found, f"a row with {text!r} in {css}")


def test_approver_approves_one_request_and_rejects_another_with_a_reason(console: Console) -> None:
    api = console.api
    api.camera("cam-a", segments=2)
    api.user("olga", ["officer"])
    api.user("appr", ["approver"])

    console.login("olga")
    console.open("/requests")
    _file_request(console, "cam-a", "robbery at the north gate", "CASE-1")
    console.text_appears("CASE-1", "#requests-table")
    _file_request(console, "cam-a", "curiosity", "CASE-2")
    console.text_appears("CASE-2", "#requests-table")
    console.screenshot("officer-requests")
    console.logout()

    console.login("appr")
    console.open("/approvals")
    row = _row(console, "#access-table", "CASE-2")
    row.find_element(By.CSS_SELECTOR, "button.reject").click()  # without a reason: refused here, nothing sent
    assert "reason" in console.error_text().lower()
    row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("no case behind it")
    row.find_element(By.CSS_SELECTOR, "button.reject").click()
    console.text_appears("rejected", "#banner")
    # The queue re-renders after the decision: wait for it, or the CASE-1 row found now goes stale under us.
    poll(
        lambda: all("CASE-2" not in tr.text for tr in console.find_all("#access-table tbody tr")),
        "the rejected request to leave the queue",
    )
    row = _row(console, "#access-table", "CASE-1")
    console.screenshot("approver-approvals")
    row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("case file checked")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    console.text_appears("approved", "#banner")
    poll(lambda: not console.find_all("#access-table tbody tr"), "the queue to empty")
    console.logout()

    with api.client("olga") as c:
        mine = {r["case_ref"]: r for r in c.get("/api/v1/access-requests").json()["requests"]}
        assert mine["CASE-1"]["state"] == "approved" and mine["CASE-1"]["decision_reason"] == "case file checked"
        assert mine["CASE-2"]["state"] == "rejected" and mine["CASE-2"]["decision_reason"] == "no case behind it"
        assert [g["id"] for g in c.get("/api/v1/grants").json()["grants"]] == [mine["CASE-1"]["grant_id"]]

    console.login("olga")
    console.open("/requests")
    assert "approved" in _row(console, "#requests-table", "CASE-1").text
    assert "no case behind it" in _row(console, "#requests-table", "CASE-2").text


def test_approver_issues_a_grant_and_suspends_it(console: Console) -> None:
    api = console.api
    first = api.camera("cam-a", segments=2)
    api.camera("cam-b", segments=2)
    olga = api.user("olga", ["officer"])
    api.user("appr", ["approver"])

    console.login("appr")
    console.open("/grants")
    _fill(console, "#grant-form", "user_id", str(olga))
    console.find("#grant-form input[name='cameras'][value='cam-a']").click()
    console.find("#grant-form input[name='actions'][value='live']").click()  # playback is ticked already
    _fill(console, "#grant-form", "last_days", "7")
    _fill(console, "#grant-form", "purpose", "incident 42 at the north gate")
    _fill(console, "#grant-form", "case_ref", "CASE-2026-042")
    console.find("#grant-form button[type=submit]").click()
    console.text_appears("issued", "#banner")
    row = _row(console, "#grants-table", "CASE-2026-042")
    assert "active" in row.text and "cam-a" in row.text and "cam-b" not in row.text

    with api.client("olga") as c:
        (g,) = c.get("/api/v1/grants").json()["grants"]
        assert g["cameras"] == ["cam-a"] and sorted(g["actions"]) == ["live", "playback"]
        assert g["window"] == {"last_days": 7} and g["user_id"] == olga
        assert c.get("/api/v1/cameras/cam-a").status_code == 200

    console.screenshot("approver-grants")
    row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("officer transferred")
    row.find_element(By.CSS_SELECTOR, "button.suspend").click()
    console.text_appears("suspended", "#banner")
    row = _row(console, "#grants-table", "CASE-2026-042")
    assert "suspended" in row.text and "officer transferred" in row.text
    assert row.find_elements(By.CSS_SELECTOR, "button.resume")

    with api.client("olga") as c:
        window = {"start": iso(first[0]), "end": iso(first[0] + 1_000_000)}
        r = c.get("/api/v1/cameras/cam-a/recordings", params=window)
        assert r.status_code == 403 and r.json()["error"]["code"] == "grant_suspended"


def test_an_approvers_refusal_from_the_server_is_shown(console: Console) -> None:
    """Issuing a grant to oneself is the server's rule (grant_self): the console shows its message."""
    api = console.api
    api.camera("cam-a")
    appr = api.user("appr", ["approver"])
    console.login("appr")
    console.open("/grants")
    _fill(console, "#grant-form", "user_id", str(appr))
    console.find("#grant-form input[name='cameras'][value='cam-a']").click()
    _fill(console, "#grant-form", "purpose", "self")
    _fill(console, "#grant-form", "case_ref", "CASE-X")
    console.find("#grant-form button[type=submit]").click()
    assert "grant_self" in console.error_text()
