"""The officer's console in a real browser: only granted cameras are listed, a click on the timeline plays the moment
clicked (media time mapped to wall time through X-Nvr-Start and the collapsed gaps), a second click inside the loaded
window seeks without a new playback ticket, and an export goes file → co-sign → approve → bundle → download with
its declared destination, each step by its own person."""

from __future__ import annotations

import hashlib
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent
from tests.console.conftest import Console
from tests.support import footage
from tests.support.browser import poll

SEG_US = footage.CLIP_SECONDS * 1_000_000
GOP_S = 1.0  # tests.support.footage: 25 fps, a keyframe every 25 frames
GAP_US = 30_000_000

# Sets an <input type="datetime-local"> to a UTC instant, written in the browser's own zone (as its picker would).
SET_LOCAL = """
const el = arguments[0], d = new Date(arguments[1]), p = (n) => String(n).padStart(2, '0');
el.value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
"""

PLAYER = """
const v = document.getElementById('player'), w = document.getElementById('wall');
return {t: v.currentTime, ready: v.readyState, seeking: v.seeking, paused: v.paused,
        error: v.error && v.error.message, wall: w.dataset.wall};
"""


def _events(console: Console, action: str) -> list[AuditEvent]:
    with console.api.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


def test_an_officer_sees_only_granted_cameras_and_the_refusal_for_another(console: Console) -> None:
    api = console.api
    api.camera("cam-a", segments=2)
    api.camera("cam-b", segments=2)
    api.user("appr", ["approver"])
    api.user("olga", ["officer"])
    api.grant("appr", "olga", ["cam-a"])

    console.login("olga")
    console.open("/cameras")
    console.find("#camera-list")
    listed = [a.text for a in console.find_all("#camera-list a.camera-link")]
    assert listed == ["cam-a"]
    assert "active" in console.find("#camera-list").text or "registered" in console.find("#camera-list").text
    console.screenshot("officer-cameras")

    console.open("/cameras/cam-b")
    assert "camera_not_found" in console.error_text()
    console.open("/cameras")
    console.find("a.camera-link[data-camera='cam-a']").click()
    console.find("#timeline")
    console.text_appears("cam-a", "h1")
    assert console.js("return location.hash").startswith("#/cameras/cam-a")


def _click_at(console: Console, moment_us: int, view: tuple[int, int]) -> None:
    """Click the timeline at the pixel that stands for ``moment_us`` (the timeline spans ``view``)."""
    timeline = console.find("#timeline")
    rect = console.js("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", timeline)
    x = (moment_us - view[0]) / (view[1] - view[0]) * rect[0]
    # Selenium's offsets are from the element's centre.
    ActionChains(console.driver).move_to_element_with_offset(timeline, round(x - rect[0] / 2), 0).click().perform()


def _settled(console: Console, after_wall: str | None = None) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        st = console.js(PLAYER)
        assert not st["error"], st
        if st["ready"] >= 2 and not st["seeking"] and st["wall"] and st["wall"] != after_wall:
            return st
        return None

    return poll(ready, "the video to play at the clicked moment", timeout=30)


def test_scrubbing_plays_the_clicked_moment_and_seeks_within_the_loaded_window(console: Console) -> None:
    api = console.api
    first = api.camera("cam-a", segments=60)  # two minutes
    later = footage.add_segments(api.rt, "cam-a", first[-1] + SEG_US + GAP_US, 30)  # then a 30 s gap, one more minute
    far = footage.add_segments(api.rt, "cam-a", first[0] + 45 * 60_000_000, 30)  # beyond a 30-minute window
    api.user("appr", ["approver"])
    api.user("olga", ["officer"])
    api.grant("appr", "olga", ["cam-a"])
    view = (first[0] - 20_000_000, later[-1] + SEG_US + 20_000_000)

    console.login("olga")
    console.open(f"/cameras/cam-a?start={iso(view[0])}&end={iso(view[1])}")
    console.find("#timeline .gap")
    assert console.find("#timeline-summary").text.startswith("Recorded runs: 2 · gaps: 3")
    console.find("#purpose").send_keys("review of incident 42")

    # A moment in the first run: the stream starts at the first segment (the window reaches back 5 minutes, before
    # any footage), so media time is exactly the footage time since then.
    moment = first[0] + 61_300_000
    _click_at(console, moment, view)
    st = _settled(console)
    assert abs(st["t"] - (moment - first[0]) / 1e6) <= GOP_S, st
    assert abs(_us(st["wall"]) - moment) <= GOP_S * 1e6, (st, iso(moment))
    assert len(_events(console, "playback.ticket")) == 1
    poll(lambda: console.js(PLAYER)["t"] > st["t"], "the video to advance")
    console.screenshot("officer-camera-playing")

    # A moment after the gap, inside the same loaded window: a seek, no new ticket, and the gap's 30 s are not in
    # the media timeline.
    moment2 = later[0] + 9_700_000
    _click_at(console, moment2, view)
    st2 = poll(
        lambda: (s := console.js(PLAYER)) and abs(_us(s["wall"]) - moment2) < 5e6 and not s["seeking"] and s,
        "the seek to the second moment",
    )
    assert abs(st2["t"] - (moment2 - first[0] - GAP_US) / 1e6) <= GOP_S, st2
    assert abs(_us(st2["wall"]) - moment2) <= GOP_S * 1e6, (st2, iso(moment2))
    assert len(_events(console, "playback.ticket")) == 1
    assert console.find("#loaded").get_attribute("data-tickets") == "1"

    # A moment outside the loaded window (shown by typing another window into the inputs): a new ticket.
    minute = 60_000_000
    view3 = ((far[0] - 20_000_000) // minute * minute, (far[0] - 20_000_000) // minute * minute + 3 * minute)
    console.js(SET_LOCAL, console.find("#view-start"), view3[0] // 1000)
    console.js(SET_LOCAL, console.find("#view-end"), view3[1] // 1000)
    console.find("#view-show").click()
    console.text_appears("Recorded runs: 1 ·", "#timeline-summary")
    moment3 = far[0] + 30_200_000
    _click_at(console, moment3, view3)
    st3 = poll(
        lambda: (s := console.js(PLAYER)) and abs(_us(s["wall"]) - moment3) < 5e6 and not s["seeking"] and s,
        "playback of the far moment",
    )
    assert abs(_us(st3["wall"]) - moment3) <= GOP_S * 1e6, (st3, iso(moment3))
    assert len(_events(console, "playback.ticket")) == 2


def test_playing_needs_a_purpose_and_a_refusal_is_shown(console: Console) -> None:
    api = console.api
    first = api.camera("cam-a", segments=5)
    api.user("appr", ["approver"])
    api.user("olga", ["officer"])
    g = api.grant("appr", "olga", ["cam-a"])
    view = (first[0] - 2_000_000, first[-1] + 4_000_000)
    console.login("olga")
    console.open(f"/cameras/cam-a?start={iso(view[0])}&end={iso(view[1])}")
    console.find("#timeline .run")
    console.js("document.getElementById('purpose').value = '';")
    _click_at(console, first[2], view)
    assert "purpose" in console.error_text().lower()
    with api.client("appr") as c:
        assert c.post(f"/api/v1/grants/{g['id']}/suspend", json={"reason": "case closed"}).status_code == 200
    console.find("#purpose").send_keys("review")
    _click_at(console, first[2], view)
    poll(lambda: "grant_suspended" in console.error_text(), "the API's refusal in the banner")


def _set(console: Console, form: str, name: str, text: str) -> None:
    el = console.find(f"{form} [name='{name}']")
    el.clear()
    el.send_keys(text)


def test_file_cosign_approve_and_download_an_export(console: Console, tmp_path: Path) -> None:
    api = console.api
    starts = api.camera("cam-a", segments=60, unit="Unit A")
    api.user("off1", ["officer"], unit="Unit A")
    api.user("off2", ["officer"], unit="Unit A")
    api.user("appr", ["approver"], unit="Unit A")
    minute = 60_000_000
    start = (starts[0] // minute + 1) * minute  # whole minutes: the form's inputs have minute steps
    end = start + minute
    destination = "sealed USB drive, evidence locker 4"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    console.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})

    # The first officer files it.
    console.login("off1")
    console.open("/exports")
    _set(console, "#export-form", "cameras", "cam-a")
    console.js(SET_LOCAL, console.find("#export-form [name='start']"), start // 1000)
    console.js(SET_LOCAL, console.find("#export-form [name='end']"), end // 1000)
    _set(console, "#export-form", "purpose", "robbery at the north gate")
    _set(console, "#export-form", "case_ref", "CASE-2026-117")
    _set(console, "#export-form", "legal_basis", "Unit A letter 2026/117")
    _set(console, "#export-form", "recipient", "City Court, clerk of case 117")
    _set(console, "#export-form", "destination", destination)
    console.find("#export-form button[type=submit]").click()
    console.text_appears("pending_cosign", "#exports-table")
    assert destination in console.find("#exports-table .destination").text
    assert not console.find_all("#exports-table button.cosign")  # never one's own
    console.logout()

    # A second officer of the unit co-signs.
    console.login("off2")
    console.open("/exports")
    console.find("#exports-table button.cosign").click()
    console.text_appears("pending_approval", "#exports-table")
    console.logout()

    # The approver approves with a reason.
    console.login("appr")
    console.open("/approvals")
    row = console.find("#export-approval-table .decision")
    row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("letter 2026/117 checked")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    console.text_appears("approved", "#banner")
    console.logout()

    # The requester makes the bundle, follows its progress and downloads it, declaring where this copy goes.
    console.login("off1")
    console.open("/exports")
    console.find("#exports-table button.start-job").click()
    console.find("#exports-table .job[data-job='done']", timeout=60)
    dest = console.find("#exports-table input.download-destination")
    assert dest.get_attribute("value") == destination
    console.find("#exports-table button.download-button").click()
    result = console.find("#exports-table .download-result[data-bytes]")
    with api.client("off1") as c:
        job = c.get("/api/v1/exports/1").json()["job"]
    assert int(result.get_attribute("data-bytes") or -1) == job["bundle_bytes"] > 0
    assert destination in result.text
    saved = poll(lambda: [p for p in downloads.glob("*.zip")], "the bundle in the download folder", timeout=30)
    data = saved[0].read_bytes()
    assert hashlib.sha256(data).hexdigest() == job["bundle_sha256"]
    assert zipfile.is_zipfile(saved[0])
    downloaded = _events(console, "export.download")
    assert downloaded and {e.destination for e in downloaded} == {destination}
    assert {e.actor_id for e in downloaded} == {api.ids["off1"]} and {e.camera_id for e in downloaded} == {"cam-a"}
    console.screenshot("officer-exports")


def test_a_chinese_browser_gets_the_officer_screens_in_chinese(console_zh: Console) -> None:
    api = console_zh.api
    api.camera("cam-a", segments=2)
    api.user("appr", ["approver"])
    api.user("olga", ["officer"])
    api.grant("appr", "olga", ["cam-a"])
    console_zh.login("olga")
    console_zh.open("/cameras")
    console_zh.text_appears("您可查看的摄像机", "h1")
    nav = console_zh.find("header nav").text
    assert "摄像机" in nav and "调阅申请" in nav and "导出" in nav
    console_zh.find("a.camera-link[data-camera='cam-a']").click()
    console_zh.text_appears("时间轴", "h2")
    assert "录像段" in console_zh.find("#timeline-summary").text
