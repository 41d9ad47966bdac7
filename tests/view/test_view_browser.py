"""The page ``mpdistill view`` writes, opened in headless Chromium (``make test-browser``): it loads
without a console or page error, its filters show exactly the samples Python counts in the files,
an opened sample shows what the rewrite removed, the comparison lists the flipped problems first.

Each test saves a screenshot in test-output/browser/ (listed at the end of the run). Without Playwright or
Chromium these tests fail, saying what to install; the default suite deselects them (marker
``browser``).
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner
from view_folders import FLIP_COUNTS, LONG_MARKER, STEPS, eval_samples, rollout_records, write_eval, write_run

from mpdistill.cli import app

pytestmark = pytest.mark.browser

RECORDS = rollout_records()
QUIET = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic"]


@pytest.fixture(scope="module")
def page_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("view")
    write_run(root / "run", RECORDS)
    write_eval(root / "base", eval_samples(0), model="base-model")
    write_eval(root / "new", eval_samples(1), model="new-model")
    result = CliRunner().invoke(app, ["view", str(root / "run"), str(root / "base"), str(root / "new")])
    assert result.exit_code == 0, result.output
    return root / "run" / "view.html"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e '.[test]' (make test-browser installs it)")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("the browser tests need Chromium on PATH: apt-get install chromium (make test-browser installs it)")
    with sync_playwright() as playwright:
        # No background connections: the page needs none, and a closed network refuses them noisily.
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=QUIET)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, page_path, screenshot_path, request):
    """The page, opened; after the test, a screenshot, and no console or page error may have occurred."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    errors = []
    opened.on("console", lambda message: errors.append(f"console {message.type}: {message.text}")
              if message.type in ("error", "warning") else None)
    opened.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    opened.goto(page_path.as_uri())
    yield opened
    opened.screenshot(path=str(screenshot_path(request.node.name)), full_page=True)
    context.close()
    assert errors == []


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def select(page, section: int, label: str, option: str) -> None:
    page.locator(f"#section-{section} .filters label", has_text=label).locator("select").select_option(label=option)


def shown_rows(page, section: int, expected_count: int) -> list[dict]:
    """Every row the filter keeps, page after page: its data attributes."""
    count = page.locator(f"#section-{section} .count")
    expect(count).to_have_attribute("data-count", str(expected_count))
    rows = []
    next_button = page.locator(f"#section-{section} .pager").first.locator(".next")
    while True:
        rows += page.locator(f"#section-{section} tr.row").evaluate_all(
            "rows => rows.map(r => ({...r.dataset}))")
        if next_button.is_disabled():
            return rows
        next_button.click()


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def test_the_curves_of_a_run_have_one_point_per_logged_step(page):
    expect(page.locator(".tab[aria-selected=true]")).to_contain_text("run")
    for title, series in (("Acceptance rate", "rewrites accepted"), ("Compression ratio", "compression ratio"),
                          ("Tokens per sample", "student samples"), ("Loss", "loss")):
        points = page.locator(f'figure[data-title="{title}"] polyline[data-series="{series}"]').get_attribute("points")
        assert len(points.split()) == STEPS, title
    reasons = {r["reason"] for r in RECORDS} - {"accepted"}
    areas = page.locator('figure[data-title="Rejection reasons"] polygon').evaluate_all(
        "shapes => shapes.map(s => s.dataset.series)")
    assert sorted(areas) == sorted(reasons)
    accuracy = page.locator('figure[data-title="Student accuracy"] polyline').get_attribute("points")
    assert len(accuracy.split()) == STEPS
    loss = page.locator('figure[data-title="Loss"] svg')
    loss.hover()  # the values at the step under the pointer
    expect(loss.locator("text.tooltip")).to_contain_text("step")
    picker = page.locator('figure[data-title="Any logged metric"]')
    picker.locator("select").select_option("mpd/reject/truncated")
    assert len(picker.locator('polyline[data-series="mpd/reject/truncated"]').get_attribute("points").split()) == STEPS


def test_the_reason_filter_shows_exactly_the_samples_of_that_reason(page):
    counts = Counter(r["reason"] for r in RECORDS)
    for reason in ("accepted", "truncated", "on_policy"):  # accepted spans two pages
        select(page, 0, "reason", f"{reason} ({counts[reason]})")
        rows = shown_rows(page, 0, counts[reason])
        assert {row["reason"] for row in rows} == {reason}
        assert [int(row["line"]) for row in rows] == [i + 1 for i, r in enumerate(RECORDS) if r["reason"] == reason]
    assert counts["accepted"] > 50


def test_the_verdict_filter_and_the_text_search(page):
    rejected = [i + 1 for i, r in enumerate(RECORDS) if not r["accepted"]]
    select(page, 0, "verdict", "not accepted")
    rows = shown_rows(page, 0, len(rejected))
    assert [int(row["line"]) for row in rows] == rejected and {row["accepted"] for row in rows} == {"false"}
    select(page, 0, "verdict", "all")
    page.locator("#section-0 .filters input[type=search]").fill(LONG_MARKER.upper())
    (row,) = shown_rows(page, 0, 1)
    assert RECORDS[int(row["line"]) - 1]["student"].count(LONG_MARKER) > 100
    page.locator("#section-0 .filters input[type=search]").fill("let me verify this step")
    rows = shown_rows(page, 0, sum("Let me verify this step" in r["student"] for r in RECORDS))
    assert all("Let me verify this step" in RECORDS[int(row["line"]) - 1]["student"] for row in rows)


def test_an_opened_sample_shows_what_the_rewrite_removed(page):
    line = next(i + 1 for i, r in enumerate(RECORDS) if r["accepted"] and LONG_MARKER not in r["student"])
    record = RECORDS[line - 1]
    page.locator(f'#section-0 tr.row[data-line="{line}"]').click()
    detail = page.locator("#section-0 tr.detail")
    student_pane, rewrite_pane = detail.locator("pre.trace:not(.prompt)").all()
    assert student_pane.inner_text() == record["student"] and rewrite_pane.inner_text() == record["rewrite"]
    removed = " ".join(student_pane.locator(".del").all_inner_texts()).split()
    student_words, rewrite_words = record["student"].split(), record["rewrite"].split()
    assert removed and len(removed) == len(student_words) - lcs_length(student_words, rewrite_words)  # a shortest diff
    assert Counter(removed) <= Counter(student_words)
    assert student_pane.locator(".del").first.evaluate("s => getComputedStyle(s).textDecorationLine") == "line-through"
    expect(detail.locator(".diff-note")).to_contain_text(f"Word diff: struck through in red is what the rewrite removed "
                                                         f"({len(removed)} of {len(student_words)} words)")
    page.locator("#section-0 .filters input[type=search]").fill(LONG_MARKER)
    shown_rows(page, 0, 1)
    page.locator("#section-0 tr.row").click()
    expect(page.locator("#section-0 tr.detail .diff-note")).to_contain_text("Line diff")
    assert page.locator("#section-0 tr.detail .del").count() > 0


def test_an_evaluation_tab_filters_its_samples(page):
    page.locator('.tab[data-section="1"]').click()
    samples = eval_samples(0)
    expect(page.locator("#section-1 table.stats tbody tr")).to_have_count(2)
    assert page.locator("#section-1 figure rect").count() > 0
    select(page, 1, "benchmark", "math500 (6)")
    select(page, 1, "answer", "wrong")
    wrong = [s for s in samples if s["benchmark"] == "math500" and not s["correct"]]
    rows = shown_rows(page, 1, len(wrong))
    assert {(row["benchmark"], row["correct"]) for row in rows} == {("math500", "false")}
    page.locator("#section-1 tr.row").first.click()
    expect(page.locator("#section-1 tr.detail pre.trace")).to_have_text(wrong[0]["response"])


def test_the_comparison_lists_the_flipped_problems_first(page):
    page.locator('.tab[data-section="3"]').click()
    for kind, count in FLIP_COUNTS.items():
        expect(page.locator(f'#section-3 .flip-counts [data-kind="{kind}"]')).to_have_text(f"{kind} {count}")
    rows = shown_rows(page, 3, sum(FLIP_COUNTS.values()))
    kinds = [row["kind"] for row in rows]
    assert kinds == [kind for kind, count in FLIP_COUNTS.items() for _ in range(count)]
    select(page, 3, "answer", f"wrong→right ({FLIP_COUNTS['wrong→right']})")
    shown_rows(page, 3, FLIP_COUNTS["wrong→right"])
    page.locator("#section-3 tr.row").first.click()
    sides = page.locator("#section-3 tr.detail .samples-list")
    expect(sides).to_have_count(2)
    expect(sides.first.locator("h4")).to_have_text("base")
    expect(sides.last.locator("pre.trace").first).to_contain_text("as model 1")
