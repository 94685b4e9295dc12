"""The page's weight: the bytes the page at ``/`` transfers on a first load, in headless Chromium or over HTTP."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchkit.common import HOST, ROOT

__all__ = ["PAGE_BUDGET_BYTES", "page_first_load"]

PAGE_BUDGET_BYTES = 100_000
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def page_first_load(url: str) -> dict[str, Any]:
    """Bytes the page at ``url``/ transfers on a first load (cold cache), until its form is built.

    In headless Chromium: the sum of ``transferSize`` (headers and body) of the navigation and every resource
    (script, style sheet, icon, the /model and /groups JSON). Without Chromium: the same files fetched over HTTP
    (bodies plus header bytes), the JSON named by the page's own script."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        with contextlib.suppress(ImportError):
            return _page_in_browser(url)
    return _page_over_http(url)


def _page_in_browser(url: str) -> dict[str, Any]:
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="gshap-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements("css selector", "#fields input"))
        entries = driver.execute_script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".map(e => [e.name, e.transferSize, e.encodedBodySize])"
        )
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    files = {re.sub(r"^https?://[^/]+", "", name): int(size) for name, size, _ in entries}
    return {"method": "chromium resource timing (transferSize)", "bytes": sum(files.values()), "files": files}


def _page_over_http(url: str) -> dict[str, Any]:

    def get(path: str) -> int:
        conn = http.client.HTTPConnection(HOST, int(url.rsplit(":", 1)[1]), timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            headers = sum(len(k) + len(v) + 4 for k, v in resp.getheaders()) + 17
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}")
            sizes[path] = len(body) + headers
            return len(body)
        finally:
            conn.close()

    sizes: dict[str, int] = {}
    conn = http.client.HTTPConnection(HOST, int(url.rsplit(":", 1)[1]), timeout=30)
    conn.request("GET", "/")
    html = conn.getresponse().read().decode()
    conn.close()
    get("/")
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        get(asset)
    script = (ROOT / "service" / "api" / "static" / "page.js").read_text()
    for path in sorted(set(re.findall(r'api\("GET", "(/[a-z]+)"\)', script))):
        get(path)
    return {"method": "HTTP (bodies + headers)", "bytes": sum(sizes.values()), "files": sizes}
