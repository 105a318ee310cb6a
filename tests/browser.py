"""Open a page in a real headless Chromium (Debian's package, driven by Playwright) and see what rendered."""

from __future__ import annotations

import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise AssertionError("chromium is not installed: `make test` installs Debian's package (apt-get install chromium)")
    return path


def rendered_images(page_path: Path) -> list[dict]:
    """Every <img> on the page after load: its alt text, whether it decoded, and its drawn size in pixels."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            return page.evaluate("""Array.from(document.images).map(i => ({alt: i.alt, decoded: i.complete && i.naturalWidth > 0,
                                                                          width: i.getBoundingClientRect().width}))""")
        finally:
            browser.close()
