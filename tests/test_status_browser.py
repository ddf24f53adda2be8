"""The status page in a real headless browser (Debian's chromium and chromium-driver, driven by selenium):
it asks for the token, then shows the requests sent meanwhile through the SDK with their cache figures and
a cache-miss explanation, and it asks no host but the daemon for anything. A screenshot of it goes to the
test's output folder (and to `MLXD_SCREENSHOT` when that names a file: how docs/status-page.png is made).

Skipped where the browser is missing: `apt-get install chromium chromium-driver` enables it (`.ci/run`
installs both)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningServer, run_server
from tests.model_zoo import wait_for
from tests.test_status_page import LONG_BLOCK, TOKEN, ask, system

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no headless browser: apt-get install chromium chromium-driver to run the status page in one",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(trained: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "home", "--model", str(trained), "--model-name", "trained", token=TOKEN
    ) as running:
        yield running


def test_the_page_shows_the_requests_with_their_cache_figures_and_its_buttons_work(
    browser, server: RunningServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/")
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), "the page to ask for the token")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: browser.find_element(By.ID, "main").is_displayed(), "the page to accept the token")

    first = ask(server, system()).headers["request-id"]
    changed = ask(server, system(LONG_BLOCK.replace("Rule 2:", "Rule two:"))).headers["request-id"]

    def rows() -> dict[str, str]:
        # Read in one script: the page redraws its tables every second, which makes elements go stale.
        rows = "[...document.querySelectorAll('#recent tr')]"
        script = f"return {rows}.map(r => [r.cells[1].textContent, r.innerText])"
        return dict(browser.execute_script(script))

    wait_for(lambda: {first, changed} <= set(rows()), "both requests to show on the page", timeout=30)
    shown = rows()
    assert "system block 3 changed" in shown[changed] and "system block 3 changed" not in shown[first]
    models = browser.execute_script("return document.getElementById('models').innerText")
    assert "trained" in models and "loaded" in models

    browser.save_screenshot(str(tmp_path / "status-page.png"))
    if target := os.environ.get("MLXD_SCREENSHOT"):
        browser.save_screenshot(target)

    # The models' buttons unload and load the model (clicked in a script: the table is redrawn every second).
    def state() -> str:
        return browser.execute_script("return document.querySelector('#models tr').cells[1].textContent")

    browser.execute_script("document.querySelector('#models button').click()")
    wait_for(lambda: state() == "unloaded", "the unload button to unload the model")
    browser.execute_script("document.querySelector('#models button').click()")
    wait_for(lambda: state() == "loaded", "the load button to load it again")

    # What the browser fetched over the network (its own chrome:// pages aside): the daemon's alone.
    asked = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if url.split(":", 1)[0] in ("http", "https", "ws", "wss"):
                asked.add(url)
    assert f"{server.url}/v1/admin/requests" in asked
    assert all(url.startswith(f"{server.url}/") for url in asked), asked
