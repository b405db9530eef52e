"""Grafana provisioning: data sources, dashboard provider, and the six dashboards.

Grafana itself cannot be installed here, so the dashboards are checked against its documented
dashboard JSON model by a structural validator, every PromQL expression is parsed by promtool,
and every SQL panel is run against a real PostgreSQL (schema from `observatory migrate`, demo
rows inserted with plain SQL) after expanding Grafana's template variables and macros the way
Grafana's PostgreSQL data source does, as a read-only role with the grants grafana_reader gets.
"""

from __future__ import annotations

import copy
import math
import os
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from numbers import Number
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from tests.deploy.monitoring_helpers import (
    DASHBOARD_PROVIDERS_FILE,
    DATASOURCES_FILE,
    GRAFANA_TABLES,
    VENV_BIN,
    DemoData,
    SqlVariable,
    expand_sql,
    format_grafana_interval,
    insert_demo_data,
    iter_panels,
    load_dashboards,
    load_datasources,
    load_yaml,
    promql_for_parsing,
    promtool_check_expressions,
    run,
    target_datasource,
    validate_dashboard,
)

ADMIN_URL = os.environ.get(
    "OBSERVATORY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DATASOURCES = load_datasources()
DASHBOARDS = load_dashboards()
SQL_TYPES = ("postgres", "grafana-postgresql-datasource")
EXPECTED = {
    "System Overview",
    "Database Performance",
    "API Metrics",
    "Cache Performance",
    "Error Tracking",
    "LLM Usage & Cost",
}


def _ds_type(ref: dict[str, Any]) -> str:
    return str(DATASOURCES.get(ref.get("uid", ""), {}).get("type", ref.get("type")))


def _sql_targets(dash: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in iter_panels(dash["panels"]):
        for target in panel.get("targets", []):
            if _ds_type(target_datasource(panel, target)) in SQL_TYPES:
                yield panel, target


def _dashboard(title: str) -> dict[str, Any]:
    return next(d for d in DASHBOARDS.values() if d["title"] == title)


# --- provisioning files --------------------------------------------------------------------------


def test_datasources_provisioning() -> None:
    doc = load_yaml(DATASOURCES_FILE)
    assert doc["apiVersion"] == 1
    sources = doc["datasources"]
    assert len({s["uid"] for s in sources}) == len(sources)
    assert len({s["name"] for s in sources}) == len(sources)
    assert [s["uid"] for s in sources if s.get("isDefault")] == ["prometheus"]

    prom = DATASOURCES["prometheus"]
    assert (prom["type"], prom["url"], prom["access"]) == (
        "prometheus",
        "http://prometheus:9090",
        "proxy",
    )

    pg = DATASOURCES["observatory-postgres"]
    assert pg["type"] in SQL_TYPES
    assert pg["url"] == "timescaledb-replica:5432"
    assert pg["user"] == "grafana_reader"
    assert pg["jsonData"]["database"] == "llm_observatory"
    # The password is expanded by Grafana from the Docker secret, never written here.
    assert pg["secureJsonData"] == {"password": "$__file{/run/secrets/grafana_db_password}"}
    assert "password" not in pg and "password" not in pg["jsonData"]
    # docker/postgresql.hba.conf rejects connections without TLS.
    assert pg["jsonData"]["sslmode"] == "require"
    # The SQL test below expands $__timeGroup without TimescaleDB, as Grafana will.
    assert pg["jsonData"]["timescaledb"] is False
    assert format_grafana_interval(60) == pg["jsonData"]["timeInterval"]

    am = DATASOURCES["alertmanager"]
    assert (am["type"], am["url"], am["jsonData"]["implementation"]) == (
        "alertmanager",
        "http://alertmanager:9093",
        "prometheus",
    )


def test_no_secret_values_in_grafana_files() -> None:
    for path in (DATASOURCES_FILE, DASHBOARD_PROVIDERS_FILE):
        for line in path.read_text().splitlines():
            if re.search(r"(?i)password\s*:", line.split("#")[0]):
                assert "$__file{/run/secrets/" in line, f"{path.name}: {line.strip()}"


def test_dashboard_provider_loads_the_mounted_directory() -> None:
    doc = load_yaml(DASHBOARD_PROVIDERS_FILE)
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    # docker-compose mounts docker/grafana/dashboards here.
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert provider["orgId"] == 1
    assert provider["allowUiUpdates"] is False


def test_the_six_dashboards_exist_with_unique_uids() -> None:
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert sorted(titles) == sorted(EXPECTED)
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_a_valid_grafana_dashboard(name: str) -> None:
    assert validate_dashboard(DASHBOARDS[name], DATASOURCES) == []


# --- the validator itself must catch what Grafana would reject or mis-render ---------------------


def _broken(mutate: Any) -> list[str]:
    dash = copy.deepcopy(_dashboard("LLM Usage & Cost"))
    mutate(dash)
    return validate_dashboard(dash, DATASOURCES)


def _first(dash: dict[str, Any], ptype: str) -> dict[str, Any]:
    return next(p for p in dash["panels"] if p["type"] == ptype)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("uid"), "uid must be"),
        (lambda d: d.update(uid="has spaces"), "uid must be"),
        (lambda d: d.update(title=""), "title must be"),
        (lambda d: d.update(schemaVersion="39"), "schemaVersion"),
        (lambda d: d.update(id=7), "id null"),
        (lambda d: d["panels"][2].update(id=d["panels"][1]["id"]), "duplicate panel id"),
        (lambda d: d["panels"][1]["gridPos"].update(x=20, w=8), "outside the 24-column grid"),
        (lambda d: d["panels"][2]["gridPos"].update(x=d["panels"][1]["gridPos"]["x"]), "overlap"),
        (lambda d: d["panels"][1]["datasource"].update(uid="nope"), "is not provisioned"),
        (lambda d: d["panels"][1]["datasource"].update(type="mysql"), "has type"),
        (lambda d: d["panels"][1].update(targets=[]), "at least one target"),
        (lambda d: d["panels"][1]["targets"][0].pop("refId"), "without refId"),
        (
            lambda d: _first(d, "timeseries")["targets"].append(
                dict(_first(d, "timeseries")["targets"][0])
            ),
            "duplicate refId",
        ),
        (lambda d: d["panels"][1]["targets"][0].update(rawSql=" "), "non-empty rawSql"),
        (lambda d: d["panels"][1]["targets"][0].update(format="graph"), "time_series or table"),
        (lambda d: d["panels"][1]["targets"][0].update(editorMode="builder"), "code mode"),
        (
            lambda d: d["panels"][1]["targets"][0].update(
                rawSql=d["panels"][1]["targets"][0]["rawSql"] + " AND x IN ($team)"
            ),
            "unknown variable",
        ),
        (lambda d: d["panels"][1].update(type="graph-ng"), "unknown panel type"),
        (lambda d: d["panels"][0]["gridPos"].update(h=3), "full width with height 1"),
        (
            lambda d: d["templating"]["list"].append(dict(d["templating"]["list"][0])),
            "defined twice",
        ),
        (lambda d: d["templating"]["list"][0].update(name="__interval"), "global variable"),
        (lambda d: d["templating"]["list"][1].update(refresh=0), "refresh must be"),
        (
            lambda d: d["panels"][1]["fieldConfig"]["defaults"]["thresholds"]["steps"].extend(
                [{"color": "red", "value": 5}, {"color": "red", "value": 1}]
            ),
            "ascending",
        ),
        (lambda d: d["panels"][1].update(interval="one minute"), "not a duration"),
        (
            lambda d: d["annotations"]["list"][0]["datasource"].update(uid="missing"),
            "not provisioned",
        ),
    ],
)
def test_validator_rejects_broken_dashboards(mutate: Any, expected: str) -> None:
    errors = _broken(mutate)
    assert any(expected in e for e in errors), errors


# --- PromQL --------------------------------------------------------------------------------------


def _promql_expressions() -> dict[str, str]:
    exprs: dict[str, str] = {}
    for name, dash in DASHBOARDS.items():
        variables = {v["name"] for v in dash["templating"]["list"]}
        for panel in iter_panels(dash["panels"]):
            for target in panel.get("targets", []):
                if _ds_type(target_datasource(panel, target)) == "prometheus":
                    key = f"{name} panel {panel['id']} {panel['title']} {target['refId']}"
                    exprs[key] = promql_for_parsing(target["expr"], variables)
        for ann in dash["annotations"]["list"]:
            if _ds_type(ann["datasource"]) == "prometheus":
                exprs[f"{name} annotation {ann['name']}"] = promql_for_parsing(
                    ann["expr"], variables
                )
        for var in dash["templating"]["list"]:
            if var["type"] == "query" and _ds_type(var["datasource"]) == "prometheus":
                # label_values(<series selector>, label) is Grafana's; the selector is PromQL.
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"].strip())
                assert m is not None, f"{name} variable {var['name']}: {var['query']}"
                exprs[f"{name} variable {var['name']}"] = promql_for_parsing(m.group(1), variables)
    return exprs


def test_every_promql_expression_parses(tmp_path: Any) -> None:
    exprs = _promql_expressions()
    assert len(exprs) > 60
    result = promtool_check_expressions(exprs, tmp_path)
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_catches_a_broken_expression(tmp_path: Any) -> None:
    result = promtool_check_expressions(
        {"broken": "sum by (job (rate(http_requests_total[5m]))"}, tmp_path
    )
    assert result.returncode != 0
    assert "broken" in result.stdout


def test_dashboards_use_only_metrics_the_server_exports() -> None:
    from observatory import metrics

    exported = set(metrics.metric_names())
    used: set[str] = set()
    for expr in _promql_expressions().values():
        for name in re.findall(r"\b((?:http|db_query|cache|observatory)_[a-z0-9_]+)", expr):
            if name.startswith(("observatory_backup_", "observatory_restore_test_")):
                continue  # written by the backup job into node-exporter's textfile collector
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used, "no server metric found in the dashboards"
    assert used <= exported, sorted(used - exported)


# --- SQL panels against a real PostgreSQL --------------------------------------------------------


class SqlEnv:
    def __init__(self, conn: psycopg.Connection[Any], demo: DemoData, now: datetime) -> None:
        self.conn = conn
        self.demo = demo
        self.end = now + timedelta(minutes=1)
        self.start = now - timedelta(hours=7)

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self.conn.cursor() as cur:
            try:
                cur.execute(sql)
                cols = [c.name for c in cur.description or []]
                return cols, cur.fetchall()
            finally:
                self.conn.rollback()

    def variables(self, dash: dict[str, Any]) -> dict[str, SqlVariable]:
        """Resolve the dashboard's SQL query variables in order (each may use earlier ones),
        with "All" selected, as Grafana does on load."""
        resolved: dict[str, SqlVariable] = {}
        for definition in dash["templating"]["list"]:
            if definition["type"] != "query" or _ds_type(definition["datasource"]) not in SQL_TYPES:
                continue
            sql = expand_sql(definition["query"], resolved, self.start, self.end, 60)
            cols, rows = self.query(sql)
            if "__value" in cols:
                options = [
                    (str(r[cols.index("__text")]), str(r[cols.index("__value")])) for r in rows
                ]
            else:
                options = [(str(r[0]), str(r[0])) for r in rows]
            assert options, f"variable {definition['name']} has no options:\n{sql}"
            resolved[definition["name"]] = SqlVariable(definition, options)
        return resolved


@pytest.fixture(scope="module")
def sql_env() -> Iterator[SqlEnv]:
    from observatory.store.histogram import bucket_index

    suffix = uuid.uuid4().hex[:10]
    db, role = f"obs_monitoring_{suffix}", f"obs_monitoring_ro_{suffix}"
    base = ADMIN_URL.rsplit("/", 1)[0]
    admin = psycopg.connect(ADMIN_URL, autocommit=True)
    admin.execute(SQL("CREATE DATABASE {}").format(Identifier(db)))
    conn: psycopg.Connection[Any] | None = None
    try:
        env = {**os.environ, "OBSERVATORY_DATABASE_URL": f"{base}/{db}"}
        result = run([str(VENV_BIN / "observatory"), "migrate"], env=env, timeout=120)
        assert result.returncode == 0, result.stdout
        conn = psycopg.connect(f"{base}/{db}")
        now = datetime.now(UTC)
        demo = insert_demo_data(conn, now, bucket_index)
        # The grants docs/MONITORING.md gives grafana_reader: SELECT on five tables, nothing else.
        conn.execute(SQL("CREATE ROLE {} NOLOGIN").format(Identifier(role)))
        conn.execute(SQL("GRANT USAGE ON SCHEMA public TO {}").format(Identifier(role)))
        tables = SQL(", ").join(Identifier(t) for t in GRAFANA_TABLES)
        conn.execute(SQL("GRANT SELECT ON {} TO {}").format(tables, Identifier(role)))
        conn.commit()
        conn.execute(SQL("SET SESSION ROLE {}").format(Identifier(role)))
        conn.commit()
        yield SqlEnv(conn, demo, now)
    finally:
        if conn is not None:
            conn.close()
        admin.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(db)))
        admin.execute(SQL("DROP ROLE IF EXISTS {}").format(Identifier(role)))
        admin.close()


def _check_result(
    where: str, fmt: str, panel_type: str, cols: list[str], rows: list[tuple[Any, ...]]
) -> list[str]:
    problems = []
    if not rows:
        return [f"{where}: no rows"]
    if fmt == "time_series":
        if "time" not in cols:
            return [f"{where}: time_series result without a time column: {cols}"]
        ti = cols.index("time")
        times = [r[ti] for r in rows]
        if any(not isinstance(t, Number | datetime) for t in times):
            problems.append(f"{where}: time column is not numeric/timestamp")
        elif any(isinstance(t, Number) and not 1e9 <= float(str(t)) < 1e10 for t in times):
            problems.append(f"{where}: numeric time is not unix seconds")
        elif times != sorted(times):
            problems.append(f"{where}: rows are not sorted by time (Grafana needs ascending)")
        values = [i for i, c in enumerate(cols) if c not in ("time", "metric")]
        numeric = [i for i in values if all(isinstance(r[i], Number | type(None)) for r in rows)]
        if not numeric:
            problems.append(f"{where}: no numeric value column in {cols}")
    if panel_type == "stat" and len(rows) != 1:
        problems.append(f"{where}: a stat query should return one row, got {len(rows)}")
    return problems


def _run_dashboard(
    env: SqlEnv, dash: dict[str, Any], variables: dict[str, SqlVariable], interval_s: float
) -> tuple[int, int, list[str]]:
    executed = with_rows = 0
    problems: list[str] = []
    for panel, target in _sql_targets(dash):
        where = f"{dash['title']} / {panel['title']} / {target['refId']}"
        interval = max(interval_s, 60.0)  # the data source's minimum (timeInterval 1m)
        sql = expand_sql(target["rawSql"], variables, env.start, env.end, interval)
        try:
            cols, rows = env.query(sql)
        except psycopg.Error as exc:
            problems.append(f"{where}: {exc}\n{sql}")
            continue
        executed += 1
        with_rows += bool(rows)
        problems += _check_result(where, target["format"], panel["type"], cols, rows)
    return executed, with_rows, problems


@pytest.mark.parametrize("interval_s", [60, 600])
def test_every_sql_panel_runs_and_returns_rows(sql_env: SqlEnv, interval_s: int) -> None:
    total = 0
    problems: list[str] = []
    for dash in DASHBOARDS.values():
        if not any(True for _ in _sql_targets(dash)):
            continue
        variables = sql_env.variables(dash)
        executed, _, found = _run_dashboard(sql_env, dash, variables, interval_s)
        total += executed
        problems += found
    assert problems == []
    assert total >= 25


def test_sql_panels_run_with_a_selection(sql_env: SqlEnv) -> None:
    """One value picked in every variable (quoted as Grafana quotes it) instead of All."""
    dash = _dashboard("LLM Usage & Cost")
    variables = sql_env.variables(dash)
    wanted = {
        "project": "1",
        "environment": "production",
        "service": "chat-api",
        "provider": "openai",
        "model": "gpt-4o",
    }
    for name, value in wanted.items():
        assert value in [v for _, v in variables[name].options], (name, variables[name].options)
        variables[name].selected = [value]
    executed, with_rows, problems = _run_dashboard(sql_env, dash, variables, 60)
    assert problems == []
    assert executed == with_rows >= 15


def _stat(env: SqlEnv, title: str, variables: dict[str, SqlVariable]) -> Any:
    dash = _dashboard("LLM Usage & Cost")
    panel = next(p for p in iter_panels(dash["panels"]) if p["title"] == title)
    sql = expand_sql(panel["targets"][0]["rawSql"], variables, env.start, env.end, 60)
    _, rows = env.query(sql)
    return rows[0][0]


def test_llm_totals_match_the_data(sql_env: SqlEnv) -> None:
    dash = _dashboard("LLM Usage & Cost")
    rollups = [r for r in sql_env.demo.rollups if r["model"]]

    variables = sql_env.variables(dash)
    assert _stat(sql_env, "Total cost", variables) == sum(r["cost_usd"] for r in rollups)
    assert _stat(sql_env, "LLM calls", variables) == sum(r["requests"] for r in rollups)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rollups)
    assert _stat(sql_env, "Tokens", variables) == tokens
    # Non-LLM spans (no model) are rolled up too but are not LLM calls.
    assert sum(r["requests"] for r in sql_env.demo.rollups) > sum(r["requests"] for r in rollups)

    variables["model"].selected = ["gpt-4o", "claude-sonnet-4"]
    variables["project"].selected = ["2"]
    subset = [
        r for r in rollups if r["model"] in ("gpt-4o", "claude-sonnet-4") and r["project_id"] == 2
    ]
    assert _stat(sql_env, "Total cost", variables) == sum(
        (r["cost_usd"] for r in subset), Decimal(0)
    )
    errors = sum(r["errors"] for r in subset) / sum(r["requests"] for r in subset)
    assert math.isclose(_stat(sql_env, "Error rate", variables), errors)


def test_latency_percentiles_match_the_server(sql_env: SqlEnv) -> None:
    """The dashboard's SQL percentiles over the latency histogram equal the server's own
    (observatory.store.histogram, used by the analytics API)."""
    from observatory.store.histogram import percentiles

    dash = _dashboard("LLM Usage & Cost")
    panel = next(
        p
        for p in iter_panels(dash["panels"])
        if p["title"] == "Models: calls, errors, latency, cost"
    )
    sql = expand_sql(
        panel["targets"][0]["rawSql"], sql_env.variables(dash), sql_env.start, sql_env.end, 60
    )
    cols, rows = sql_env.query(sql)
    got = {(r[cols.index("Provider")], r[cols.index("Model")]): r for r in rows}
    assert len(got) == 3
    for (provider, model), row in got.items():
        merged: dict[int, int] = {}
        for key, hist in sql_env.demo.latency.items():
            if key[3] == provider and key[4] == model:
                for index, count in hist.items():
                    merged[index] = merged.get(index, 0) + count
        expected = percentiles(merged.items(), [0.5, 0.95])
        p50, p95 = expected[0.5], expected[0.95]
        assert p50 is not None and p95 is not None
        assert math.isclose(row[cols.index("p50 latency")], p50, rel_tol=1e-9)
        assert math.isclose(row[cols.index("p95 latency")], p95, rel_tol=1e-9)


def test_grafana_role_is_read_only_and_narrow(sql_env: SqlEnv) -> None:
    """The grants the SQL panels need (SELECT on five tables) are enough, and nothing more:
    API key hashes and the audit log stay out of Grafana's reach, and it cannot write."""
    for sql in (
        "SELECT count(*) FROM api_keys",
        "SELECT count(*) FROM audit_log",
        "INSERT INTO projects (name, created_at) VALUES ('x', now())",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql_env.query(sql)
    _, rows = sql_env.query("SELECT count(*) FROM spans")
    assert rows[0][0] == sql_env.demo.spans
