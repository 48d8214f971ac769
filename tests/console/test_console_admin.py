"""The administrators' screens in a real browser: the camera registry with each camera's state, online rate and
recording completeness, registering a camera and activating it; retention policies and moving a camera to one;
the capacity forecast; creating users (directly, and through a second admin for a role that needs one); system
health showing an alarm while an abnormal-use alert is open, and an approver reviewing that alert."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from nvr.models import Gap
from tests.api.conftest import Api
from tests.console.conftest import Console
from tests.support import footage
from tests.support.browser import poll

SEC = 1_000_000
QUIET = {
    "alert_footage_hours_per_hour": 10_000.0,
    "alert_cameras_per_hour": 10_000,
    "alert_denials_per_hour": 10_000,
    "alert_destinations_per_day": 10_000,
    "alert_off_hours": "",
    "alert_unusual_cameras_per_hour": 10_000,
}


def _quiet(api: Api, **rules: Any) -> None:
    for key, value in {**QUIET, **rules}.items():
        setattr(api.rt.settings, key, value)


def _activate(api: Api, who: str, camera_id: str) -> None:
    with api.client(who) as c:
        r = c.post(f"/api/v1/cameras/{camera_id}/state", json={"state": "active", "reason": "installed"})
    assert r.status_code == 200, r.text


def _fill(form: Any, **values: str) -> None:
    for name, value in values.items():
        form.find_element(By.NAME, name).send_keys(value)


def _row(console: Console, table: str, text: str) -> str:
    def found() -> str | None:
        for row in console.find_all(f"{table} tbody tr"):
            if text in row.text:
                return row.text
        return None

    return poll(found, f"a row with {text!r} in {table}")


def test_cameras_screen_shows_state_online_rate_and_completeness_and_registers(console: Console) -> None:
    api = console.api
    api.user("chief", ["admin"])
    api.camera("cam-a")
    _activate(api, "chief", "cam-a")
    t0 = api.clock.now_us()
    footage.add_segments(api.rt, "cam-a", t0, 5)  # 10 s recorded …
    with api.rt.db.session() as s:  # … then 10 s off the network, then 20 s of nothing
        s.add(Gap(camera_id="cam-a", start_us=t0 + 10 * SEC, end_us=t0 + 20 * SEC, reason="disconnected", detail=None))
        s.commit()
    api.camera("cam-b")
    api.clock.advance(40)

    console.login("chief")
    console.open("/admin/cameras")
    row = console.find("#cameras-table tr[data-camera='cam-a']")
    assert row.find_element(By.CSS_SELECTOR, ".camera-state-cell").text == "active"
    assert row.find_element(By.CSS_SELECTOR, ".completeness").text == "25.0%"
    assert row.find_element(By.CSS_SELECTOR, ".online").text == "75.0%"
    assert "disconnected" in row.text and "***" in row.text  # the gap's reason; the URL without its password
    other = console.find("#cameras-table tr[data-camera='cam-b']")
    assert other.find_element(By.CSS_SELECTOR, ".camera-state-cell").text == "registered"
    console.screenshot("admin-cameras")

    form = console.find("#camera-form")
    _fill(form, id="gate-3", name="Gate 3", stream_url="rtsp://10.0.0.9/gate3", managing_unit="Unit A")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    console.text_appears("gate-3", "#banner")
    new = console.find("#cameras-table tr[data-camera='gate-3']")
    assert new.find_element(By.CSS_SELECTOR, ".camera-state-cell").text == "registered"
    change = new.find_element(By.CSS_SELECTOR, "form.camera-state")
    Select(change.find_element(By.NAME, "state")).select_by_value("active")
    change.find_element(By.NAME, "reason").send_keys("commissioned")
    change.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    console.text_appears("active", "#cameras-table tr[data-camera='gate-3'] .camera-state-cell")
    with api.client("chief") as c:
        cam = c.get("/api/v1/cameras/gate-3").json()
    assert cam["state"] == "active" and cam["name"] == "Gate 3"
    # A refusal is the API's own words, never a blank page.
    form = console.find("#camera-form")
    _fill(form, id="gate-3", name="Again", stream_url="rtsp://10.0.0.9/x", managing_unit="Unit A")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert "camera_exists" in console.error_text()


def test_policies_and_capacity(console: Console) -> None:
    api = console.api
    api.user("chief", ["admin"])
    api.camera("cam-a", segments=3)
    console.login("chief")
    console.open("/admin/policies")
    form = console.find("#policy-form")
    _fill(form, name="serious-crime", min_days="400", description="cases under investigation")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    console.text_appears("serious-crime", "#banner")
    assign = console.find("#assign-form")
    Select(assign.find_element(By.NAME, "camera")).select_by_value("cam-a")
    Select(assign.find_element(By.NAME, "policy")).select_by_value("serious-crime")
    assign.find_element(By.CSS_SELECTOR, "input[name=ack]").click()
    assign.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    console.text_appears("cam-a", "#banner")
    assert "cam-a" in _row(console, "#policies-table", "serious-crime")
    console.screenshot("admin-policies")
    with api.client("chief") as c:
        assert c.get("/api/v1/cameras/cam-a").json()["policy"] == "serious-crime"

    console.open("/admin/capacity")
    row = _row(console, "#capacity-cameras", "cam-a")
    assert "serious-crime" in row and "400" in row
    assert console.find_all("#capacity-volumes tbody tr")
    console.screenshot("admin-capacity")


def test_create_users_directly_and_through_a_second_admin(console: Console) -> None:
    api = console.api
    api.user("chief", ["admin"])
    api.user("deputy", ["admin"])
    console.login("chief")
    console.open("/admin/users")

    def create(username: str, role: str) -> None:
        form = console.find("#user-form")
        _fill(
            form,
            username=username,
            full_name=username.title(),
            staff_number=f"N-{username}",
            unit="Unit A",
            password="a long enough password",
        )
        form.find_element(By.CSS_SELECTOR, f"input[name=roles][value='{role}']").click()
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    create("oscar", "operator")  # no power over people or footage: at once
    console.text_appears("oscar", "#banner")
    assert "operator" in _row(console, "#users-table", "oscar")
    create("olive", "officer")  # reaches footage: waits for a second admin
    console.text_appears("second admin", "#banner")
    assert "olive" in _row(console, "#changes-table", "olive")
    assert not [r for r in console.find_all("#users-table tbody tr") if "olive" in r.text]
    console.screenshot("admin-users")

    console.logout()
    console.login("deputy")
    console.open("/admin/users")
    console.find("#changes-table button.change-confirm").click()
    assert "officer" in _row(console, "#users-table", "olive")
    with api.client("deputy") as c:
        listed = {u["username"]: u for u in c.get("/api/v1/users").json()["users"]}
    assert listed["olive"]["roles"] == ["officer"] and listed["oscar"]["state"] == "active"


def test_health_shows_the_alarm_of_an_open_alert(console: Console) -> None:
    api = console.api
    _quiet(api, alert_denials_per_hour=2)
    api.user("chief", ["admin"])
    api.user("olga", ["officer"])
    console.login("chief")
    console.open("/admin/health")
    console.text_appears("No alarms", "#alarms")
    with api.client("olga") as c:  # three refusals in an hour: one more than the rule allows
        for _ in range(3):
            assert c.get("/api/v1/users").status_code == 403
    console.open("/admin/cameras")
    console.open("/admin/health")
    alarm = console.find("#alarms li[data-alarm='abnormal_use']")
    assert "abnormal use" in alarm.text
    row = _row(console, "#alerts-table", "repeated_denials")
    assert "olga" in row
    assert not console.find_all("form.alert-review")  # reviewing is an approver's decision, not an admin's
    console.screenshot("admin-health")

    api.user("bess", ["approver"])
    console.logout()
    console.login("bess")
    console.open("/alerts")
    review = console.find("form.alert-review")
    Select(review.find_element(By.NAME, "decision")).select_by_value("uphold")
    review.find_element(By.NAME, "note").send_keys("spoke to her; she was probing the API")
    review.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    console.text_appears("reviewed", "#banner")
    console.text_appears("0 open alert(s)")
    with api.client("bess") as c:
        [alert] = c.get("/api/v1/alerts").json()["alerts"]
    assert alert["state"] == "upheld" and alert["reviewed_by"]["username"] == "bess"


def test_the_camera_registry_in_chinese(console_zh: Console) -> None:
    api = console_zh.api
    api.user("chief", ["admin"])
    api.camera("cam-a")
    _activate(api, "chief", "cam-a")
    console_zh.login("chief")
    console_zh.open("/admin/cameras")
    console_zh.text_appears("摄像机登记", "h1")
    head = console_zh.find("#cameras-table thead").text
    assert "在线率" in head and "录像完整率" in head
    row = console_zh.find("#cameras-table tr[data-camera='cam-a']")
    assert row.find_element(By.CSS_SELECTOR, ".camera-state-cell").text == "启用"
    assert "授权共享" in row.text and "离线" in row.text
