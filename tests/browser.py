"""Headless Chromium for the HTML report's tests: the system browser, driven by selenium.

Nothing is downloaded: both paths are given (``chromedriver`` and the ``chromium`` binary) and
Selenium Manager is kept offline. In CI (``CI`` set to true) a missing browser fails the test; locally
it is a skip whose reason says what to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _missing(what: str) -> None:
    reason = (f"{what}: the HTML report's browser tests need Debian's chromium and chromium-driver "
              "(apt-get install chromium chromium-driver) and selenium (pip install selenium)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI installs them (.ci/run)", pytrace=False)
    pytest.skip(reason)


def open_browser() -> Any:
    """A headless Chromium (selenium WebDriver) logging the console and the network; quit it after use."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    driver_path = shutil.which("chromedriver")
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if driver_path is None or binary is None:
        _missing("chromedriver is not on PATH" if driver_path is None else "no chromium binary on PATH")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1800", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors (SEVERE entries) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def network_requests(driver: Any) -> list[str]:
    """URLs the page asked the network for: every request that is not the page's own file or a data: URL."""
    import json

    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            url = msg["params"]["request"]["url"]
            if not url.startswith(("file://", "data:", "about:")):
                urls.append(url)
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return urls + list(resources)


def check_report(driver: Any, page: Path, steps: int, shot: Path) -> dict[str, Any]:
    """Open ``page`` from disk and check the DOM contract; return what a test may look at further."""
    from selenium.webdriver.common.by import By

    driver.get(page.resolve().as_uri())
    assert driver.find_elements(By.CSS_SELECTOR, "script[src], link[rel=stylesheet], img[src^=http]") == []
    sections = driver.find_elements(By.CSS_SELECTOR, "[data-step]")
    assert [s.get_attribute("data-step") for s in sections] == [str(i) for i in range(1, steps + 1)]
    for node in driver.find_elements(By.CSS_SELECTOR, "g[data-node]")[:200]:
        classes = set((node.get_attribute("class") or "").split())
        assert len(classes & {"added", "removed", "changed", "replaced", "same"}) == 1, classes
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    return {"sections": sections}


def click_node(driver: Any, step: int, name: str, side: str = "a") -> str:
    """Open step ``step``, click node ``name`` on ``side`` (``b`` or ``a``); the step's detail text."""
    from selenium.webdriver.common.by import By

    section = driver.find_element(By.CSS_SELECTOR, f'[data-step="{step}"]')
    driver.execute_script("arguments[0].open = true", section)
    node = section.find_element(By.CSS_SELECTOR, f'[data-side="{side}"] g[data-node="{name}"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", node)
    node.click()  # a real click, as a user's: the page's script listens on the document
    return section.find_element(By.CSS_SELECTOR, "[data-detail]").text
