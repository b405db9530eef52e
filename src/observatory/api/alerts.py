"""In-app alert rules of the caller's project: read keys list them, admin keys change them.

Webhook URLs can hold credentials (a Slack webhook URL is one), so they are shown in full only
to admin keys and never written to the audit log.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from observatory.alerting import evaluator
from observatory.alerting.channels import Delivery
from observatory.alerting.rules import (
    MAX_RULES_PER_PROJECT,
    RuleIn,
    audit_details,
    rule_json,
)
from observatory.api.deps import Require, audit, state
from observatory.model import ApiKey, Role
from observatory.store import admin
from observatory.store import alerts as store

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
reader = Require(Role.READ)
administrator = Require(Role.ADMIN)
RuleId = Annotated[int, Path(ge=1, le=2**62)]


def _reveal(key: ApiKey) -> bool:
    return key.role is Role.ADMIN


@router.get("/rules", summary="The project's alert rules with their current state")
async def list_rules(request: Request, key: Annotated[ApiKey, Depends(reader)]) -> dict[str, Any]:
    st = state(request)

    def run() -> list[store.AlertRule]:
        with st.db.read() as conn:
            return store.list_rules(conn, key.project_id)

    rules = await run_in_threadpool(run)
    return {"data": [rule_json(r, _reveal(key)) for r in rules]}


@router.post("/rules", status_code=201, summary="Create an alert rule")
async def create_rule(
    request: Request, body: RuleIn, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)
    definition = body.definition()

    def run() -> dict[str, Any]:
        try:
            with st.db.write() as conn:
                if store.count_rules(conn, key.project_id) >= MAX_RULES_PER_PROJECT:
                    raise HTTPException(
                        409, f"a project may have at most {MAX_RULES_PER_PROJECT} alert rules"
                    )
                rule = store.create_rule(conn, key.project_id, definition)
        except admin.Conflict as exc:
            audit(
                request,
                key,
                "alert_rule.create",
                "conflict",
                object_type="alert_rule",
                object_id=definition["name"],
            )
            raise HTTPException(409, str(exc)) from exc
        audit(
            request,
            key,
            "alert_rule.create",
            object_type="alert_rule",
            object_id=str(rule.rule_id),
            details=audit_details(definition),
        )
        return rule_json(rule, reveal=True)

    return await run_in_threadpool(run)


@router.get("/rules/{rule_id}", summary="One alert rule")
async def get_rule(
    request: Request, rule_id: RuleId, key: Annotated[ApiKey, Depends(reader)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> store.AlertRule:
        try:
            with st.db.read() as conn:
                return store.get_rule(conn, rule_id, key.project_id)
        except admin.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    return rule_json(await run_in_threadpool(run), _reveal(key))


@router.put("/rules/{rule_id}", summary="Replace an alert rule's definition (its state is kept)")
async def replace_rule(
    request: Request,
    rule_id: RuleId,
    body: RuleIn,
    key: Annotated[ApiKey, Depends(administrator)],
) -> dict[str, Any]:
    st = state(request)
    definition = body.definition()

    def run() -> dict[str, Any]:
        try:
            with st.db.write() as conn:
                rule = store.replace_rule(conn, rule_id, key.project_id, definition)
        except admin.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except admin.Conflict as exc:
            audit(
                request,
                key,
                "alert_rule.update",
                "conflict",
                object_type="alert_rule",
                object_id=str(rule_id),
            )
            raise HTTPException(409, str(exc)) from exc
        audit(
            request,
            key,
            "alert_rule.update",
            object_type="alert_rule",
            object_id=str(rule_id),
            details=audit_details(definition),
        )
        return rule_json(rule, reveal=True)

    return await run_in_threadpool(run)


@router.delete("/rules/{rule_id}", summary="Delete an alert rule and its history")
async def delete_rule(
    request: Request, rule_id: RuleId, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        try:
            with st.db.write() as conn:
                rule = store.delete_rule(conn, rule_id, key.project_id)
        except admin.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        audit(
            request,
            key,
            "alert_rule.delete",
            object_type="alert_rule",
            object_id=str(rule_id),
            details={"name": rule.name},
        )
        return {"deleted": rule_id}

    return await run_in_threadpool(run)


@router.get("/rules/{rule_id}/history", summary="State changes of a rule, newest first")
async def history(
    request: Request,
    rule_id: RuleId,
    key: Annotated[ApiKey, Depends(reader)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> dict[str, Any]:
    st = state(request)

    def run() -> list[dict[str, Any]]:
        try:
            with st.db.read() as conn:
                store.get_rule(conn, rule_id, key.project_id)
                return store.list_events(conn, rule_id, key.project_id, limit, before_id)
        except admin.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    events = await run_in_threadpool(run)
    next_before = events[-1]["event_id"] if len(events) == limit else None
    return {"data": events, "next_before_id": next_before}


@router.post("/rules/{rule_id}/test", summary="Send a test notification to every channel")
async def test_rule(
    request: Request, rule_id: RuleId, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        try:
            with st.db.read() as conn:
                rule = store.get_rule(conn, rule_id, key.project_id)
        except admin.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        outcomes = evaluator.send_test(rule, Delivery.from_settings(st.settings))
        ok = all(o["outcome"] == "sent" for o in outcomes)
        audit(
            request,
            key,
            "alert_rule.test",
            "ok" if ok else "failed",
            object_type="alert_rule",
            object_id=str(rule_id),
            details={"notifications": outcomes},
        )
        return {"rule_id": rule_id, "notifications": outcomes}

    return await run_in_threadpool(run)
