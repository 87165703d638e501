"""The dashboard in a real headless Chromium (issue 13), against the embedded service started as `realign serve`
(SQLite, its own Celery worker and local serving backend): log in, submit the synthetic job
(examples/synthetic_realign.json), watch it finish live, see every chart draw, review a pair of a `review: true`
job and continue it, use the playground. Screenshots go to tests/ui/last_screenshots/ (git-ignored).

Chromium is Debian's package (`make test` installs it through .ci/install-chromium); Playwright drives it through
`executable_path`, never `playwright install`. Where there is no Chromium (or no Playwright) the test skips and
says why."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.embedded_service import REPO_ROOT, embedded_service
from trace_engine.synthetic.world import make_world

SHOTS = Path(__file__).resolve().parent / "last_screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT_S = 900  # the synthetic job takes ~3.5 min on an idle 2-vCPU box

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def chromium_path() -> str:
    """Debian's Chromium, or a skip that says why there is none."""
    for candidate in (os.environ.get("REALIGN_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    log = REPO_ROOT / ".venv" / "chromium-install.log"
    why = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    pytest.skip("no Chromium on this machine (make test installs Debian's `chromium` with .ci/install-chromium"
                + (f"; it said: {why[0]}" if why else "") + ")")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`realign serve` embedded on a free port with a fresh data dir: (base URL, the printed API key). Skips
    first, before starting anything, where there is no browser to drive."""
    chromium_path()
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with embedded_service(tmp_path_factory.mktemp("ui") / "state") as served:
        yield served.url, served.key


def shot(page: Any, name: str, full_page: bool = False) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def ink(page: Any, selector: str) -> int:
    """Pixels of the canvas that differ from its white background (0: nothing drawn)."""
    return int(page.evaluate(f"Charts.inkPixels(document.querySelector({json.dumps(selector)}))"))


def wait_js(page: Any, expression: str, timeout_s: float = 60) -> None:
    """Poll a JS expression until truthy. (Playwright's wait_for_function evaluates strings with eval, which the
    page's CSP rightly forbids; page.evaluate runs outside the page's CSP.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(250)


def wait_state(page: Any, states: set[str], timeout_s: float) -> str:
    """Until the job page's state badge (updated live by the SSE stream) shows one of `states`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        badge = page.query_selector("#job-header [data-state]")
        state = badge.get_attribute("data-state") if badge else None
        if state in states:
            return str(state)
        if state in {"failed", "cancelled"}:
            error = page.query_selector("#job-error")
            raise AssertionError(f"job ended {state}: {error.inner_text() if error else ''}")
        page.wait_for_timeout(500)
    shot(page, "timeout", full_page=True)
    raise AssertionError(f"the job page did not reach {states} in {timeout_s} s")


def submit(page: Any, body: dict[str, Any], review: bool = False) -> str:
    page.click("#nav-jobs")
    page.wait_for_selector("#job-body")
    page.fill("#job-body", json.dumps(body))
    if review:
        page.check("#job-review")
    page.click("#submit-job")
    page.wait_for_url("**/ui/#/jobs/job_*")
    page.wait_for_selector("#job-header [data-state]")
    return page.url.rsplit("/", 1)[-1]


def test_the_dashboard_in_chromium(service: tuple[str, str], tmp_path: Path) -> None:
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    url, key = service
    example = json.loads((REPO_ROOT / "examples" / "synthetic_realign.json").read_text())
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        # a persistent context is how Playwright takes a fresh --user-data-dir of ours
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1280, "height": 1000})
        page = context.pages[0] if context.pages else context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        # console errors fail the test, except the browser's own line for an expected 401 (the wrong key) or 404
        # (an artifact the job has not produced yet, which the page shows as "not yet")
        page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error" and not any(f"status of {code}" in msg.text for code in (401, 404)) else None)
        try:
            # log in: a wrong key is refused on the page, the right one is kept in sessionStorage only
            page.goto(f"{url}/ui")
            page.fill("#api-key", "rk_wrong_key")
            page.click("#login")
            page.wait_for_selector("#login-error:has-text('refused')")
            page.fill("#api-key", key)
            page.click("#login")
            page.wait_for_selector("#jobs")
            assert page.evaluate("sessionStorage.getItem('realign.apiKey')") == key
            assert page.evaluate("localStorage.length") == 0 and context.cookies() == []

            job_id = submit(page, example)
            assert page.inner_text("#job-header").startswith(f"Job {job_id}")
            seen_running = wait_state(page, {"training", "evaluating", "succeeded"}, JOB_TIMEOUT_S)
            if seen_running == "training":  # the curves draw while it trains, the header shows the ETA
                wait_js(page, "document.querySelector('#chart-loss').dataset.drawn === '1'", timeout_s=300)
                assert "ETA" in page.inner_text("#job-header")
            shot(page, "1_job_running")

            # meanwhile a small job with review: true parks after triage; review a pair, then continue
            review_body = {**example, "dataset": {**example["dataset"], "n": 48}, "eval": {"suites": []},
                           "method": {**example["method"], "hyperparameters": {
                               **example["method"]["hyperparameters"], "epochs": 1}}}
            review_id = submit(page, review_body, review=True)
            wait_state(page, {"awaiting_review"}, 300)
            page.wait_for_selector("#review-banner")
            page.wait_for_selector("select.review-category")
            total = page.inner_text("#triage-count")
            page.select_option("#filter-category", "RETAIN")  # the filters narrow the list
            assert page.inner_text("#triage-count") != total
            assert {s.input_value() for s in page.query_selector_all("select.review-category")} == {"RETAIN"}
            page.select_option("#filter-category", "")
            clause = page.eval_on_selector("#filter-clause", "s => s.options[1].value")  # the first clause cited
            page.select_option("#filter-clause", clause)
            rows = page.query_selector_all("#triage-rows > tr")
            assert rows and all(clause in row.inner_text() for row in rows), clause
            page.select_option("#filter-clause", "")
            first = next(s for s in page.query_selector_all("select.review-category") if s.input_value() == "RETAIN")
            pair = first.get_attribute("data-pair")
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            counts_before = api.get(f"/v1/jobs/{review_id}").json()["category_counts"]
            first.select_option("INVERT")
            page.wait_for_selector(f"tr[data-pair='{pair}'] >> text=judge: RETAIN")
            review = api.get(f"/v1/jobs/{review_id}/review").json()
            assert [(o["pair_id"], o["category"], o["original_category"]) for o in review["overrides"]] == [
                (pair, "INVERT", "RETAIN")]
            page.evaluate("document.getElementById('review-banner').scrollIntoView({block: 'start'})")
            shot(page, "2_review")
            page.click("#continue-job")
            assert wait_state(page, {"scoring", "training", "succeeded"}, 120) != "awaiting_review"
            assert api.get(f"/v1/jobs/{review_id}").json()["category_counts"]["INVERT"] == counts_before["INVERT"] + 1

            # the main job: watched live until it succeeds, then every chart has drawn
            page.goto(f"{url}/ui/#/jobs/{job_id}")
            wait_state(page, {"succeeded"}, JOB_TIMEOUT_S)
            page.wait_for_selector("#chart-eval")
            wait_js(page, "document.querySelector('#chart-scores').dataset.clampedShare")
            wait_js(page, "document.querySelector('#chart-lr').dataset.drawn === '1'")
            for canvas in ("#chart-categories", "#chart-scores", "#chart-loss", "#chart-rewards", "#chart-margin",
                           "#chart-lr", "#chart-eval"):
                assert page.eval_on_selector(canvas, "c => c.dataset.drawn") == "1", canvas
                assert ink(page, canvas) > 2000, canvas
            assert len(page.query_selector_all("#timeline rect")) == 5  # validate .. evaluate, with durations
            assert " s" in (page.text_content("#timeline") or "")
            share = float(page.eval_on_selector("#chart-scores", "c => c.dataset.clampedShare"))
            assert 0 < share < 1
            assert "clamped to zero" in page.inner_text("#scores-note")
            assert "INVERT" in page.inner_text("#eval") and "[" in page.inner_text("#eval")  # CIs per category
            assert page.query_selector("[data-artifact='adapter']") is not None
            assert "→ succeeded" in page.inner_text("#events")  # the live event stream reached the page
            page.evaluate("window.scrollTo(0, 0)")
            shot(page, "3_job_succeeded")
            shot(page, "3_job_succeeded_full", full_page=True)

            # adapter page: provenance, eval, playground (base vs adapter through the gateway)
            page.click("#job-adapter")
            page.wait_for_selector("#playground")
            assert job_id in page.inner_text("#adapter-provenance")
            assert ink(page, "#chart-adapter-eval") > 2000
            differed = False
            for prompt in [t.prompt for t in make_world(0).test_prompts(6)]:
                page.fill("#playground-prompt", prompt)
                page.click("#run-playground")
                wait_js(page, "!document.querySelector('#run-playground').disabled"
                        " && document.querySelector('#answer-adapter').textContent !== '…'"
                        " && document.querySelector('#answer-base').textContent !== '…'", timeout_s=120)
                base, tuned = page.inner_text("#answer-base"), page.inner_text("#answer-adapter")
                assert base.strip() and tuned.strip(), (base, tuned)
                if base != tuned:
                    differed = True
                    break
            assert differed, "the adapter answered every prompt as the base model did"
            page.query_selector("#playground").scroll_into_view_if_needed()
            shot(page, "4_playground")

            # the reviewed job trained on the reviewer's category: its scored rows (the worker's) carry it
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while (reviewed := api.get(f"/v1/jobs/{review_id}").json())["state"] not in {"succeeded", "failed"}:
                assert time.monotonic() < deadline, reviewed["state"]
                time.sleep(1)
            assert reviewed["state"] == "succeeded", reviewed["error"]
            scored = {s["pair_id"]: s for s in api.get(f"/v1/jobs/{review_id}/scores", params={"limit": 100}).json()["data"]}
            assert scored[pair]["category"] == "INVERT" and scored[pair]["impact_kind"] == "INVERT", scored[pair]

            # an evaluation job's page: its report (base vs adapter, with CIs), no training sections
            evaluation = api.post("/v1/evals", json={
                "model": reviewed["artifacts"]["adapter_id"], "suites": ["tpa"], "n": 6, "max_new_tokens": 24,
                "policy": example["policy"], "judge": {"provider": "synthetic"},
                "dataset": {"type": "synthetic", "seed": 0}})
            assert evaluation.status_code == 202, evaluation.text
            page.goto(f"{url}/ui/#/jobs/{evaluation.json()['id']}")
            wait_state(page, {"succeeded"}, 300)
            wait_js(page, "document.querySelector('#chart-eval') && document.querySelector('#chart-eval').dataset.drawn === '1'")
            assert ink(page, "#chart-eval") > 2000 and "tpa/overall" in page.inner_text("#eval")
            assert not page.is_visible("#chart-loss") and not page.is_visible("#triage")
            shot(page, "5_eval_job")

            page.click("#nav-jobs")
            page.wait_for_selector(f"tr[data-job='{review_id}'] [data-state='succeeded']")
            shot(page, "6_jobs")
            assert problems == [], problems
        except Exception:
            shot(page, "failure", full_page=True)
            raise
        finally:
            context.close()
