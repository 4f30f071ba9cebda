"""The web console in a real browser: Debian's Chromium driven by Playwright (its own browser download is never
used). With the test topology running: open the console and see every instance; sign in with the admin token,
start orders, press "Crash" on a catalog instance and watch it go critical and come back after supervisord
restarts it, while the sparkline counts no failed order; open a trace's waterfall; sign out and see the controls
refuse. A screenshot of each state goes under var/console-screens/, and any JavaScript error fails the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from msa_cli.spec import repo_root
from support import ADMIN_TOKEN, Stack, assert_healed

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without the background-networking flags Chromium keeps trying hosts this closed
# network refuses; a fresh profile per run (Playwright makes one) keeps runs apart.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENS = repo_root() / "var" / "console-screens"
VICTIM = "catalog-2"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (deploy/test-tools.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, stack: Stack):
    SCREENS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    # A refused request (the 401 the test provokes) is logged by Chromium as "Failed to load resource": that is the
    # network, not a script error. Any other console error is the page's own.
    page.on("console", lambda m: errors.append(f"console.error: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.errors = errors
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def wait_placed(page, count: int, timeout_s: float = 20.0) -> None:
    """Until the console's load panel counts `count` placed orders. Polled from here: Playwright's
    wait_for_function evaluates a string in the page, which the gateway's CSP (no 'unsafe-eval') refuses."""
    deadline = time.monotonic() + timeout_s
    while (placed := int(page.inner_text("#load-placed") or 0)) < count:
        assert time.monotonic() < deadline, f"{placed} orders placed after {timeout_s:.0f} s, not {count}"
        page.wait_for_timeout(200)


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


def instance(page, name: str, health: str):
    """The instance's row in the table and its node in the graph, once both show `health` (text and attribute)."""
    row = page.locator(f'#instances tr[data-instance="{name}"][data-health="{health}"]')
    row.wait_for()
    page.locator(f'#graph [data-instance="{name}"][data-health="{health}"]').wait_for()
    assert health in row.locator("td.health").inner_text()
    return row


def test_watch_crash_and_recover_an_instance_then_sign_out(page, stack: Stack):
    page.goto(stack.gateway + "/console")  # redirects to /console/
    page.locator('#live[data-state="live"]').wait_for()
    for name in stack.instances:
        instance(page, name, "passing")
    assert page.locator("#broker-link").inner_text() == "up"
    shot(page, "1-every-instance")

    # Sign in with the admin token and start orders.
    page.fill("#secret", ADMIN_TOKEN)
    page.click("#signin-button")
    page.locator('#who[data-operator="admin token"]').wait_for()
    page.fill("#load-rate", "10")
    page.click("#load-apply")
    page.locator('#load-status[data-running="true"]').wait_for()
    wait_placed(page, 10)

    # Crash one catalog instance: it goes critical, then supervisord brings it back.
    try:
        instance(page, VICTIM, "passing").get_by_role("button", name="Crash").click()
        page.locator("#action-log li.did", has_text=f"{VICTIM}: crashing").wait_for()
        instance(page, VICTIM, "critical")
        shot(page, "2-crashed")
        instance(page, VICTIM, "passing")
        page.locator("#changes li", has_text=f"{VICTIM}: critical → passing").wait_for()
        # Orders kept flowing through the other catalog instance: placed more, failed none.
        placed = int(page.inner_text("#load-placed"))
        wait_placed(page, placed + 10)
        assert page.inner_text("#load-failed") == "0", page.inner_text("#load-failures")
        shot(page, "3-recovered")
    finally:
        page.click("#load-stop")
    page.locator('#load-status[data-running="false"]').wait_for()

    # A trace's waterfall: the list, then the rows of one order's trace.
    page.click("#traces-refresh")
    page.locator("#traces tbody tr").first.wait_for()
    page.locator("#traces tbody tr", has_text="order").first.get_by_role("button").click()
    page.locator("#waterfall .span-row").nth(2).wait_for()
    assert "gateway" in page.locator("#waterfall .span-row").first.inner_text()
    shot(page, "4-waterfall")

    # Signed out, the same button is refused, and the page says so.
    page.click("#signout-button")
    page.locator('#who[data-operator=""]').wait_for()
    instance(page, VICTIM, "passing").get_by_role("button", name="Crash").click()
    page.locator("#action-log li.refused", has_text="refused: 401").wait_for()
    page.click('button[data-action="broker"][data-value="cut"]')
    page.locator("#action-log li.refused").nth(1).wait_for()
    assert page.locator("#broker-link").inner_text() == "up"
    shot(page, "5-signed-out-refused")
    # Playwright's sync API holds this thread's event loop; assert_healed runs one of its own.
    with ThreadPoolExecutor(1) as other_thread:
        other_thread.submit(assert_healed, stack).result()


def test_the_api_docs_render_from_the_gateway_alone_under_its_strict_csp(page, stack: Stack):
    """Swagger UI at /docs: every script and style from the gateway's own origin (no CDN; this machine has no
    internet), the Content-Security-Policy refusing inline script and style — and the page still lists the API.
    A CSP violation is a console error, which fails the test (the `page` fixture)."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    answer = page.goto(stack.gateway + "/docs")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    page.get_by_text("/api/orders", exact=True).first.wait_for()
    assert page.locator(".opblock").count() >= 8  # one block per operation of the aggregated document
    assert all(url.startswith(stack.gateway) or url.startswith("data:") for url in requested), requested
    shot(page, "docs")
