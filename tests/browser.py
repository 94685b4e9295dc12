"""A real browser for the page tests: Debian's headless Chromium driven through its chromedriver by Selenium.

Never a downloaded browser: the binary is /usr/bin/chromium and the driver /usr/bin/chromedriver (``make test``
installs both from Debian when they are missing and it runs as root). Selenium Manager, which could fetch a
browser or a driver, is not used: both paths are given, and SE_OFFLINE forbids it any download anyway.

Without the browser the tests fail under CI (``CI=true``) and are skipped, saying why, elsewhere.
Every network request the page makes is recorded through Chrome's performance log (the DevTools ``Network``
events), so a test can prove that nothing left the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMEDRIVER", "CHROMIUM", "chromium", "network_urls", "require_browser"]

CHROMIUM = Path(os.environ.get("GSHAP_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("GSHAP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def require_browser() -> None:
    """Fail under CI, skip elsewhere, when Chromium or its driver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: `make test` installs Debian's chromium and chromium-driver as root"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile, removed afterwards) with the performance log on."""
    require_browser()
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gshap-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def network_urls(driver: Any) -> list[str]:
    """Every URL the browser asked for since the last call (DevTools Network.requestWillBeSent events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors (CSP violations among them) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
