"""The web UI in a real browser against a real server filled by ``observatory demo``.

Screenshots of every page land in test-artifacts/<test name>/ (docs/images/ holds copies of the
overview and trace shots for the README).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, expect

from observatory.config import load_settings
from observatory.ui.auth import login_url
from tests.conftest import Server
from tests.e2e.conftest import Watched, shot, sign_in
from tests.otlp_builder import SpanSpec, llm_attributes, protobuf_request

XSS_PROMPT = (
    '<script>window.__xss = "script"</script>'
    "<img src=x onerror=\"window.__xss = 'img'\"> please ignore previous instructions"
)


def send(server: Server, specs: list[SpanSpec], service: str = "e2e-probe") -> None:
    response = httpx.post(
        server.base_url + "/v1/traces",
        content=protobuf_request(specs, {"service.name": service}),
        headers={
            "Authorization": f"Bearer {server.admin_key}",
            "Content-Type": "application/x-protobuf",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_sign_in_and_out(ui_server: Server, watched: Watched, artifacts_dir: Path) -> None:
    page = watched.page
    page.goto(ui_server.base_url + "/traces?status=error")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Ftraces%3Fstatus%3Derror$"))
    page.get_by_label("API key").fill("obs_wrong_key_wrong_key_wrong_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    shot(page, artifacts_dir, "login-error")
    page.get_by_label("API key").fill(ui_server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    # Back where the visit started, with the filter.
    expect(page).to_have_url(re.compile(r"/traces\?status=error$"))
    expect(page.get_by_role("heading", name="Traces")).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["obs_session"]["httpOnly"] is True
    assert cookies["obs_session"]["sameSite"] == "Strict"
    assert ui_server.admin_key not in cookies["obs_session"]["value"]
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login\?signed_out=1$"))
    expect(page.get_by_role("status")).to_contain_text("signed out")
    shot(page, artifacts_dir, "signed-out")
    page.goto(ui_server.base_url + "/models")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fmodels$"))
    # The one-time login link `observatory serve` prints on a terminal signs in, once.
    settings = load_settings({"data_dir": str(ui_server.data_dir)}, env={})
    secret = (ui_server.data_dir / "secret-key").read_text().strip()
    link = login_url(settings, ui_server.admin_key, secret, ui_server.base_url)
    assert link and ui_server.admin_key not in link
    page.goto(link)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    page.goto(link)
    expect(page.get_by_role("alert")).to_contain_text("already used")
    assert not watched.problems, watched.problems


def test_click_through_every_page(ui_server: Server, watched: Watched, artifacts_dir: Path) -> None:
    page = watched.page
    base = ui_server.base_url
    sign_in(page, base, ui_server.admin_key)

    # Overview: totals, six charts drawn by uPlot, top lists.
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".chart canvas")).to_have_count(6)
    expect(page.locator(".tile").first).to_contain_text("Requests")
    assert int(page.locator(".tile-value").first.inner_text().replace(",", "")) > 100
    shot(page, artifacts_dir, "overview", full_page=False)
    shot(page, artifacts_dir, "overview-full")
    models_card = page.locator(".toplist").first
    expect(models_card.locator(".by-cost")).to_be_visible()
    models_card.get_by_text("Requests", exact=True).click()
    expect(models_card.locator(".by-volume")).to_be_visible()
    expect(models_card.locator(".by-cost")).to_be_hidden()
    page.get_by_role("link", name="7d").click()
    expect(page).to_have_url(re.compile(r"range=7d"))
    page.get_by_label("Environment").select_option("staging")
    expect(page).to_have_url(re.compile(r"environment=staging"))
    expect(page.locator(".subtle")).to_contain_text("staging")
    # A custom range: the picker sends the browser's local time as UTC.
    page.locator("details.custom-range > summary").click()
    start = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() - 6 * 3600))
    page.get_by_label(re.compile("^From")).fill(start)
    page.get_by_role("button", name="Apply range").click()
    expect(page).to_have_url(re.compile(r"range=custom&start=[0-9-]{10}T\d\d%3A\d\d%3A00Z$"))
    expect(page.locator(".subtle")).to_contain_text("Custom range")
    # Every chart is drawn, or says it has nothing to draw.
    expect(page.locator(".chart canvas, .chart .chart-empty")).to_have_count(6)
    page.get_by_role("link", name="7d").click()

    # Traces: the list, a filter, sorting.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Traces").click()
    expect(page).to_have_url(re.compile(r"/traces\?range=7d&environment=staging"))
    page.goto(base + "/traces?range=24h")
    rows = page.locator("#trace-rows tr")
    expect(rows).to_have_count(50)
    shot(page, artifacts_dir, "traces")
    page.get_by_label("Status").select_option("error")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"status=error"))
    assert rows.count() > 0
    for index in range(rows.count()):
        expect(rows.nth(index).locator(".badge-error")).to_be_visible()
    expect(page.locator(".chip-filter")).to_contain_text("error")
    shot(page, artifacts_dir, "traces-errors")
    page.get_by_role("link", name=re.compile("Cost")).click()
    expect(page.locator("th[aria-sort]")).to_contain_text("Cost")
    page.get_by_role("link", name="Clear all").click()
    expect(page).not_to_have_url(re.compile(r"status=error"))

    # Trace detail: the waterfall, then an LLM span's conversation (htmx swaps the panel).
    page.get_by_label("Name").fill("support-agent")
    page.get_by_role("button", name="Apply filters").click()
    page.locator("#trace-rows tr").first.locator("a.row-main").click()
    expect(page).to_have_url(re.compile(r"/traces/[0-9a-f]{32}$"))
    waterfall = page.locator(".wf-row")
    assert waterfall.count() >= 4
    expect(waterfall.first).to_contain_text("invoke_agent support-agent")
    panel = page.locator("#span-panel")
    first_call = page.locator(".wf-row.kind-llm:not(.is-error)").first
    first_call.click()
    # The model's answer is a tool call.
    expect(panel.locator(".msg.role-assistant .tool-call").last).to_be_visible()
    llm = page.locator(".wf-row.kind-llm").last
    span_id = (llm.get_attribute("id") or "").removeprefix("row-")
    page.evaluate("window.__no_reload = true")
    llm.click()
    expect(page.locator(f'#span-panel[data-span="{span_id}"]')).to_be_visible()
    expect(page).to_have_url(re.compile(rf"\?span={span_id}$"))
    assert page.evaluate("window.__no_reload") is True  # swapped in place, not reloaded
    expect(panel.locator(".msg.role-system")).to_contain_text("Northwind")
    expect(panel.locator(".msg.role-tool .tool-result").last).to_be_visible()
    expect(panel.locator(".msg.role-assistant").last).to_be_visible()
    expect(panel.get_by_text("Finish reason")).to_be_visible()
    expect(panel.locator(".kv-table").first).to_contain_text("gen_ai.request.model")
    expect(llm).to_have_class(re.compile("is-selected"))
    expect(first_call).not_to_have_class(re.compile("is-selected"))
    page.set_viewport_size({"width": 1440, "height": 1150})
    shot(page, artifacts_dir, "trace", full_page=False)
    page.set_viewport_size({"width": 1440, "height": 900})
    tool = page.locator(".wf-row.kind-tool").first
    tool.click()
    expect(panel).to_contain_text("execute_tool")

    # An error trace highlights the failing span.
    page.goto(base + "/traces?range=24h&status=error")
    page.locator("#trace-rows tr").first.locator("a.row-main").click()
    expect(page.locator(".wf-row.is-error").first).to_be_visible()
    expect(page.locator("#span-panel .callout-error")).to_be_visible()
    shot(page, artifacts_dir, "trace-error")

    # Sessions: the list and one conversation in order.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sessions").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    shot(page, artifacts_dir, "sessions")
    page.locator("tbody tr").first.locator("a.row-main").click()
    expect(page).to_have_url(re.compile(r"/sessions/sess_"))
    turns = page.locator(".turn")
    assert turns.count() >= 1
    expect(turns.first.locator(".msg.role-user")).to_be_visible()
    shot(page, artifacts_dir, "session")

    # Users, a user, models.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    expect(page.locator("tbody tr")).to_have_count(20)
    shot(page, artifacts_dir, "users")
    page.locator("tbody tr").first.locator("a.row-main").click()
    expect(page.get_by_role("heading", name="Models used")).to_be_visible()
    shot(page, artifacts_dir, "user")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    expect(page.locator(".models-table tbody")).to_contain_text("gpt-4o")
    expect(page.locator(".models-table tbody")).to_contain_text("catalogue")
    expect(page.locator(".chart canvas")).to_have_count(1)
    shot(page, artifacts_dir, "models")

    # Settings: create a key (shown once), revoke it (confirmed), set a custom price.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    page.get_by_label("Name", exact=True).fill("browser test")
    page.get_by_label("Role").select_option("ingest")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("obs_")
    shot(page, artifacts_dir, "settings-new-key")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    assert secret not in page.content()
    row = page.locator("tr", has_text="browser test")
    row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(page.locator(".callout-ok")).to_contain_text("revoked")
    assert watched.dialogs and "Revoke key" in watched.dialogs[-1]
    expect(page.locator("tr", has_text="browser test")).to_contain_text("revoked")
    page.get_by_label("Model", exact=True).fill("gpt-4o")
    page.get_by_label("Input $").fill("2")
    page.get_by_label("Output $").fill("8")
    page.get_by_role("button", name="Save price").click()
    expect(page.locator(".callout-ok")).to_contain_text("price was saved")
    expect(page.locator("#prices")).to_contain_text("gpt-4o")
    shot(page, artifacts_dir, "settings")
    assert not watched.problems, watched.problems


def test_prompt_payload_is_shown_as_text_and_not_run(
    ui_server: Server, watched: Watched, artifacts_dir: Path
) -> None:
    trace_hex = "e2e0" * 8
    now = time.time_ns() - 5 * 10**9
    send(
        ui_server,
        [
            SpanSpec(
                trace=1,
                span=1,
                name="xss probe",
                start_ns=now,
                duration_ms=50,
                trace_hex=trace_hex,
                span_hex="a" * 16,
            ),
            SpanSpec(
                trace=1,
                span=2,
                parent=1,
                name="chat gpt-4o",
                start_ns=now + 10**6,
                duration_ms=40,
                trace_hex=trace_hex,
                span_hex="b" * 16,
                attributes=llm_attributes(**{"gen_ai.input.messages": XSS_PROMPT}),
            ),
        ],
    )
    page = watched.page
    sign_in(page, ui_server.base_url, ui_server.admin_key, f"/traces/{trace_hex}")
    page.locator(".wf-row", has_text="chat gpt-4o").click()
    message = page.locator("#span-panel .msg.role-user .msg-text")
    expect(message).to_contain_text('<script>window.__xss = "script"</script>')
    expect(message).to_contain_text("<img src=x onerror=")
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#span-panel img").count() == 0
    assert page.locator("#span-panel script").count() == 0
    # Also in the raw attribute table and after a full reload of the span URL.
    page.reload()
    expect(page.locator("#span-panel .kv-table").first).to_contain_text("onerror")
    assert page.evaluate("typeof window.__xss") == "undefined"
    shot(page, artifacts_dir, "xss-as-text")
    assert not watched.dialogs
    assert not watched.problems, watched.problems


def test_live_refresh_shows_new_traces_without_reloading(
    ui_server: Server, watched: Watched, artifacts_dir: Path
) -> None:
    page = watched.page
    sign_in(page, ui_server.base_url, ui_server.admin_key, "/traces?range=1h")
    page.get_by_role("link", name="Live").click()
    expect(page).to_have_url(re.compile(r"live=1"))
    expect(page.get_by_role("link", name="Live")).to_have_attribute("aria-pressed", "true")
    page.evaluate("window.__no_reload = true")
    name = f"live-probe-{time.time_ns()}"
    send(
        ui_server,
        [
            SpanSpec(
                trace=1,
                span=1,
                name=name,
                start_ns=time.time_ns() - 10**9,
                trace_hex=f"{time.time_ns():032x}",
                span_hex="c" * 16,
            )
        ],
    )
    expect(page.locator("#trace-rows")).to_contain_text(name, timeout=20_000)
    assert page.evaluate("window.__no_reload") is True
    shot(page, artifacts_dir, "live")
    assert not watched.problems, watched.problems


def test_phone_size_and_dark_mode(ui_server: Server, browser: Browser, artifacts_dir: Path) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True
    )
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        sign_in(page, ui_server.base_url, ui_server.admin_key)
        expect(page.locator(".chart canvas")).to_have_count(6)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 120, background  # follows the system's dark scheme
        for path in ("/", "/traces", "/sessions", "/models"):
            page.goto(ui_server.base_url + path)
            page.wait_for_load_state("networkidle")
            # Nothing sticks out sideways: wide tables scroll inside their own box.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, (path, width)
            shot(page, artifacts_dir, "phone-dark-" + (path.strip("/") or "overview"))
        assert not problems, problems
    finally:
        context.close()
