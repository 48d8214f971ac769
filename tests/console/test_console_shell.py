"""The console's frame: served at / with a strict Content-Security-Policy, sign-in with a local account, the
navigation each role gets, Chinese for a browser that asks for it, and every API refusal shown as its message."""

from __future__ import annotations

import httpx
from selenium.webdriver.common.by import By

from tests.console.conftest import Console


def test_console_page_and_modules_are_served_with_a_strict_policy(api) -> None:
    with httpx.Client(base_url=api.url) as c:
        page = c.get("/")
        module = c.get("/console/app.js")
        missing = c.get("/console/nope.js")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/console/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert module.headers["content-security-policy"] == csp
    assert missing.status_code == 404


def test_wrong_password_shows_the_servers_message_and_a_right_one_signs_in(console: Console) -> None:
    console.api.user("olga", ["officer"])
    console.open("/")
    form = console.find("#login-form")
    form.find_element(By.NAME, "username").send_keys("olga")
    form.find_element(By.NAME, "password").send_keys("not the password")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert "invalid_credentials" in console.error_text() or "password" in console.error_text().lower()
    console.login("olga")
    assert "olga" in console.find("#who").text
    console.logout()
    assert console.js("return sessionStorage.getItem('nvr.token')") is None


def test_a_browser_asking_for_chinese_gets_chinese(console_zh: Console) -> None:
    console_zh.open("/")
    console_zh.text_appears("登录", "h1")
    assert console_zh.js("return document.documentElement.lang") == "zh-CN"
    console_zh.find("#lang").click()
    console_zh.text_appears("Sign in", "h1")
