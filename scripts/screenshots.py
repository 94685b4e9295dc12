"""Screenshots of the page at / for the README: desktop and phone width, after explaining the example record.

    python scripts/screenshots.py                  # writes docs/screenshots/{page,page-phone,model-card}.png

Starts ``gshap serve`` on a free loopback port, drives Debian's headless Chromium (/usr/bin/chromium through
/usr/bin/chromedriver; ``make screenshots`` installs them as root), and stops the server afterwards.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# the example patient of the feature specification, with insulin not measured
RECORD = {
    "pregnancies": 6,
    "glucose": 148,
    "blood_pressure": 72,
    "skin_thickness": 35,
    "insulin": "",
    "bmi": 33.6,
    "diabetes_pedigree_function": 0.627,
    "age": 50,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server() -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSHAP_")}
    env.update({"GSHAP_PORT": str(port), "GSHAP_LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@contextmanager
def browser() -> Iterator[Any]:
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="gshap-shots-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def explain(driver: Any, url: str, width: int, height: int, mobile: bool) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
    )
    driver.get(url + "/")
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.NAME, "glucose"))
    for name, value in RECORD.items():
        field = driver.find_element(By.NAME, name)
        field.clear()
        if value != "":
            field.send_keys(str(value))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg#attributions"))
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    time.sleep(0.3)


def shot(driver: Any, path: Path, clip_height: int | None = None, top: float = 0.0) -> None:
    """A screenshot of the whole page (or ``clip_height`` CSS pixels of it from ``top``)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    rest = size["height"] - top
    clip = {"x": 0, "y": top, "width": size["width"], "height": min(rest, clip_height or rest)}
    data = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}}
    )
    path.write_bytes(base64.b64decode(data["data"]))
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with server() as url, browser() as driver:
        explain(driver, url, 1280, 900, mobile=False)
        shot(driver, out / "page.png", clip_height=1180)
        explain(driver, url, 390, 844, mobile=True)
        top = driver.execute_script("return document.getElementById('result').getBoundingClientRect().top + scrollY")
        shot(driver, out / "page-phone.png", clip_height=980, top=max(0.0, top - 12))
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(url + "/#model")
        time.sleep(1.0)
        shot(driver, out / "model-card.png", clip_height=1400)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
