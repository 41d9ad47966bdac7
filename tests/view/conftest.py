"""The tests of ``mpdistill view``. The browser tier (marker ``browser``, ``make test-browser``)
saves a screenshot of each page it tests in test-output/browser/ and lists them at the end of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

SCREENSHOTS_DIR = Path(__file__).resolve().parents[2] / "test-output" / "browser"
SCREENSHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter):
    if SCREENSHOTS:
        terminalreporter.section(f"mpdistill view: screenshots in {SCREENSHOTS_DIR}")
        for path in SCREENSHOTS:
            terminalreporter.write_line(path.name)


@pytest.fixture(scope="session")
def screenshot_path():
    """``screenshot_path(name)``: where to save a screenshot (listed at the end of the run)."""
    def path(name: str) -> Path:
        SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
        SCREENSHOTS.append(SCREENSHOTS_DIR / f"{name}.png")
        return SCREENSHOTS[-1]

    return path
