"""The README's screenshot of `mpdistill view`: a page opened in headless Chromium, MPD's accepted
rewrites listed and the first one opened (its diff against the student's trace). Run it from the
folder holding the demo's output, so that the page shows the demo folder as `make demo` names it.

    python scripts/view_screenshot.py mpd-demo/view.html docs/assets/view.png

Needs Playwright (`pip install -e '.[test]'`) and Chromium on PATH (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="a view.html (mpdistill view, or the demo's)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--first-step", type=int, default=20, help="list rollouts from this step on")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(args.page.resolve().as_uri())
        filters = page.locator("#section-0 .filters")
        filters.locator("label", has_text="verdict").locator("select").select_option("accepted")
        filters.locator("input").first.fill(str(args.first_step))
        filters.locator("input").first.dispatch_event("change")
        page.wait_for_timeout(1000)  # the filters redraw the table after a short pause
        page.locator("#section-0 tr.row").first.click()
        # From the top of the page down to the end of the opened sample: curves, filters, the diff.
        bottom = page.locator("#section-0 tr.detail").first.evaluate("d => d.getBoundingClientRect().bottom + scrollY")
        page.screenshot(path=str(args.out), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": bottom + 16})
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
