"""A built site in a real browser: headless Chromium through Selenium, for the tests and the docs' screenshot.

:func:`chromium` starts Debian's ``chromium`` with its ``chromedriver`` (or what ``FEATSTORE_CHROMIUM`` and
``FEATSTORE_CHROMEDRIVER`` name) headless, offline and with a fresh profile; :func:`missing` says why it cannot
(Selenium, the browser or the driver absent), so a test can skip saying why. :func:`visit` loads one page and
returns what went wrong in it: console errors, and links that do not name a file in the site.

    with chromium() as driver:
        problems = visit(driver, Path("features.report/index.html"))
        driver.save_screenshot("index.png")
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

FLAGS = (  # no GPU, no sandbox (root in CI containers), and nothing that reaches for the network
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _binaries() -> tuple[str | None, str | None]:
    browser = os.environ.get("FEATSTORE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("FEATSTORE_CHROMEDRIVER") or shutil.which("chromedriver")
    return browser, driver


def missing() -> str:
    """Why headless Chromium cannot run here ("" when it can)."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[dev]')"
    browser, driver = _binaries()
    if not browser:
        return "no chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if not driver:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return ""


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A headless Chromium WebDriver with a fresh profile (removed afterwards), its console log collected."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _binaries()
    profile = tempfile.mkdtemp(prefix="featstore-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def visit(driver, page: Path, settle: float = 0.2, wait_for: str | None = None, timeout: float = 30.0) -> list[str]:
    """Load ``page``; the problems found: console errors and warnings, links that are not files in its site.

    ``wait_for``: a CSS selector that must appear (a figure drawn) before the page counts as loaded. Links to
    ``file://`` URLs outside the site (the original images) must name existing files; ``#`` links are ignored.
    """
    from selenium.webdriver.common.by import By

    page = page.resolve()
    driver.get(page.as_uri())
    deadline = time.monotonic() + timeout
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.05)
    problems = []
    if wait_for:
        while not driver.find_elements(By.CSS_SELECTOR, wait_for) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not driver.find_elements(By.CSS_SELECTOR, wait_for):
            problems.append(f"{page.name}: {wait_for} did not appear within {timeout:.0f} s")
    time.sleep(settle)
    for entry in driver.get_log("browser"):
        if entry.get("level") in ("SEVERE", "WARNING"):
            problems.append(f"{page.name}: console {entry['level']}: {entry.get('message', '')[:300]}")
    for attr, selector in (("href", "a[href]"), ("src", "img[src], script[src]"), ("href", "link[href]")):
        for el in driver.find_elements(By.CSS_SELECTOR, selector):
            url = el.get_attribute(attr) or ""
            parts = urlsplit(url)
            if parts.scheme != "file":
                if url and not url.startswith(("data:", "about:")) and not (parts.fragment and not parts.path):
                    problems.append(f"{page.name}: {attr} {url[:120]} is not a file")
                continue
            if parts.path == page.as_posix() and parts.fragment:
                continue  # an anchor on this page
            target = Path(unquote(parts.path))
            if not target.is_file():
                problems.append(f"{page.name}: {attr} {url[:160]} names no file")
    return problems


def blank(png: bytes) -> bool:
    """Whether a screenshot is blank: a single colour (or nearly: under 1 % of pixels differ from the commonest)."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(np.int64)
    keys = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]  # one integer per colour: a 1-D count is fast
    return np.unique(keys, return_counts=True)[1].max() > 0.99 * len(keys)
