"""How ``mpdistill view`` copes with a long run: writes a rollouts.jsonl of 100,000 samples with
real-model lengths (about 2,000 words per student trace, its rewrite about half of it) and a
train_log.jsonl of one entry per step, builds the page, opens it in headless Chromium and prints
the time each step takes.

    .venv/bin/python scripts/view_scale.py [--samples N] [--words N] [--max-texts N] [--dir DIR]

Needs Playwright (the test extra) and Chromium on PATH (``make test-browser`` installs both). The
run folder is written in a temporary folder and removed afterwards, unless --dir names one to keep.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mpdistill.view import write_view

REASONS = {"accepted": 45, "not_shorter": 25, "answer_changed": 15, "on_policy": 5, "truncated": 5,
           "student_unparsed": 4, "wrong_answer": 1}
VOCABULARY = ("we", "the", "so", "let", "me", "check", "this", "again", "wait", "which", "gives", "then", "is", "of",
              "and", "to", "that", "sum", "product", "equation", "solve", "for", "x", "substitute", "both", "sides",
              "hmm", "actually", "no", "right", "therefore", "value", "=", "+", "-", "*", "/", "2", "3", "5", "7", "12")
POOL = 200  # distinct traces: each sample takes one, so writing 100,000 of them stays fast


def trace_and_rewrite(rng: random.Random, words: int) -> tuple[str, str]:
    """A trace of about ``words`` words in lines of 6-18 words, and a rewrite that keeps about half
    of its lines, each a little shorter: what a teacher's compression looks like."""
    lines = []
    while sum(len(line) for line in lines) < words:
        lines.append([rng.choice(VOCABULARY) for _ in range(rng.randint(6, 18))])
    kept = [[w for w in line if rng.random() < 0.85] for line in lines if rng.random() < 0.5]
    return "\n".join(" ".join(line) for line in lines), "\n".join(" ".join(line) for line in kept)


def write_run(folder: Path, samples: int, words: int, per_step: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = [trace_and_rewrite(rng, words) for _ in range(POOL)]
    encoded = [(json.dumps(student), json.dumps(rewrite), len(student.split()), len(rewrite.split()))
               for student, rewrite in pool]
    reasons = rng.choices(list(REASONS), weights=list(REASONS.values()), k=samples)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "rollouts.jsonl").open("w", encoding="utf-8") as f:
        for i, reason in enumerate(reasons):
            step, index = divmod(i, per_step)
            student, rewrite, student_words, rewrite_words = encoded[rng.randrange(POOL)]
            accepted = reason == "accepted"
            gold = rng.randint(1, 999)
            answer = gold if rng.random() < 0.7 else gold + 1
            # One token is about 1.3 words of English.
            f.write(f'{{"step": {step}, "index": {index}, "prompt": "Problem {i // 8}: find x.", "student": {student}, '
                    f'"rewrite": {"null" if reason == "on_policy" else rewrite}, "accepted": {json.dumps(accepted)}, '
                    f'"reason": "{reason}", "student_tokens": {int(1.3 * student_words)}, '
                    f'"rewrite_tokens": {"null" if reason == "on_policy" else int(1.3 * rewrite_words)}, '
                    f'"trained_on": "{"rewrite" if accepted else "student"}", "route_kept": null, "process": 0, '
                    f'"gold": "{gold}", "student_answer": "{answer}", "student_correct": {json.dumps(answer == gold)}}}\n')
    steps = (samples + per_step - 1) // per_step
    with (folder / "train_log.jsonl").open("w", encoding="utf-8") as f:
        for step in range(1, steps + 1):
            shares = {f"mpd/reject/{r}": rng.random() * share / 100 for r, share in REASONS.items() if r != "accepted"}
            f.write(json.dumps({"loss": 1 / step, "learning_rate": 1e-6, "mpd/acceptance_rate": 0.4 + 0.1 * rng.random(),
                                "mpd/compression_ratio": 0.5, "mpd/student_tokens": 2600.0, **shares, "step": step}) + "\n")


# Resolves once the browser has laid out and painted what the action changed.
AFTER_PAINT = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def timed(locator, action: str, arg=None) -> float:
    """Milliseconds from running ``action`` (JavaScript, on the element ``el``) to the next paint."""
    return locator.evaluate(f"async (el, arg) => {{ const t = performance.now(); {action}; await {AFTER_PAINT}; "
                            "return performance.now() - t; }", arg)


def measure_in_chromium(page_path: Path) -> dict[str, float]:
    """Milliseconds to load the page, apply a reason filter, turn to the next page, open a sample
    (its word diff) and run a text search, each until the browser has painted the result."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        sys.exit("view_scale: no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_path.as_uri())
        page.wait_for_selector("#section-0 tr.row")
        # performance.now() counts from the start of the navigation.
        result = {"load (until the first rows are painted)": page.evaluate(f"async () => {{ await {AFTER_PAINT}; "
                                                                           "return performance.now(); }")}
        section = page.locator("#section-0")
        reason = section.locator(".filters label", has_text="reason").locator("select")
        code = reason.locator("option").nth(2).get_attribute("value")  # the second most common reason
        result["reason filter"] = timed(reason, "el.value = arg; el.dispatchEvent(new Event('change'))", code)
        result["page change"] = timed(section.locator(".pager .next").first, "el.click()")
        result["open a sample (its word diff)"] = timed(section.locator("tr.row").first, "el.click()")
        # The search waits 250 ms after the last key; then it filters and draws.
        searched = timed(section.locator(".filters input[type=search]"), """
            const count = document.querySelector('#section-0 .count');
            const changed = new Promise(r => new MutationObserver((_, o) => { o.disconnect(); r(); })
                .observe(count, { childList: true, subtree: true, attributes: true }));
            el.value = arg; el.dispatchEvent(new Event('input')); await changed""", "substitute both sides hmm")
        result["text search (after its 250 ms wait)"] = searched - 250
        browser.close()
    if errors:
        sys.exit(f"view_scale: the page raised {errors}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=2000, help="Words per student trace.")
    parser.add_argument("--per-step", type=int, default=64, help="Samples per step.")
    parser.add_argument("--max-texts", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="Write the run here and keep it.")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="view-scale-")) / "run"
    try:
        start = time.perf_counter()
        write_run(folder, args.samples, args.words, args.per_step)
        size = (folder / "rollouts.jsonl").stat().st_size
        print(f"rollouts.jsonl: {args.samples:,} samples of about {args.words:,} words, {size / 1e9:.2f} GB "
              f"(written in {time.perf_counter() - start:.1f} s)")
        start = time.perf_counter()
        page = write_view([folder], max_texts=args.max_texts)
        print(f"build: {time.perf_counter() - start:.1f} s; {page.name}: {page.stat().st_size / 1e6:.1f} MB with the "
              f"texts of {min(args.max_texts, args.samples):,} samples")
        for what, ms in measure_in_chromium(page).items():
            print(f"chromium, {what}: {ms:,.0f} ms")
    finally:
        if args.dir is None:
            shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
