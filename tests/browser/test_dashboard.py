"""The dashboard in headless chromium against a real `amelia serve` on PostgreSQL.

Shown here: every page loads with no console error (and is photographed for the README);
a saved setting survives a reload and a bad one is refused in place; a blocked workflow
approved from its page moves on to completed; an event emitted on the server appears on an
open workflow page without a reload; the costs chart draws the seeded usage bar by bar;
workflows page with cursor paging and filters; profiles and prompts edited through the UI.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.workflow_fixtures import git_worktree
from tests.browser.conftest import run_async, screenshot
from tests.browser.seed import Seeded, seed
from tests.e2e.serve_process import ServeProcess

pytestmark = pytest.mark.slow

GOAL = "Expose GET /hello returning a greeting"
SIX = Decimal("0.000001")


@pytest.fixture(scope="module")
def seeded(server: ServeProcess, browser_database_url: str) -> Seeded:
    return run_async(lambda: seed(browser_database_url))


def open_page(page: Any, route: str, ready: str) -> None:
    """Load `/#<route>` and wait until the page rendered `ready`."""
    page.goto(f"/#{route}")
    page.wait_for_selector(ready)
    rendered(page)


def rendered(page: Any) -> None:
    """Wait until the view shows the route in the address bar (after an in-page navigation)."""
    page.wait_for_function(
        "() => document.getElementById('view').dataset.rendered === location.hash"
    )


def api(server: ServeProcess, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{server.url}{path}", timeout=30, **kwargs)
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return None if response.status_code == 204 else response.json()


def wait_for_status(server: ServeProcess, workflow_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = api(server, "GET", f"/api/workflows/{workflow_id}")
        if body["status"] in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"workflow is {body.get('status')}, expected one of {statuses}")


def create_workflow(server: ServeProcess, worktree: Path, issue: str, **fields: Any) -> str:
    body = {"issue_id": issue, "worktree_path": str(git_worktree(worktree)), **fields}
    return str(api(server, "POST", "/api/workflows", json=body)["id"])


def test_every_page_loads_without_console_errors(
    page: Any, server: ServeProcess, seeded: Seeded
) -> None:
    pages = [
        ("/workflows", "table.workflows tbody tr[data-id]", "workflows"),
        (f"/workflows/{seeded.with_usage}", "table.usage-breakdown", "workflow-completed"),
        ("/costs", "svg.cost-chart rect.bar", "costs"),
        ("/settings", "#setting-max_concurrent", None),
        ("/profiles", "table.profiles tr[data-id='dev']", "profiles"),
        ("/prompts", ".prompt-detail .default-text", "prompts"),
    ]
    for route, ready, name in pages:
        started = time.perf_counter()
        open_page(page, route, ready)
        elapsed = time.perf_counter() - started
        assert page.locator(".page-error").count() == 0, route
        if name:
            screenshot(page, name, full_page=name == "costs")
        print(f"{route}: rendered in {elapsed * 1000:.0f} ms")
    # The workflow page shows the seeded plan and usage; the list links to it.
    open_page(page, f"/workflows/{seeded.with_usage}", "table.usage-breakdown")
    assert page.locator(".markdown").inner_text().startswith("Add rate limiting")
    assert page.locator("table.usage-breakdown tbody tr").count() == 3
    assert page.problems.errors == []


def test_root_opens_the_workflows_page(page: Any, server: ServeProcess) -> None:
    # Navigation start to the first rendered row, measured by the browser itself.
    page.goto("/")
    page.wait_for_selector("table.workflows tbody tr")
    assert page.url.endswith("#/workflows")
    rendered = page.evaluate("performance.now()")
    print(f"first page rendered {rendered:.0f} ms after navigation start")
    assert page.problems.errors == []


def test_workflow_list_filters_and_pages(
    page: Any, server: ServeProcess, seeded: Seeded, tmp_path: Path
) -> None:
    listed = api(server, "GET", "/api/workflows", params={"limit": 100})
    every = {w["id"] for w in listed["workflows"]}
    assert listed["total"] > 20
    open_page(page, "/workflows", "table.workflows tbody tr[data-id]")
    first = page.locator("table.workflows tbody tr[data-id]")
    assert first.count() == 20
    first_ids = set(first.evaluate_all("rows => rows.map(r => r.dataset.id)"))
    page.locator("button.next").click()
    page.wait_for_function("() => location.hash.includes('cursor=')")
    rendered(page)
    second_ids = set(
        page.locator("table.workflows tbody tr[data-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"
        )
    )
    assert first_ids.isdisjoint(second_ids)
    assert listed["total"] <= 40  # two pages hold every workflow
    assert first_ids | second_ids == every

    page.locator("select[name=status]").select_option("failed")
    page.wait_for_function("() => location.hash.includes('status=failed')")
    rendered(page)
    statuses = page.locator("table.workflows tbody .badge").evaluate_all(
        "badges => badges.map(b => b.dataset.status)"
    )
    failed = api(server, "GET", "/api/workflows", params={"status": "failed"})
    assert statuses == ["failed"] * failed["total"]

    # The list follows new workflows live (no reload). Queued ones have not started, so
    # they sort after every started one: watch the pending filter.
    open_page(page, "/workflows?status=pending", "table.workflows tbody tr")
    page.wait_for_selector("#live-status[data-state=live]")
    page.evaluate("window.__sameDocument = true")
    created = create_workflow(server, tmp_path / "repo", "ISSUE-LIVE", start=False)
    page.wait_for_selector(f"table.workflows tr[data-id='{created}']", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.problems.errors == []


def test_setting_saved_survives_a_reload(page: Any, server: ServeProcess) -> None:
    open_page(page, "/settings", "#setting-max_concurrent")
    field = page.locator("#setting-max_concurrent")

    # A value the server refuses: its message appears under the field, nothing is stored.
    field.fill("0")
    page.locator("button[type=submit]").click()
    error = page.locator("#setting-max_concurrent-error")
    error.wait_for(state="visible")
    assert "greater than or equal to 1" in error.inner_text()
    screenshot(page, "settings")
    assert api(server, "GET", "/api/settings")["max_concurrent"] != 0

    field.fill("7")
    page.locator("#setting-log_retention_days").fill("45")
    page.locator("button[type=submit]").click()
    page.wait_for_selector("#toast.show >> text=Settings saved")
    assert error.is_hidden()

    page.reload()
    page.wait_for_selector("#setting-max_concurrent")
    assert page.locator("#setting-max_concurrent").input_value() == "7"
    assert page.locator("#setting-log_retention_days").input_value() == "45"
    assert api(server, "GET", "/api/settings")["max_concurrent"] == 7
    # The refused save is the only error logged (the browser reports the 422 response).
    assert all("422" in e for e in page.problems.errors), page.problems.errors


def test_blocked_workflow_approved_from_its_page_moves_on(
    page: Any, server: ServeProcess, tmp_path: Path
) -> None:
    workflow_id = create_workflow(server, tmp_path / "repo", "ISSUE-42", task_title="Greeting")
    wait_for_status(server, workflow_id, "blocked")

    open_page(page, f"/workflows/{workflow_id}", "button[data-action=approve]")
    assert page.locator(".page-head .badge").get_attribute("data-status") == "blocked"
    assert GOAL in page.locator(".markdown").inner_text()
    assert page.locator(".timeline li[data-type=approval_required]").count() == 1
    screenshot(page, "workflow")
    page.evaluate("window.__sameDocument = true")

    page.locator("button[data-action=approve]").click()
    page.wait_for_selector(".page-head .badge[data-status=completed]", timeout=30_000)
    page.wait_for_selector(".timeline li[data-type=workflow_completed]")
    assert page.locator(".timeline li[data-type=approval_granted]").count() == 1
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("button[data-action]").count() == 0  # nothing left to do
    assert wait_for_status(server, workflow_id, "completed")["completed_at"] is not None
    assert page.problems.errors == []


def test_queued_workflow_started_then_rejected_with_feedback(
    page: Any, server: ServeProcess, tmp_path: Path
) -> None:
    workflow_id = create_workflow(server, tmp_path / "repo", "ISSUE-9", start=False)
    open_page(page, f"/workflows/{workflow_id}", "button[data-action=start]")
    assert page.locator(".page-head .badge").get_attribute("data-status") == "pending"

    # Start: the architect plans and the page follows the run to the approval gate.
    page.locator("button[data-action=start]").click()
    page.wait_for_selector("button[data-action=reject]", timeout=30_000)
    assert page.locator(".page-head .badge").get_attribute("data-status") == "blocked"

    page.locator("button[data-action=reject]").click()
    page.locator("form.reject-form textarea").fill("Split task 1 in two")
    page.locator("form.reject-form button[type=submit]").click()
    page.wait_for_selector(".page-head .badge[data-status=failed]")
    page.wait_for_selector(".timeline li[data-type=approval_rejected]")
    assert "Split task 1 in two" in page.locator(".failure").inner_text()
    assert page.locator("button[data-action=resume]").count() == 1
    body = wait_for_status(server, workflow_id, "failed")
    assert "Split task 1 in two" in body["failure_reason"]
    assert page.problems.errors == []


def test_event_emitted_on_the_server_appears_without_a_reload(
    page: Any, server: ServeProcess, tmp_path: Path
) -> None:
    workflow_id = create_workflow(server, tmp_path / "repo", "ISSUE-7", start=False)
    open_page(page, f"/workflows/{workflow_id}", "button[data-action=start]")
    page.wait_for_selector("#live-status[data-state=live]")
    page.evaluate("window.__sameDocument = true")
    assert page.locator(".timeline li[data-type=workflow_cancelled]").count() == 0

    # Another client acts: the server emits workflow_cancelled to the open page.
    api(server, "POST", f"/api/workflows/{workflow_id}/cancel")
    page.wait_for_selector(".timeline li[data-type=workflow_cancelled]", timeout=10_000)
    page.wait_for_selector(".page-head .badge[data-status=cancelled]")
    assert page.evaluate("window.__sameDocument") is True
    assert page.problems.errors == []


def drawn_bars(page: Any) -> dict[tuple[str, str], Decimal]:
    """(day, model) -> cost of every bar the chart drew (each must have a height)."""
    bars = page.locator("svg.cost-chart rect.bar").evaluate_all(
        "bars => bars.map(b => [b.dataset.date, b.dataset.model, b.dataset.cost,"
        " Number(b.getAttribute('height'))])"
    )
    assert all(height > 0 for *_, height in bars)
    drawn = {(day, model): Decimal(cost).quantize(SIX) for day, model, cost, _ in bars}
    assert len(drawn) == len(bars)  # one bar per (day, model)
    return drawn


def expected_bars(usage: dict[str, Any]) -> dict[tuple[str, str], Decimal]:
    return {
        (point["date"], model): Decimal(str(cost)).quantize(SIX)
        for point in usage["trend"]
        for model, cost in point["by_model"].items()
        if cost > 0
    }


def test_costs_chart_draws_the_seeded_usage(
    page: Any, server: ServeProcess, seeded: Seeded
) -> None:
    # 90 days hold every seeded row: each (day, model) is a bar of exactly its cost.
    open_page(page, "/costs?preset=90d", "svg.cost-chart rect.bar")
    drawn = drawn_bars(page)
    for key, cost in seeded.costs.items():
        assert drawn.get(key) == cost, key
    assert drawn == expected_bars(api(server, "GET", "/api/usage", params={"preset": "90d"}))

    # 30 days: the bars, cards and per-model table agree with the API; the older rows are
    # the previous period the total is compared with.
    page.locator("button[data-preset='30d']").click()
    page.wait_for_function("() => location.hash.includes('preset=30d')")
    rendered(page)
    usage = api(server, "GET", "/api/usage", params={"preset": "30d"})
    assert drawn_bars(page) == expected_bars(usage)
    summary = usage["summary"]
    assert summary["previous_period_cost_usd"] > 0
    assert (
        page.locator(".card.total-cost .value").inner_text() == f"${summary['total_cost_usd']:,.2f}"
    )
    assert "vs previous period" in page.locator(".card.total-cost .delta").inner_text()
    models = page.locator("table.by-model tbody tr[data-model]")
    assert models.evaluate_all("rows => rows.map(r => r.dataset.model)") == [
        m["model"] for m in sorted(usage["by_model"], key=lambda m: -m["cost_usd"])
    ]
    assert page.locator("table.by-model svg.sparkline polyline").count() == models.count()

    # A chosen range: two days of seeded usage only.
    days = sorted({day for day, _ in seeded.costs})[-2:]
    page.locator("input[name=start]").fill(days[0])
    page.locator("input[name=end]").fill(days[1])
    page.locator("button:has-text('Apply range')").click()
    page.wait_for_function("() => location.hash.includes('start=')")
    rendered(page)
    chosen = {key: cost for key, cost in seeded.costs.items() if key[0] in days}
    assert drawn_bars(page) == chosen
    assert page.problems.errors == []


def test_profiles_create_edit_activate_delete(page: Any, server: ServeProcess) -> None:
    name = "staging"
    open_page(page, "/profiles", "table.profiles")
    page.locator("button.new-profile").click()
    form = page.locator("form.profile-form")
    form.locator("input[name=id]").fill(name)
    form.locator("input[name=working_dir]").fill("/srv/repo")
    form.locator(".agent-model").first.fill("gpt-5")
    form.locator("button[type=submit]").click()
    row = page.locator(f"table.profiles tr[data-id='{name}']")
    row.wait_for()
    assert api(server, "GET", f"/api/profiles/{name}")["agents"]["developer"]["model"] == "gpt-5"

    row.locator("button.edit").click()
    form = page.locator("form.profile-form")
    form.locator("button:has-text('Add agent')").click()
    new_agent = form.locator(".agent-row").last
    new_agent.locator(".agent-name").fill("reviewer")
    new_agent.locator(".agent-driver").select_option("cli")
    new_agent.locator(".agent-model").fill("sonnet")
    new_agent.locator(".agent-options").fill('{"timeout": 30}')
    screenshot(page, "profile-edit")
    form.locator("button[type=submit]").click()
    page.wait_for_selector(f"table.profiles tr[data-id='{name}'] >> text=reviewer: cli · sonnet")
    stored = api(server, "GET", f"/api/profiles/{name}")
    assert stored["agents"]["reviewer"] == {
        "driver": "cli",
        "model": "sonnet",
        "options": {"timeout": 30},
    }

    row.locator("button.activate").click()
    page.wait_for_selector(f"#active-profile >> text={name}")
    assert api(server, "GET", f"/api/profiles/{name}")["is_active"] is True
    page.locator("table.profiles tr[data-id='dev'] button.activate").click()
    page.wait_for_selector("#active-profile >> text=dev")

    delete = row.locator("button.danger")
    delete.click()
    delete.click()  # the second click confirms
    row.wait_for(state="detached")
    assert httpx.get(f"{server.url}/api/profiles/{name}", timeout=10).status_code == 404
    assert page.problems.errors == []


def test_prompt_new_version_and_reset(page: Any, server: ServeProcess) -> None:
    prompts = api(server, "GET", "/api/prompts")["prompts"]
    prompt = prompts[0]["id"]
    default = api(server, "GET", f"/api/prompts/{prompt}/default")["content"]
    open_page(page, f"/prompts/{prompt}", ".prompt-detail .default-text")
    assert page.locator(".default-text").text_content() == default

    text = f"You are careful. Marker {uuid.uuid4().hex[:8]}."
    page.locator("form.new-version textarea").fill(text)
    page.locator("form.new-version input[name=change_note]").fill("Shorter")
    page.locator("form.new-version button[type=submit]").click()
    page.wait_for_selector(f".current-text >> text={text}")
    assert page.locator("table.versions tbody tr").count() >= 1
    detail = api(server, "GET", f"/api/prompts/{prompt}")
    assert detail["current_version_id"] is not None

    page.locator("button.reset").click()
    page.wait_for_selector("h3 >> text=Current: the default")
    assert api(server, "GET", f"/api/prompts/{prompt}")["current_version_id"] is None
    assert page.problems.errors == []
