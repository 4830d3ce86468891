"""The dashboard page in a real headless Chromium (Debian's), while a job runs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zmqworkers import Cluster

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (scripts/install-system-deps.sh)",
)
# Chromium here: no sandbox as root, and none of its own network traffic
# (its background connections are refused on a closed network).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def slow(x: int) -> int:
    import time

    time.sleep(0.05)
    if x % 50 == 3:
        raise RuntimeError(f"task {x} went wrong")
    return x


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(cond: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"not met within {timeout} s: {cond}"
        time.sleep(0.1)


def test_the_page_shows_every_worker_and_moving_progress(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with Cluster(2, dashboard="127.0.0.1:0") as c:
        c.wait_for_workers(2)
        ids = {w["id"] for w in c.workers()}
        futures = [c.submit(slow, i) for i in range(400)]
        assert c.dashboard_url is not None
        browser.get(c.dashboard_url)

        def rows() -> set[str]:
            cells = browser.find_elements(By.CSS_SELECTOR, "#workers tr")
            return {r.get_attribute("data-worker") for r in cells}

        assert _wait(lambda: rows() == ids)

        def progress() -> int:
            return int(browser.find_element(By.ID, "progress").get_attribute("data-value"))

        first = _wait(lambda: progress() > 0 and progress())
        second = _wait(lambda: progress() > first and progress())
        assert first < second < 400
        # Failures show with their remote traceback.
        _wait(lambda: "went wrong" in browser.find_element(By.ID, "failures").text)
        assert browser.find_element(By.ID, "connection").text == "live"
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        for f in futures:
            f.exception(timeout=60)
        # At the end: every task counted, the bar full.
        _wait(lambda: progress() == 400)
        assert browser.find_element(By.ID, "failed").text == "8"
