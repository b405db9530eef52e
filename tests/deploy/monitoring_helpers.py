"""Shared helpers for the monitoring tests (Prometheus, Alertmanager, Grafana).

Everything here drives real tools (promtool, amtool, prometheus, prometheus-alertmanager,
PostgreSQL) or mirrors a documented behaviour of one that cannot run here (Grafana: its dashboard
JSON model and the macro/variable expansion of its PostgreSQL data source). A missing tool is an
error, never a skip.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PROMETHEUS_DIR = DOCKER / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
ALERTMANAGER_CONFIG = DOCKER / "alertmanager" / "alertmanager.yml"
GRAFANA_DIR = DOCKER / "grafana"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
MONITORING_DOC = REPO / "docs" / "MONITORING.md"
VENV_BIN = REPO / ".venv" / "bin"
PG_BIN = Path("/usr/lib/postgresql/15/bin")

# The apt package that provides each tool (see .ci/apt-packages.d/monitoring.txt).
TOOL_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


# --- tools and processes -------------------------------------------------------------------------


def tool(name: str) -> str:
    """Absolute path of a required command-line tool; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise AssertionError(
            f"{name} is not installed; `apt-get install {package}` "
            "(scripts/test-setup.sh installs it from .ci/apt-packages.d/monitoring.txt)"
        )
    return path


def run(
    cmd: Sequence[str],
    *,
    timeout: float = 60,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output (stdout and stderr merged)."""
    return subprocess.run(
        list(cmd),
        cwd=cwd,
        env=None if env is None else dict(env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
            last_error = exc
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})"
    )


def http_json(url: str, data: Any = None, method: str | None = None, timeout: float = 5) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


@dataclass
class ManagedProcess:
    """A background process whose output goes to a log file; stopped by ``stop()``."""

    name: str
    cmd: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if self.env is None else dict(self.env),
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_http_ok(url: str, proc: ManagedProcess, timeout: float = 30) -> None:
    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log()}")
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    wait_for(ready, timeout, what=f"{proc.name} at {url}")


def start_prometheus(config_file: Path, workdir: Path) -> tuple[ManagedProcess, str]:
    """Start a real Prometheus on a free loopback port; returns it and its base URL."""
    port = free_port()
    proc = ManagedProcess(
        "prometheus",
        [
            tool("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ],
        workdir / "prometheus.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/-/ready", proc)
    except BaseException:
        proc.stop()
        raise
    return proc, base


def start_alertmanager(config_file: Path, workdir: Path) -> tuple[ManagedProcess, str]:
    """Start a real Alertmanager (clustering off) on a free loopback port."""
    port = free_port()
    proc = ManagedProcess(
        "alertmanager",
        [
            tool("prometheus-alertmanager"),
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        workdir / "alertmanager.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/-/ready", proc)
    except BaseException:
        proc.stop()
        raise
    return proc, base


# --- Prometheus rules ----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of docker/prometheus/rules, with the file it came from."""
    rules = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules.append({**rule, "_file": path.name, "_group": group["name"]})
    return rules


def find_alert_rule(alertname: str, severity: str) -> dict[str, Any]:
    matches = [
        r for r in alert_rules() if r["alert"] == alertname and r["labels"]["severity"] == severity
    ]
    assert len(matches) == 1, f"expected one {severity} rule {alertname}, found {len(matches)}"
    return matches[0]


def promtool_check_expressions(
    exprs: Mapping[str, str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Parse PromQL expressions with promtool by putting each into a throw-away recording rule
    (one group per expression, named after where it came from)."""
    groups = [
        {"name": name, "rules": [{"record": f"dashboard:expression_{i}:check", "expr": expr}]}
        for i, (name, expr) in enumerate(exprs.items())
    ]
    path = workdir / "dashboard-expressions.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return run([tool("promtool"), "check", "rules", str(path)])


# --- Grafana: provisioning, dashboard JSON model, template expansion ---------------------------

# Built-in dashboard variables (https://grafana.com/docs/grafana/latest/dashboards/variables/
# add-template-variables/#global-variables).
GRAFANA_GLOBAL_VARIABLES = frozenset(
    {
        "__interval",
        "__interval_ms",
        "__rate_interval",
        "__rate_interval_ms",
        "__range",
        "__range_s",
        "__range_ms",
        "__from",
        "__to",
        "__dashboard",
        "__org",
        "__user",
        "__name",
        "__timezone",
        "__auto",
        "timeFilter",
        "__timeFilter",
    }
)
# Macros of Grafana's PostgreSQL data source (pkg/tsdb/grafana-postgresql-datasource/macros.go
# plus the global ones of sqleng.Interpolate).
POSTGRES_MACROS = frozenset(
    {
        "__time",
        "__timeEpoch",
        "__timeFilter",
        "__timeFrom",
        "__timeTo",
        "__timeGroup",
        "__timeGroupAlias",
        "__unixEpochFilter",
        "__unixEpochNanoFilter",
        "__unixEpochNanoFrom",
        "__unixEpochNanoTo",
        "__unixEpochGroup",
        "__unixEpochGroupAlias",
        "__unixEpochFrom",
        "__unixEpochTo",
    }
)
PANEL_TYPES = frozenset(
    {
        "row",
        "timeseries",
        "stat",
        "gauge",
        "bargauge",
        "table",
        "piechart",
        "barchart",
        "text",
        "heatmap",
        "histogram",
        "state-timeline",
        "status-history",
        "logs",
        "alertlist",
        "dashlist",
        "news",
        "nodeGraph",
        "traces",
        "xychart",
        "trend",
        "candlestick",
        "canvas",
        "geomap",
        "flamegraph",
        "datagrid",
    }
)
VARIABLE_TYPES = frozenset(
    {"query", "custom", "constant", "textbox", "interval", "datasource", "adhoc", "groupby"}
)
BUILTIN_DATASOURCE_UIDS = {
    "-- Grafana --": "grafana",
    "-- Mixed --": "datasource",
    "-- Dashboard --": "datasource",
    "grafana": "grafana",
}
UID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")
VARIABLE_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DURATION_RE = re.compile(r"^>?\d+(ms|s|m|h|d|w|y)$")
# Grafana's template-variable syntax: $name, [[name]] / [[name:fmt]], ${name} / ${name:fmt}.
TEMPLATE_VAR_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
# sqleng/postgres macro syntax: $__name(args) where args contain no ")".
SQL_MACRO_RE = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")


def load_datasources() -> dict[str, dict[str, Any]]:
    """Provisioned data sources by uid."""
    doc = load_yaml(DATASOURCES_FILE)
    return {ds["uid"]: ds for ds in doc["datasources"]}


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Dashboard JSON models by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def iter_panels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def target_datasource(panel: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    return dict(target.get("datasource") or panel.get("datasource") or {})


def _ds_ref_errors(where: str, ref: Any, datasources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not isinstance(ref, dict):
        return [f"{where}: datasource must be an object {{type, uid}}, got {ref!r}"]
    uid, typ = ref.get("uid"), ref.get("type")
    if uid in BUILTIN_DATASOURCE_UIDS:
        wanted = BUILTIN_DATASOURCE_UIDS[uid]
        if typ == wanted:
            return []
        return [f"{where}: built-in datasource {uid!r} must have type {wanted!r}"]
    if isinstance(uid, str) and uid.startswith("${"):
        return []  # a datasource variable; checked with the variables
    if not isinstance(uid, str) or uid not in datasources:
        return [f"{where}: datasource uid {uid!r} is not provisioned ({sorted(datasources)})"]
    if typ != datasources[uid]["type"]:
        return [
            f"{where}: datasource {uid!r} has type {datasources[uid]['type']!r}, ref says {typ!r}"
        ]
    return []


def template_references(text: str) -> set[str]:
    """Names of template variables referenced in a string."""
    names = set()
    for m in TEMPLATE_VAR_RE.finditer(text):
        names.add(m.group(1) or m.group(2) or m.group(4))
    return names


def _check_thresholds(where: str, thresholds: Any) -> list[str]:
    if thresholds is None:
        return []
    errors = []
    if thresholds.get("mode") not in ("absolute", "percentage"):
        errors.append(f"{where}: thresholds.mode must be absolute or percentage")
    steps = thresholds.get("steps")
    if not isinstance(steps, list) or not steps:
        return [*errors, f"{where}: thresholds.steps must be a non-empty list"]
    if steps[0].get("value") is not None:
        errors.append(f"{where}: the first threshold step must have value null (base)")
    values = [s.get("value") for s in steps[1:]]
    if any(not isinstance(v, int | float) for v in values) or values != sorted(values):
        errors.append(f"{where}: threshold values must be ascending numbers: {values}")
    for s in steps:
        if not isinstance(s.get("color"), str):
            errors.append(f"{where}: every threshold step needs a color")
    return errors


def _check_field_config(where: str, fc: Any) -> list[str]:
    if not isinstance(fc, dict) or not isinstance(fc.get("defaults"), dict):
        return [f"{where}: fieldConfig must be an object with a defaults object"]
    errors = _check_thresholds(f"{where} defaults", fc["defaults"].get("thresholds"))
    overrides = fc.get("overrides")
    if not isinstance(overrides, list):
        return [*errors, f"{where}: fieldConfig.overrides must be a list"]
    for i, o in enumerate(overrides):
        matcher = o.get("matcher")
        if not isinstance(matcher, dict) or not isinstance(matcher.get("id"), str):
            errors.append(f"{where}: override {i} needs matcher {{id, options}}")
        props = o.get("properties")
        if not isinstance(props, list) or any(not isinstance(p.get("id"), str) for p in props):
            errors.append(f"{where}: override {i} needs properties [{{id, value}}]")
    return errors


def _check_target(where: str, target: Any, ds: Mapping[str, Any], refids: set[str]) -> list[str]:
    errors: list[str] = []
    if not isinstance(target, dict):
        return [f"{where}: a target must be an object"]
    ref = target.get("refId")
    if not isinstance(ref, str) or not ref:
        errors.append(f"{where}: target without refId")
    elif ref in refids:
        errors.append(f"{where}: duplicate refId {ref!r}")
    else:
        refids.add(ref)
    kind = ds.get("type")
    if kind == "prometheus":
        if not isinstance(target.get("expr"), str) or not target["expr"].strip():
            errors.append(f"{where} {ref}: prometheus target needs a non-empty expr")
        if not (target.get("range", True) or target.get("instant", False)):
            errors.append(f"{where} {ref}: prometheus target is neither range nor instant")
        if target.get("format", "time_series") not in ("time_series", "table", "heatmap"):
            errors.append(f"{where} {ref}: unknown prometheus format {target.get('format')!r}")
    elif kind in ("postgres", "grafana-postgresql-datasource"):
        if not isinstance(target.get("rawSql"), str) or not target["rawSql"].strip():
            errors.append(f"{where} {ref}: SQL target needs a non-empty rawSql")
        if target.get("format") not in ("time_series", "table"):
            errors.append(f"{where} {ref}: SQL format must be time_series or table")
        if target.get("rawQuery") is not True or target.get("editorMode") != "code":
            errors.append(
                f"{where} {ref}: SQL target must be a raw query in code mode "
                "(otherwise Grafana's builder regenerates the SQL)"
            )
    return errors


def _check_variables(
    dash: Mapping[str, Any],
    datasources: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], set[str]]:
    errors: list[str] = []
    names: set[str] = set()
    templating = dash.get("templating")
    if not isinstance(templating, dict) or not isinstance(templating.get("list"), list):
        return ["templating.list must be a list"], names
    for i, var in enumerate(templating["list"]):
        where = f"variable {i}"
        name = var.get("name")
        if not isinstance(name, str) or not VARIABLE_NAME_RE.match(name):
            errors.append(f"{where}: invalid name {name!r}")
            continue
        where = f"variable {name!r}"
        if name in names:
            errors.append(f"{where}: defined twice")
        if name.startswith("__") or name in GRAFANA_GLOBAL_VARIABLES:
            errors.append(f"{where}: shadows a Grafana global variable")
        names.add(name)
        vtype = var.get("type")
        if vtype not in VARIABLE_TYPES:
            errors.append(f"{where}: unknown type {vtype!r}")
        if vtype == "query":
            errors += _ds_ref_errors(where, var.get("datasource"), datasources)
            query = var.get("query")
            text = (
                query
                if isinstance(query, str)
                else (query or {}).get("query") or (query or {}).get("rawSql")
            )
            if not isinstance(text, str) or not text.strip():
                errors.append(f"{where}: query variable without a query")
            if var.get("refresh") not in (1, 2):
                errors.append(f"{where}: refresh must be 1 (on load) or 2 (on time range change)")
        if vtype == "custom" and not isinstance(var.get("query"), str):
            errors.append(f"{where}: custom variable needs a comma-separated query string")
        for flag in ("multi", "includeAll"):
            if flag in var and not isinstance(var[flag], bool):
                errors.append(f"{where}: {flag} must be a boolean")
        if "allValue" in var and var["allValue"] is not None and not var.get("includeAll"):
            errors.append(f"{where}: allValue without includeAll")
        if var.get("hide", 0) not in (0, 1, 2):
            errors.append(f"{where}: hide must be 0, 1 or 2")
    return errors, names


def _grid_overlaps(panels: Sequence[Mapping[str, Any]]) -> list[str]:
    errors = []
    cells: dict[tuple[int, int], Any] = {}
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                other = cells.get((x, y))
                if other is not None and other != p["id"]:
                    errors.append(f"panels {other} and {p['id']} overlap at x={x}, y={y}")
                    return errors
                cells[(x, y)] = p["id"]
    return errors


def validate_dashboard(dash: Any, datasources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Structural check of a Grafana dashboard JSON model (the "classic" model Grafana's file
    provisioning loads): every problem found, as readable strings (empty list = valid)."""
    if not isinstance(dash, dict):
        return ["a dashboard must be a JSON object"]
    errors: list[str] = []
    uid = dash.get("uid")
    if not isinstance(uid, str) or not UID_RE.match(uid):
        errors.append(f"uid must be 1-40 characters of [a-zA-Z0-9_-], got {uid!r}")
    if not isinstance(dash.get("title"), str) or not dash["title"].strip():
        errors.append("title must be a non-empty string")
    sv = dash.get("schemaVersion")
    if not isinstance(sv, int) or isinstance(sv, bool) or not 30 <= sv <= 41:
        errors.append(f"schemaVersion must be an integer of a current Grafana (30-41), got {sv!r}")
    if dash.get("id") is not None:
        errors.append("a provisioned dashboard must have id null (Grafana assigns it)")
    if not isinstance(dash.get("tags", []), list) or any(
        not isinstance(t, str) for t in dash.get("tags", [])
    ):
        errors.append("tags must be a list of strings")
    time_range = dash.get("time")
    if not isinstance(time_range, dict) or not all(
        isinstance(time_range.get(k), str) for k in ("from", "to")
    ):
        errors.append("time must be {from, to} strings")
    refresh = dash.get("refresh", "")
    if refresh not in ("", False) and not (isinstance(refresh, str) and DURATION_RE.match(refresh)):
        errors.append(f"refresh must be a duration like 30s or empty, got {refresh!r}")
    if dash.get("timezone", "") not in ("", "browser", "utc") and "/" not in str(dash["timezone"]):
        errors.append(f"unknown timezone {dash.get('timezone')!r}")

    var_errors, variables = _check_variables(dash, datasources)
    errors += var_errors
    known = variables | GRAFANA_GLOBAL_VARIABLES

    annotations = dash.get("annotations", {"list": []})
    if not isinstance(annotations, dict) or not isinstance(annotations.get("list"), list):
        errors.append("annotations.list must be a list")
    else:
        for i, ann in enumerate(annotations["list"]):
            if not isinstance(ann.get("name"), str):
                errors.append(f"annotation {i}: needs a name")
            errors += _ds_ref_errors(
                f"annotation {ann.get('name', i)!r}", ann.get("datasource"), datasources
            )
            for key in ("expr", "rawQuery"):
                for ref in template_references(str(ann.get(key, ""))):
                    if ref not in known:
                        errors.append(f"annotation {ann.get('name')!r}: unknown variable ${ref}")

    panels = dash.get("panels")
    if not isinstance(panels, list) or not panels:
        return [*errors, "panels must be a non-empty list"]
    ids: set[int] = set()
    for panel in iter_panels(panels):
        pid = panel.get("id")
        where = f"panel {pid} {panel.get('title', '')!r}"
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            errors.append(f"{where}: id must be a positive integer")
        elif pid in ids:
            errors.append(f"{where}: duplicate panel id {pid}")
        else:
            ids.add(pid)
        ptype = panel.get("type")
        if ptype not in PANEL_TYPES:
            errors.append(f"{where}: unknown panel type {ptype!r}")
        if not isinstance(panel.get("title"), str):
            errors.append(f"{where}: title must be a string")
        g = panel.get("gridPos")
        if not isinstance(g, dict) or not all(
            isinstance(g.get(k), int) and not isinstance(g.get(k), bool)
            for k in ("h", "w", "x", "y")
        ):
            errors.append(f"{where}: gridPos needs integer h, w, x, y")
        elif not (
            g["h"] >= 1
            and 1 <= g["w"] <= 24
            and g["x"] >= 0
            and g["x"] + g["w"] <= 24
            and g["y"] >= 0
        ):
            errors.append(f"{where}: gridPos {g} is outside the 24-column grid")
        if "interval" in panel and not DURATION_RE.match(str(panel["interval"])):
            errors.append(f"{where}: interval {panel['interval']!r} is not a duration")
        for ref in template_references(str(panel.get("title", ""))):
            if ref not in known:
                errors.append(f"{where}: title uses unknown variable ${ref}")
        if ptype == "row":
            if isinstance(g, dict) and (g.get("w") != 24 or g.get("h") != 1):
                errors.append(f"{where}: a row spans the full width with height 1")
            if not isinstance(panel.get("collapsed"), bool):
                errors.append(f"{where}: row needs collapsed true/false")
            elif not panel["collapsed"] and panel.get("panels"):
                errors.append(f"{where}: an expanded row keeps its panels at top level")
            continue
        if ptype == "text":
            continue
        errors += _ds_ref_errors(where, panel.get("datasource"), datasources)
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{where}: needs at least one target (query)")
            continue
        refids: set[str] = set()
        for target in targets:
            ds = target_datasource(panel, target) if isinstance(target, dict) else {}
            if isinstance(target, dict) and "datasource" in target:
                errors += _ds_ref_errors(f"{where} target", target["datasource"], datasources)
            ds_type = datasources.get(ds.get("uid", ""), {}).get("type", ds.get("type"))
            errors += _check_target(where, target, {"type": ds_type}, refids)
            if isinstance(target, dict):
                for key in ("expr", "rawSql", "legendFormat"):
                    for ref in template_references(str(target.get(key, ""))):
                        if ref in known:
                            continue
                        if key == "rawSql" and ref in POSTGRES_MACROS:
                            continue
                        errors.append(f"{where} {target.get('refId')}: unknown variable ${ref}")
        errors += _check_field_config(where, panel.get("fieldConfig"))
        if not isinstance(panel.get("options", {}), dict):
            errors.append(f"{where}: options must be an object")
        for t in panel.get("transformations", []):
            if not isinstance(t.get("id"), str):
                errors.append(f"{where}: transformation without id")
    top = [p for p in panels if isinstance(p.get("gridPos"), dict) and isinstance(p.get("id"), int)]
    with contextlib.suppress(KeyError, TypeError):
        errors += _grid_overlaps(top)
    return errors


# Values substituted for PromQL parsing (the real values come from Grafana at query time).
PROMQL_SAMPLE_VALUES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}


def promql_for_parsing(expr: str, variables: set[str]) -> str:
    """A dashboard PromQL expression with template variables replaced by parseable values (a
    multi-value variable becomes a regex alternation, as Grafana renders it)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        if name in PROMQL_SAMPLE_VALUES:
            return PROMQL_SAMPLE_VALUES[name]
        if name in variables:
            return "(a|b)"
        return m.group(0)

    return TEMPLATE_VAR_RE.sub(repl, expr)


# --- Grafana's SQL expansion (frontend variables, then backend macros) --------------------------


def parse_grafana_interval(text: str) -> float:
    """gtime.ParseInterval: '1m', '30s', '1h', '1d', '1w', '1y', '500ms' → seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text.strip().strip("'"))
    if m is None:
        raise ValueError(f"error parsing interval {text}")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return float(m.group(1)) * factor[m.group(2)]


def format_grafana_interval(seconds: float) -> str:
    """gtime.FormatInterval."""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(1, int(seconds * 1000))}ms"


def _go_number(value: float) -> str:
    """fmt %v of a float64 (integral values print without a fraction)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _rfc3339(ts: datetime) -> str:
    text = ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


@dataclass
class SqlVariable:
    """A dashboard variable's state: its definition, options and current selection."""

    definition: dict[str, Any]
    options: list[tuple[str, str]] = field(default_factory=list)  # (text, value)
    selected: list[str] | None = None  # None = "All"

    @property
    def name(self) -> str:
        return str(self.definition["name"])


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def format_sql_variable(var: SqlVariable) -> str:
    """What Grafana's SQL data source inserts for ``$var`` (SqlDatasource.interpolateVariable,
    with templateSrv's handling of "All": a custom allValue is inserted raw, otherwise All means
    every option)."""
    d = var.definition
    if var.selected is None:
        if d.get("allValue") not in (None, ""):
            return str(d["allValue"])
        values = [v for _, v in var.options]
    else:
        values = list(var.selected)
    if d.get("multi") or d.get("includeAll"):
        return ",".join(quote_literal(v) for v in values)
    return values[0].replace("'", "''") if values else ""


def expand_sql(
    raw: str,
    variables: Mapping[str, SqlVariable],
    start: datetime,
    end: datetime,
    interval_s: float,
    timescaledb: bool = False,
) -> str:
    """Expand a Grafana PostgreSQL query exactly as Grafana would before sending it: template
    variables (frontend), then sqleng's global substitutions, then the PostgreSQL macros."""
    interval_text = format_grafana_interval(interval_s)
    builtins = {
        "__interval": interval_text,
        "__interval_ms": str(int(interval_s * 1000)),
        "__range_s": str(int((end - start).total_seconds())),
        "__range_ms": str(int((end - start).total_seconds() * 1000)),
        "__range": format_grafana_interval((end - start).total_seconds()),
        "__from": str(int(start.timestamp() * 1000)),
        "__to": str(int(end.timestamp() * 1000)),
    }

    def repl_var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        if name in variables:
            return format_sql_variable(variables[name])
        if name in builtins:
            return builtins[name]
        return m.group(0)  # macros ($__timeFilter(...)) are the backend's business

    sql = TEMPLATE_VAR_RE.sub(repl_var, raw)
    # sqleng.Interpolate
    sql = sql.replace("$__interval_ms", str(int(interval_s * 1000)))
    sql = sql.replace("$__interval", interval_text)
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(end.timestamp())))

    def macro(name: str, args: list[str]) -> str:
        need = {
            "__time",
            "__timeEpoch",
            "__timeFilter",
            "__unixEpochFilter",
            "__unixEpochNanoFilter",
        }
        if name in need and not args[0]:
            raise ValueError(f"missing time column argument for macro {name}")
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias", "__unixEpochGroup", "__unixEpochGroupAlias"):
            if len(args) < 2:
                raise ValueError(f"macro {name} needs time column and interval")
            seconds = parse_grafana_interval(args[1])
            n = _go_number(seconds)
            if name.startswith("__timeGroup"):
                expr = (
                    f"time_bucket('{seconds:.3f}s',{args[0]})"
                    if timescaledb
                    else f"floor(extract(epoch from {args[0]})/{n})*{n}"
                )
            else:
                expr = f"floor(({args[0]})/{n})*{n}"
            return expr + (' AS "time"' if name.endswith("Alias") else "")
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        if name == "__unixEpochNanoFilter":
            return f"{args[0]} >= {_nanos(start)} AND {args[0]} <= {_nanos(end)}"
        if name == "__unixEpochNanoFrom":
            return str(_nanos(start))
        if name == "__unixEpochNanoTo":
            return str(_nanos(end))
        raise ValueError(f"unknown macro {name!r}")

    def repl_macro(m: re.Match[str]) -> str:
        name = m.group(1)
        # pre-5.3 compatibility: "$__timeGroup(...)," means $__timeGroupAlias
        if name == "__timeGroup" and sql[m.end() : m.end() + 1] == ",":
            name = "__timeGroupAlias"
        return macro(name, [a.strip(" ") for a in m.group(2).split(",")])

    return SQL_MACRO_RE.sub(repl_macro, sql)


def _nanos(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


# --- demo data for the SQL panels ---------------------------------------------------------------

DEMO_PROJECTS = ((1, "default"), (2, "research"))
DEMO_SERVICES = ("chat-api", "rag-worker")
DEMO_MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"))
DEMO_ENVIRONMENTS = ("production", "")
DEMO_USERS = ("alice", "bob", "carol", "dave", "erin")
# Tables the dashboards read; grafana_reader needs SELECT on exactly these.
GRAFANA_TABLES = ("projects", "spans", "traces", "rollups_1m", "rollups_1m_latency")


@dataclass
class DemoData:
    """What was inserted, for checking panel results against."""

    rollups: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[tuple[Any, ...], dict[int, int]] = field(default_factory=dict)
    spans: int = 0
    error_spans: int = 0


def insert_demo_data(
    conn: Any, now: datetime, bucket_index: Callable[[float], int], hours: int = 6
) -> DemoData:
    """Synthetic but realistic rows in projects, rollups_1m, rollups_1m_latency, spans and
    traces (plain SQL, deterministic). ``conn`` is a psycopg connection."""
    import random
    from decimal import Decimal

    rng = random.Random(20261126)
    demo = DemoData()
    end_s = int(now.timestamp()) // 60 * 60
    with conn.cursor() as cur:
        for pid, name in DEMO_PROJECTS:
            cur.execute(
                "INSERT INTO projects (project_id, name, created_at, settings) "
                "VALUES (%s, %s, now(), '{}')",
                (pid, name),
            )
        rollup_rows = []
        latency_rows = []
        for minute in range(hours * 60, 0, -3):
            bucket = end_s - minute * 60
            for pid, _ in DEMO_PROJECTS:
                for service in DEMO_SERVICES:
                    combos = [
                        (p, m, "chat", env) for p, m in DEMO_MODELS for env in DEMO_ENVIRONMENTS
                    ]
                    combos.append(("", "", "", "production"))  # non-LLM spans (HTTP, DB, tools)
                    for provider, model, operation, env in combos:
                        requests = rng.randint(1, 12)
                        errors = sum(rng.random() < 0.06 for _ in range(requests))
                        scale = {
                            "gpt-4o": 900.0,
                            "gpt-4o-mini": 400.0,
                            "claude-sonnet-4": 1500.0,
                            "": 20.0,
                        }[model]
                        durations = [rng.lognormvariate(0, 0.6) * scale for _ in range(requests)]
                        inp = rng.randint(100, 3000) * requests if model else 0
                        out = rng.randint(20, 800) * requests if model else 0
                        cost = (
                            (
                                Decimal(inp) * Decimal("0.0000025")
                                + Decimal(out) * Decimal("0.00001")
                            ).quantize(Decimal("0.0000000001"))
                            if model
                            else Decimal(0)
                        )
                        row = {
                            "project_id": pid,
                            "bucket_start_unix_s": bucket,
                            "service_name": service,
                            "provider": provider,
                            "model": model,
                            "operation": operation,
                            "environment": env,
                            "requests": requests,
                            "errors": errors,
                            "input_tokens": inp,
                            "output_tokens": out,
                            "cache_read_tokens": inp // 4 if model else 0,
                            "cache_write_tokens": inp // 20 if model else 0,
                            "reasoning_tokens": out // 10 if model == "gpt-4o" else 0,
                            "cost_usd": cost,
                            "duration_ms_sum": sum(durations),
                        }
                        demo.rollups.append(row)
                        rollup_rows.append(tuple(row.values()))
                        hist: dict[int, int] = {}
                        for d in durations:
                            hist[bucket_index(d)] = hist.get(bucket_index(d), 0) + 1
                        key = (pid, bucket, service, provider, model, operation, env)
                        demo.latency[key] = hist
                        latency_rows += [(*key, i, c) for i, c in hist.items()]
        cur.executemany(
            "INSERT INTO rollups_1m (project_id, bucket_start_unix_s, service_name, provider, "
            "model, operation, environment, requests, errors, input_tokens, output_tokens, "
            "cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, duration_ms_sum) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rollup_rows,
        )
        cur.executemany(
            "INSERT INTO rollups_1m_latency (project_id, bucket_start_unix_s, service_name, "
            "provider, model, operation, environment, bucket_index, count) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            latency_rows,
        )

        span_rows = []
        start_ns = (end_s - hours * 3600) * 1_000_000_000
        for t in range(120):
            pid = DEMO_PROJECTS[t % 2][0]
            trace_id = f"{t + 1:032x}"
            user = DEMO_USERS[t % len(DEMO_USERS)]
            service = DEMO_SERVICES[t % 2]
            span_env = DEMO_ENVIRONMENTS[t % 2] or None
            t0 = start_ns + rng.randint(0, hours * 3600 - 120) * 1_000_000_000
            root_dur = rng.uniform(500, 8000)
            spans: list[tuple[Any, ...]] = [
                (f"{t + 1:08x}00000001", None, "POST /chat", 2, None, None, 0, 0, None, 0, root_dur)
            ]
            for k in range(rng.randint(1, 4)):
                provider, model = DEMO_MODELS[(t + k) % len(DEMO_MODELS)]
                failed = rng.random() < 0.1
                inp, out = rng.randint(100, 4000), rng.randint(10, 900)
                cost = (
                    Decimal(inp) * Decimal("0.0000025") + Decimal(out) * Decimal("0.00001")
                ).quantize(Decimal("0.0000000001"))
                spans.append(
                    (
                        f"{t + 1:08x}{k + 2:08x}",
                        f"{t + 1:08x}00000001",
                        f"chat {model}",
                        3,
                        provider,
                        model,
                        inp,
                        out,
                        cost,
                        2 if failed else 1,
                        rng.uniform(200, 5000),
                    )
                )
            for span_id, parent, name, kind, provider, model, inp, out, cost, status, dur in spans:
                msg = "RateLimitError: 429 Too Many Requests" if status == 2 else None
                span_rows.append(
                    (
                        pid,
                        trace_id,
                        span_id,
                        parent,
                        name,
                        kind,
                        t0,
                        t0 + int(dur * 1e6),
                        dur,
                        status,
                        msg,
                        service,
                        span_env,
                        "demo",
                        provider,
                        "chat" if model else None,
                        model,
                        model,
                        inp or None,
                        out or None,
                        None,
                        None,
                        None,
                        (inp + out) or None,
                        None,
                        None,
                        cost,
                        None,
                        "stop" if model else None,
                        f"session-{t // 3}",
                        user,
                        None,
                        None,
                        "{}",
                        "{}",
                        "[]",
                        "[]",
                    )
                )
                demo.spans += 1
                demo.error_spans += status == 2
        cur.executemany(
            "INSERT INTO spans (project_id, trace_id, span_id, parent_span_id, name, kind, "
            "start_time_unix_nano, end_time_unix_nano, duration_ms, status_code, status_message, "
            "service_name, environment, scope_name, provider, operation, request_model, "
            "response_model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
            "reasoning_tokens, total_tokens, input_cost_usd, output_cost_usd, total_cost_usd, "
            "time_to_first_token_ms, finish_reason, session_id, user_id, prompt, completion, "
            "attributes, resource_attributes, events, links) VALUES ("
            + ", ".join(["%s"] * 37)
            + ")",
            span_rows,
        )
        cur.execute("""
            INSERT INTO traces (project_id, trace_id, start_time_unix_nano, end_time_unix_nano,
                duration_ms, root_span_id, root_span_name, span_count, llm_call_count, error_count,
                input_tokens, output_tokens, total_tokens, total_cost_usd, service_name,
                environment, user_id, session_id)
            SELECT project_id, trace_id, min(start_time_unix_nano), max(end_time_unix_nano),
                (max(end_time_unix_nano) - min(start_time_unix_nano)) / 1e6,
                min(span_id) FILTER (WHERE parent_span_id IS NULL),
                min(name) FILTER (WHERE parent_span_id IS NULL),
                count(*), count(*) FILTER (WHERE response_model IS NOT NULL),
                count(*) FILTER (WHERE status_code = 2),
                coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
                coalesce(sum(total_tokens), 0), sum(total_cost_usd), min(service_name),
                min(environment), min(user_id), min(session_id)
            FROM spans GROUP BY project_id, trace_id""")
    conn.commit()
    return demo


# --- throw-away PostgreSQL (for tests that stop their database) ----------------------------------


class ThrowawayPostgres:
    """A private PostgreSQL 15 cluster on a free port, run as the postgres user. The shared
    server on 5432 is never touched."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="obs-monitoring-pg-"))
        self.port = free_port()
        self.data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)

    def _as_postgres(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(["runuser", "-u", "postgres", "--", *cmd], timeout=timeout)

    def start(self) -> ThrowawayPostgres:
        for exe in ("initdb", "pg_ctl"):
            if not (PG_BIN / exe).exists():
                raise AssertionError(f"{PG_BIN / exe} is missing (postgresql-15)")
        res = self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        assert res.returncode == 0, res.stdout
        return self.resume()

    def resume(self) -> ThrowawayPostgres:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
            "-c full_page_writes=off"
        )
        res = self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        assert res.returncode == 0, res.stdout + self.log()
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
            )

    def log(self) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


# --- fake notification receivers (loopback only) -------------------------------------------------


@dataclass
class Received:
    """Notifications that reached the fake Slack/PagerDuty/SMTP endpoints."""

    http: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path, JSON body)
    mails: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for p, body in self.http if p == path]

    def all_mails(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.mails)


class _WebhookHandler(BaseHTTPRequestHandler):
    received: Received

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        with self.received.lock:
            self.received.http.append((self.path, body))
        if self.path.startswith("/pagerduty"):
            payload = json.dumps(
                {
                    "status": "success",
                    "message": "Event processed",
                    "dedup_key": body.get("dedup_key", "x"),
                }
            ).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
        else:
            payload = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough ESMTP for Alertmanager's Go client: EHLO with AUTH PLAIN/LOGIN, MAIL, RCPT,
    DATA, QUIT. Records the credentials and the message."""

    received: Received

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        mail: dict[str, Any] = {"rcpt": [], "auth": None}
        self._reply("220 fake-smtp ESMTP")
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            cmd = line.split(" ", 1)[0].upper()
            if cmd in ("EHLO", "HELO"):
                self._reply("250-fake-smtp")
                self._reply("250-AUTH PLAIN LOGIN")
                self._reply("250 8BITMIME")
            elif cmd == "AUTH":
                parts = line.split(" ")
                if parts[1].upper() == "PLAIN":
                    if len(parts) > 2:
                        token = parts[2]
                    else:
                        self._reply("334 ")
                        token = self.rfile.readline().decode().strip()
                    _, user, password = base64.b64decode(token).decode().split("\x00", 2)
                else:  # LOGIN
                    self._reply("334 VXNlcm5hbWU6")
                    user = base64.b64decode(self.rfile.readline().strip()).decode()
                    self._reply("334 UGFzc3dvcmQ6")
                    password = base64.b64decode(self.rfile.readline().strip()).decode()
                mail["auth"] = (user, password)
                self._reply("235 2.7.0 Authentication successful")
            elif cmd == "MAIL":
                mail["from"] = line[len("MAIL FROM:") :].strip()
                self._reply("250 OK")
            elif cmd == "RCPT":
                mail["rcpt"].append(line[len("RCPT TO:") :].strip())
                self._reply("250 OK")
            elif cmd == "DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    data = self.rfile.readline()
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    if data.startswith(b"."):  # RFC 5321 4.5.2: undo the client's dot-stuffing
                        data = data[1:]
                    lines.append(data.decode(errors="replace"))
                mail["data"] = "".join(lines)
                with self.received.lock:
                    self.received.mails.append(dict(mail))
                mail = {"rcpt": [], "auth": mail["auth"]}
                self._reply("250 OK queued")
            elif cmd == "QUIT":
                self._reply("221 Bye")
                return
            else:
                self._reply("250 OK")


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def fake_receivers() -> Iterator[tuple[Received, str, int]]:
    """A fake Slack/PagerDuty HTTP endpoint and a fake SMTP server on loopback.
    Yields (received, http_base_url, smtp_port)."""
    received = Received()
    webhook_handler = type("H", (_WebhookHandler,), {"received": received})
    smtp_handler = type("S", (_SmtpHandler,), {"received": received})
    http = ThreadingHTTPServer(("127.0.0.1", 0), webhook_handler)
    smtp = _ThreadingTCPServer(("127.0.0.1", 0), smtp_handler)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (http, smtp)]
    for t in threads:
        t.start()
    try:
        yield received, f"http://127.0.0.1:{http.server_address[1]}", int(smtp.server_address[1])
    finally:
        for s in (http, smtp):
            s.shutdown()
            s.server_close()


@dataclass
class ReceiverSecrets:
    smtp_password: str = "smtp-secret-pw"
    pagerduty_routing_key: str = "R0UT1NGKEY0123456789abcdef012345"
    slack_path: str = "/slack/T000/B000/XXXX"


def alertmanager_test_config(
    secrets_dir: Path, http_base: str, smtp_port: int, secrets: ReceiverSecrets
) -> dict[str, Any]:
    """docker/alertmanager/alertmanager.yml pointed at the loopback fakes. Routing, inhibition
    and receiver definitions are untouched; only endpoints, secret paths, TLS to the fake SMTP
    server and the grouping delays (30 s → 1 s) change. The SMTP password file is written
    without a trailing newline, as docs/MONITORING.md says (Alertmanager before 0.27 sends it
    verbatim); the others with one, which Alertmanager trims."""
    config = load_yaml(ALERTMANAGER_CONFIG)
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (secrets_dir / "smtp_password").write_text(secrets.smtp_password)
    (secrets_dir / "pagerduty_routing_key").write_text(secrets.pagerduty_routing_key + "\n")
    (secrets_dir / "slack_webhook_url").write_text(f"{http_base}{secrets.slack_path}\n")

    def resecret(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    str(v).replace("/run/secrets/", f"{secrets_dir}/")
                    if k.endswith("_file")
                    else resecret(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [resecret(v) for v in node]
        return node

    config = resecret(config)
    g = config["global"]
    g["smtp_smarthost"] = f"127.0.0.1:{smtp_port}"
    g["smtp_require_tls"] = False
    g["pagerduty_url"] = f"{http_base}/pagerduty/v2/enqueue"

    def speed_up(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            speed_up(child)

    speed_up(config["route"])
    return dict(config)


# --- Markdown ------------------------------------------------------------------------------------


def markdown_metric_rows(text: str) -> dict[str, list[str]]:
    """Rows `| `name` | type | labels | meaning |` of the Metrics reference table."""
    section = text.split("## Metrics reference", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
    env.update(extra or {})
    return env
