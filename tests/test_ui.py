"""The Prefect UI in a real browser: re-run a stage from the `mucode-stage` form.

Debian's chromium (/usr/bin/chromium, installed by .ci/run) driven by Playwright, with no
browser download. The test starts a server and worker (scripts/prefect-server.sh), deploys
`mucode-stage/process`, and does what a user does: find the deployment, Run → Custom run,
fill the form (the problems stage of the smoke config, 2 problems, refresh on), submit, wait
for Completed on the run's page, and read the run's summary artifact. A screenshot of the
filled form goes to $MUCODE_UI_SCREENSHOTS (default: the test's temporary directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from prefect_support import PREFECT, REPO, api, flow_run_artifacts

CHROMIUM = "/usr/bin/chromium"
# What works in a container without a GPU, a sandbox or network: no first-run UI, no
# background traffic to Google, no component updates.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 120_000  # the UI's first load is slow on a busy 2-core machine


@pytest.fixture(scope="module")
def stage_deployed(prefect_server):
    done = subprocess.run([*PREFECT, "--no-prompt", "deploy", "-n", "mucode-stage/process"], cwd=REPO,
                          env=prefect_server, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return prefect_server


@pytest.fixture
def browser_page(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 2000})
        try:
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
        finally:
            context.close()


def form_field(page, description: str):
    """The form property whose help text (the flow docstring's Args) contains `description`."""
    return page.locator(".schema-form-property").filter(has_text=description).last


@pytest.mark.server
def test_stage_rerun_from_the_ui_form_completes_with_a_summary(stage_deployed, browser_page, tmp_path):
    from playwright.sync_api import expect

    page, env = browser_page, stage_deployed
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    run_dir = tmp_path / "runs"
    started = time.perf_counter()

    page.goto(f"{ui}/deployments")
    page.get_by_placeholder("Search deployments").fill("mucode-stage")
    # The table re-renders when the search applies: click only once the other flows are gone.
    expect(page.get_by_role("row").filter(has_text="mucode-train")).to_have_count(0)
    page.get_by_role("row").filter(has_text="mucode-stage").filter(has_text="process") \
        .get_by_role("link", name="process").click()
    page.wait_for_url("**/deployments/deployment/**")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()

    # stage: a drop-down of the StageName literal (the list opens from the keyboard).
    form_field(page, "the stage to run").locator(".p-select-button__control").focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name="problems", exact=True).click()
    # config: the drop-down of configs/*.yaml, with smoke.yaml preselected.
    assert "configs/smoke.yaml" in form_field(page, "a config of configs/").inner_text()
    overrides = form_field(page, "strings applied on top")
    overrides.get_by_role("button", name="list", exact=True).click()
    for value in (f"run_dir={run_dir}", "data.train_limit=2"):
        overrides.get_by_role("button", name="Add item").click()
        overrides.locator("textarea").last.fill(value)
    refresh = form_field(page, "recompute even when the result is cached").get_by_role("switch")
    refresh.click()
    expect(refresh).to_have_attribute("aria-checked", "true")  # waits: the switch re-renders after the click
    shots = Path(os.environ.get("MUCODE_UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "mucode-stage-form.png"), full_page=True)
    for _ in range(5):  # a busy SQLite server can answer 503 ("database is locked"): submit again, as a user would
        with page.expect_response("**/create_flow_run") as created:
            page.get_by_role("button", name="Submit").click()
        if created.value.status != 503:
            break
        page.wait_for_timeout(3000)
    assert created.value.status == 201, created.value.text()
    flow_run_id = created.value.json()["id"]
    page.goto(f"{ui}/runs/flow-run/{flow_run_id}")  # the page the toast after submitting links to
    deadline = time.monotonic() + 600
    while not page.locator(".state-badge").filter(has_text="Completed").count():
        assert time.monotonic() < deadline, f"flow run {flow_run_id} did not complete within 600 s"
        assert not page.locator(".state-badge").filter(has_text="Failed").count(), f"flow run {flow_run_id} failed"
        page.wait_for_timeout(2000)
        page.reload()
    elapsed = time.perf_counter() - started
    print(f"browser test: form filled, submitted and Completed in {elapsed:.1f} s")

    with api(env):
        artifacts = {artifact.key: artifact for artifact in flow_run_artifacts(flow_run_id) if artifact.key}
    summary = json.loads(artifacts["smoke-summary"].data)
    [row] = summary
    assert row["stage"] == "problems-mbpp" and row["state"] == "computed" and row["rows"] == 2
    assert Path(row["artifact"]).is_file() and Path(row["artifact"]).is_relative_to(run_dir)
    page.locator("li.p-tab", has_text="Artifacts").click()  # the run's page lists the table under "Flow run"
    page.get_by_text("smoke-summary").first.wait_for()
