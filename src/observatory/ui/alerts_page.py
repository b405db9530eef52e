"""The Alerts page: the project's alert rules with their state and history (every signed-in key),
and forms to create, test and delete rules (admin keys; CSRF-protected and audited)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from observatory.alerting import COMPARISONS, METRICS
from observatory.alerting.channels import Delivery
from observatory.alerting.evaluator import send_test
from observatory.alerting.rules import (
    MAX_RULES_PER_PROJECT,
    METRIC_DOCS,
    RuleIn,
    audit_details,
    describe,
    parse_window,
    public_channels,
    window_text,
)
from observatory.api.deps import audit, state
from observatory.store import admin
from observatory.store import alerts as store
from observatory.ui.admin_pages import admin_session
from observatory.ui.auth import UiSession, check_csrf, current_session
from observatory.ui.pages import page

router = APIRouter(include_in_schema=False)
Text = Annotated[str, Form(max_length=512)]
Url = Annotated[str, Form(max_length=2048)]
NOTICES = {
    "created": "The rule was created. It is evaluated from the next round on.",
    "deleted": "The rule and its history were deleted.",
}
FILTERS = ("model", "provider", "service", "environment")


def _alerts_page(
    request: Request,
    session: UiSession,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    form: dict[str, str] | None = None,
    tested: dict[str, Any] | None = None,
) -> Response:
    with state(request).db.read() as conn:
        rules = store.list_rules(conn, session.project_id)
        events = store.list_events(conn, project_id=session.project_id, limit=50)
    names = {r.rule_id: r.name for r in rules}
    rows = [
        {
            "rule": r,
            "rule_text": describe(r),
            "window": window_text(r.window_seconds),
            "channels": public_channels(r.channels, reveal=session.is_admin),
        }
        for r in rules
    ]
    for event in events:
        event["rule_name"] = names.get(event["rule_id"], f"#{event['rule_id']}")
    return page(
        request,
        session,
        "alerts.html",
        {
            "nav": "alerts",
            "title": "Alerts",
            "rows": rows,
            "events": events,
            "firing": sum(1 for r in rules if r.enabled and r.state == "firing"),
            "notice": NOTICES.get(request.query_params.get("notice", ""), ""),
            "errors": errors or [],
            "form": form or {},
            "tested": tested,
            "metrics": [(m, METRIC_DOCS[m]) for m in METRICS],
            "comparisons": COMPARISONS,
            "filter_names": FILTERS,
            "interval_seconds": state(request).settings.alert_interval_seconds,
        },
        status,
    )


@router.get("/alerts")
def alerts_page(request: Request) -> Response:
    return _alerts_page(request, current_session(request))


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
        message = str(error["msg"]).removeprefix("Value error, ")
        out.append(f"{where}: {message}" if where else message)
    return out


@router.post("/alerts/rules")
def create_rule(
    request: Request,
    csrf_token: Text = "",
    name: Annotated[str, Form(max_length=200)] = "",
    metric: Text = "cost_usd",
    comparison: Text = ">",
    threshold: Text = "",
    window: Text = "1h",
    model: Text = "",
    provider: Text = "",
    service: Text = "",
    environment: Text = "",
    webhook_url: Url = "",
    slack_url: Url = "",
    email_to: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    form = {
        "name": name,
        "metric": metric,
        "comparison": comparison,
        "threshold": threshold,
        "window": window,
        "model": model,
        "provider": provider,
        "service": service,
        "environment": environment,
        "webhook_url": webhook_url,
        "slack_url": slack_url,
        "email_to": email_to,
    }
    channels: list[dict[str, Any]] = []
    if webhook_url.strip():
        channels.append({"type": "webhook", "url": webhook_url.strip()})
    if slack_url.strip():
        channels.append({"type": "slack", "url": slack_url.strip()})
    if email_to.strip():
        channels.append({"type": "email", "to": email_to})
    filters = {}
    for key, value in zip(FILTERS, (model, provider, service, environment), strict=True):
        if value.strip():
            filters[key] = value.strip()
    try:
        body = RuleIn.model_validate(
            {
                "name": name,
                "metric": metric,
                "comparison": comparison,
                "threshold": threshold.strip(),
                "window_seconds": parse_window(window),
                "filters": filters,
                "channels": channels,
            }
        )
    except ValidationError as exc:
        return _alerts_page(request, session, status=422, errors=_problems(exc), form=form)
    except ValueError as exc:
        return _alerts_page(request, session, status=422, errors=[str(exc)], form=form)
    definition = body.definition()
    errors = []
    try:
        with state(request).db.write() as conn:
            if store.count_rules(conn, session.project_id) >= MAX_RULES_PER_PROJECT:
                errors.append(f"A project may have at most {MAX_RULES_PER_PROJECT} alert rules.")
            else:
                rule = store.create_rule(conn, session.project_id, definition)
    except admin.Conflict as exc:
        errors.append(str(exc).capitalize() + ".")
    if errors:
        return _alerts_page(request, session, status=409, errors=errors, form=form)
    audit(
        request,
        session.key,
        "alert_rule.create",
        object_type="alert_rule",
        object_id=str(rule.rule_id),
        details={**audit_details(definition), "via": "ui"},
    )
    return RedirectResponse("/alerts?notice=created#rules", status_code=303)


@router.post("/alerts/rules/{rule_id}/delete")
def delete_rule(request: Request, rule_id: int, csrf_token: Text = "") -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    try:
        with state(request).db.write() as conn:
            rule = store.delete_rule(conn, rule_id, session.project_id)
    except admin.NotFound:
        return _alerts_page(request, session, status=404, errors=["There is no such rule."])
    audit(
        request,
        session.key,
        "alert_rule.delete",
        object_type="alert_rule",
        object_id=str(rule_id),
        details={"name": rule.name, "via": "ui"},
    )
    return RedirectResponse("/alerts?notice=deleted#rules", status_code=303)


@router.post("/alerts/rules/{rule_id}/test")
def test_rule(request: Request, rule_id: int, csrf_token: Text = "") -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    st = state(request)
    try:
        with st.db.read() as conn:
            rule = store.get_rule(conn, rule_id, session.project_id)
    except admin.NotFound:
        return _alerts_page(request, session, status=404, errors=["There is no such rule."])
    outcomes = send_test(rule, Delivery.from_settings(st.settings))
    ok = all(o["outcome"] == "sent" for o in outcomes)
    audit(
        request,
        session.key,
        "alert_rule.test",
        "ok" if ok else "failed",
        object_type="alert_rule",
        object_id=str(rule_id),
        details={"notifications": outcomes, "via": "ui"},
    )
    return _alerts_page(request, session, tested={"rule": rule, "outcomes": outcomes})
