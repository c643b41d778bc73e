"""The HTML report as a browser shows it: a small report opened in headless Chromium, where every chart must load,
no script may fail and no table may be wider than the page. Skips where no Chromium is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from suite.case import Case
from suite.measure.settings import RunSettings
from suite.measure.timing import TimingPolicy
from suite.reporting.build import build_report
from suite.results.files import ResultsWriter
from suite.run import config
from suite.run.runner import run_cases

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)")

WINDOW = "1280,900"  # a laptop's browser window: the page's tables must fit it
# First in the page's head, so that it hears every script error from the start.
_LISTEN = """<script>window.pageProblems = [];
addEventListener("error", e => { if (e instanceof ErrorEvent) pageProblems.push("script error: " + e.message); });
addEventListener("unhandledrejection", e => pageProblems.push("script error: " + e.reason));</script>"""
# Last in the body: once everything has loaded, the verdict replaces the page, so that the DOM dumped is short.
_JUDGE = """<script>addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  document.querySelectorAll("img").forEach(image => {
    if (!image.complete || image.naturalWidth === 0) pageProblems.push("image did not load: " + image.alt);
  });
  document.querySelectorAll("table").forEach(table => {
    const box = table.getBoundingClientRect();
    const header = (table.rows[0] || table).textContent.slice(0, 80);
    if (box.right > width + 0.5) pageProblems.push(`table wider than the page (${box.right} > ${width} px): ${header}`);
  });
  document.body.innerHTML = "<pre id='verdict'></pre>";
  document.getElementById("verdict").textContent = JSON.stringify(pageProblems);
});</script>"""


def browser_problems(page: Path, work: Path) -> list[str]:
    """What headless Chromium finds wrong with `page`: images that did not load, script errors, tables wider than
    a WINDOW-wide page. The checking scripts go into a copy of the page in `work`."""
    text = page.read_text(encoding="utf-8")
    checked = work / "checked.html"
    checked.write_text(
        text.replace("<head>", "<head>" + _LISTEN, 1).replace("</body>", _JUDGE + "</body>", 1), encoding="utf-8"
    )
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={work / 'profile'}",
            f"--window-size={WINDOW}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    verdict = re.search(r"<pre id=\"verdict\">(.*?)</pre>", done.stdout, re.DOTALL)
    assert verdict, f"the page gave no verdict (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(verdict.group(1)))


@pytest.fixture(scope="module")
def small_report(tmp_path_factory) -> Path:
    """A report of exact and approximate implementations at two lengths: every kind of table and chart."""
    folder = tmp_path_factory.mktemp("browser")
    results = folder / "cpu.jsonl"
    writer = ResultsWriter(results, {"device": "cpu", "cpu": "test cpu", "torch": "x"}, {"preset": "test"})
    cases = [Case(1, 2, n, 16, "float32", causal, "fwd", "cpu") for n in (16, 32) for causal in (False, True)]
    settings = RunSettings(policies={"cpu": TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=3, budget_s=0.01)})
    impls = [config.build_impl("--impl", spec) for spec in ("naive", "sdpa", "sparse-window:window=8", "linear")]
    run_cases(impls, cases, settings=settings, on_row=writer.append)
    writer.close()
    build_report([results], folder / "report", baseline="naive")
    return folder / "report" / "index.html"


def test_the_report_shows_in_a_browser_without_broken_images_script_errors_or_wide_tables(small_report, tmp_path):
    assert browser_problems(small_report, tmp_path) == []


def test_the_browser_check_finds_a_broken_image_a_script_error_and_a_table_wider_than_the_page(tmp_path):
    wide_row = "".join(f"<td>{'x' * 40}</td>" for _ in range(12))
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'></head><body>"
        "<img alt='broken chart' src='data:image/png;base64,bm90IGEgcG5n'>"
        "<script>undefinedFunction();</script>"
        f"<table><tr>{wide_row}</tr></table></body></html>"
    )
    problems = browser_problems(page, tmp_path)
    assert any(problem.startswith("image did not load: broken chart") for problem in problems)
    assert any(problem.startswith("script error:") and "undefinedFunction" in problem for problem in problems)
    assert any(problem.startswith("table wider than the page") for problem in problems)
