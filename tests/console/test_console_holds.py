"""Evidence holds in the console: an approver places a hold and asks for its release, cannot confirm that request
personally (the API's refusal is shown), and a second approver confirms it, after which the hold shows released with
who asked, who confirmed and when. An officer places a hold on a camera a grant shows them, and sees no release
buttons."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from nvr.clock import iso
from tests.api.conftest import DAY_US, Api
from tests.console.conftest import Console

SET_LOCAL_TIME = """
const [selector, isoValue] = arguments;
const d = new Date(isoValue), pad = (n) => String(n).padStart(2, "0");
const el = document.querySelector(selector);
const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
el.value = `${day}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
"""


def _place_hold(console: Console, camera: str, case_ref: str, start_us: int) -> None:
    form = console.find("#hold-form")
    form.find_element(By.NAME, "case_ref").send_keys(case_ref)
    form.find_element(By.NAME, "title").send_keys("North gate assault")
    form.find_element(By.NAME, "reason").send_keys("footage needed for the prosecution")
    form.find_element(By.CSS_SELECTOR, f"input[name=cameras][value='{camera}']").click()
    console.js(SET_LOCAL_TIME, "#hold-form [name=start]", iso(start_us))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def _hold_row(console: Console, state: str) -> str:
    return console.find(f"#holds-table tr[data-state='{state}']").text


def _holds(api: Api, who: str) -> list[dict]:
    with api.client(who) as c:
        r = c.get("/api/v1/holds")
    assert r.status_code == 200, r.text
    return r.json()["holds"]


def test_release_needs_a_second_approver_and_shows_who_did_what(console: Console) -> None:
    api = console.api
    api.camera("cam-a", segments=5)
    api.user("ann", ["approver"])
    api.user("ben", ["approver"])
    console.login("ann")
    console.open("/holds")
    _place_hold(console, "cam-a", "CASE-2026-077", api.clock.now_us() - 2 * DAY_US)
    row = _hold_row(console, "active")
    assert "CASE-2026-077" in row and "cam-a" in row and "Ann" in row
    assert "5 segment(s)" in row  # the whole recorded footage of the window is covered
    [hold] = _holds(api, "ann")
    assert hold["state"] == "active" and hold["cameras"] == ["cam-a"] and hold["end"] is None

    request = console.find(f"form.release-request[data-hold='{hold['id']}']")
    request.find_element(By.NAME, "reason").send_keys("case closed by the court")
    request.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    row = _hold_row(console, "release_requested")
    assert "Release requested by Ann" in row and "case closed by the court" in row
    console.screenshot("holds")

    # The one who asked cannot also confirm: the server refuses, and the console shows its words.
    console.find(f"form.release-confirm[data-hold='{hold['id']}'] button[type=submit]").click()
    assert "hold_release_same_user" in console.error_text()
    assert _holds(api, "ann")[0]["state"] == "release_requested"

    console.logout()
    console.login("ben")
    console.open("/holds")
    console.find(f"form.release-confirm[data-hold='{hold['id']}'] button[type=submit]").click()
    row = _hold_row(console, "released")
    assert "Release requested by Ann" in row and "Released by Ben" in row
    [done] = _holds(api, "ben")
    assert done["state"] == "released" and done["released_by_id"] == api.ids["ben"]
    assert done["release_requested_by_id"] == api.ids["ann"] and not done["protecting"]


def test_an_officer_places_a_hold_on_a_granted_camera_and_cannot_release(console: Console) -> None:
    api = console.api
    api.camera("cam-a", segments=2)
    api.camera("cam-b", segments=2)
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.grant("boss", "olga", ["cam-a"])
    console.login("olga")
    console.open("/holds")
    form = console.find("#hold-form")
    offered = [el.get_attribute("value") for el in form.find_elements(By.CSS_SELECTOR, "input[name=cameras]")]
    assert offered == ["cam-a"]  # only what a grant shows her
    _place_hold(console, "cam-a", "CASE-2026-078", api.clock.now_us() - 2 * DAY_US)
    row = _hold_row(console, "active")
    assert "CASE-2026-078" in row and "Olga" in row
    assert not console.find_all("form.release-request")
    [hold] = _holds(api, "boss")
    assert hold["placed_by_id"] == api.ids["olga"] and hold["cameras"] == ["cam-a"]
