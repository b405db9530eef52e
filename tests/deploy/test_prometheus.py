"""Prometheus configuration and alert rules: promtool checks, promtool unit tests, and mutation
checks showing that the unit tests notice an alert that never fires or always fires."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.monitoring_helpers import (
    MONITORING_DOC,
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    alert_rules,
    load_yaml,
    markdown_metric_rows,
    rule_files,
    run,
    tool,
)

RULES = alert_rules()
TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))


def test_promtool_check_config() -> None:
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout
    assert "is valid prometheus config file syntax" in result.stdout


def test_promtool_check_rules() -> None:
    result = run([tool("promtool"), "check", "rules", *map(str, rule_files())])
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("SUCCESS") == len(rule_files())


def test_promtool_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", *map(str, TEST_FILES)], timeout=120)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)
    assert "FAILED" not in result.stdout


def test_scrape_targets_and_alerting() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["rules/*.yml"]
    [am] = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static = {
        name: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for name, job in jobs.items()
    }
    assert static["node-exporter"] == ["node-exporter:9100"]
    assert static["postgres-exporter"] == ["postgres-exporter:9187"]
    assert static["redis-exporter"] == ["redis-exporter:9121"]
    assert static["alertmanager"] == ["alertmanager:9093"]
    assert static["prometheus"] == ["prometheus:9090"]
    # The servers: every replica behind the compose service names, port 8000, /metrics.
    servers = {}
    for name in ("observatory-api", "observatory-collector"):
        job = jobs[name]
        assert job["metrics_path"] == "/metrics"
        [sd] = job["dns_sd_configs"]
        assert (sd["type"], sd["port"]) == ("A", 8000)
        servers[name] = sd["names"]
    assert servers == {
        "observatory-api": ["api-server", "api"],
        "observatory-collector": ["collector"],
    }


def test_every_alert_follows_the_conventions() -> None:
    doc = MONITORING_DOC.read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+\s+(.+)$", doc, flags=re.M)}
    assert len(RULES) >= 30
    for rule in RULES:
        where = f"{rule['_file']}: {rule['alert']} ({rule['labels'].get('severity')})"
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]), where
        assert rule["labels"]["severity"] in ("critical", "warning"), where
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, where
        assert rule.get("for"), f"{where}: every alert needs a 'for' against flapping"
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/MONITORING.md#"), where
        assert runbook.split("#", 1)[1] in anchors, f"{where}: no section for {runbook}"
    pairs = [(r["alert"], r["labels"]["severity"]) for r in RULES]
    assert len(pairs) == len(set(pairs)), "an alert is defined twice with the same severity"


def _slug(heading: str) -> str:
    """GitHub's heading anchors."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_the_guides_alerts_exist() -> None:
    """Every alert docs and the issue promise, on the metric it must watch."""
    exprs: dict[str, str] = {}
    for r in RULES:
        exprs[r["alert"]] = exprs.get(r["alert"], "") + r["expr"]
    required = {
        "HostHighCpuUsage": "node_cpu_seconds_total",
        "HostHighMemoryUsage": "node_memory_MemAvailable_bytes",
        "HostDiskSpaceLow": "node_filesystem_avail_bytes",
        "PostgresDown": "pg_up",
        "ObservatoryDatabaseDown": "observatory_db_up",
        "ObservatoryApiHighErrorRate": "http_requests_total",
        "ObservatoryLowCacheHitRate": "cache_requests_total",
        "BackupFailed": "observatory_backup_last_status",
        "BackupStale": "observatory_backup_last_success_timestamp_seconds",
        "RestoreTestFailed": "observatory_restore_test_last_status",
        "RestoreTestStale": "observatory_restore_test_last_success_timestamp_seconds",
        "ObservatoryWriterQueueSaturated": "observatory_writer_queue_depth",
        "ObservatorySpansRejected": "observatory_spans_rejected_total",
        "LlmSpendRateHigh": "observatory_llm_cost_usd_total",
        "LlmErrorRatioHigh": "observatory_llm_errors_total",
    }
    for alert, metric in required.items():
        assert alert in exprs, alert
        assert metric in exprs[alert], (alert, metric)
    assert "observatory_llm_requests_total" in exprs["LlmErrorRatioHigh"]


def test_rules_use_only_metrics_the_server_exports() -> None:
    from observatory import metrics

    exported = set(metrics.metric_names())
    used = set()
    for rule in RULES:
        for name in re.findall(r"\b((?:http|db_query|cache|observatory)_[a-z0-9_]+)", rule["expr"]):
            if not name.startswith(("observatory_backup_", "observatory_restore_test_")):
                used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used, "no server metric in the rules"
    assert used <= exported, sorted(used - exported)


def _test_cases() -> list[dict[str, Any]]:
    cases = []
    for path in TEST_FILES:
        doc = load_yaml(path)
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.append({**case, "_file": path.name, "_rule_files": doc["rule_files"]})
    return cases


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = _test_cases()
    for rule in RULES:
        name, severity = rule["alert"], rule["labels"]["severity"]
        fired = [
            c
            for c in cases
            if c["alertname"] == name
            and any(a["exp_labels"].get("severity") == severity for a in c.get("exp_alerts") or [])
        ]
        quiet = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
        assert fired, f"no unit test shows {name} ({severity}) firing"
        assert quiet, f"no unit test shows {name} staying quiet"


# --- mutation checks: the unit tests must notice a broken rule -----------------------------------


def _mutation_suite(tmp_path: Path) -> dict[str, list[str]]:
    """For every alert rule, two broken copies of its rule file (the rule never fires / fires
    at once, always) with the unit-test groups that exercise it. Returns label -> test files."""
    suites: dict[str, list[str]] = {}
    for path in rule_files():
        doc = load_yaml(path)
        alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
        for i, rule in enumerate(alerts):
            for kind, expr, for_ in (
                ("never", "vector(1) == 0", None),
                ("always", "vector(1)", "0s"),
            ):
                label = f"{rule['alert']} ({rule['labels']['severity']}) {kind} fires"
                root = tmp_path / f"{path.stem}-{i}-{kind}"
                (root / "rules").mkdir(parents=True)
                (root / "tests").mkdir()
                mutated = copy.deepcopy(doc)
                target = [r for g in mutated["groups"] for r in g["rules"] if "alert" in r][i]
                target["expr"] = expr
                if for_ is not None:
                    target["for"] = for_
                (root / "rules" / path.name).write_text(yaml.safe_dump(mutated, sort_keys=False))
                for test_file in TEST_FILES:
                    test_doc = load_yaml(test_file)
                    if f"../rules/{path.name}" not in test_doc["rule_files"]:
                        continue
                    groups = []
                    for group in test_doc["tests"]:
                        cases = [
                            c
                            for c in group.get("alert_rule_test", [])
                            if c["alertname"] == rule["alert"]
                        ]
                        if cases:
                            groups.append({**group, "alert_rule_test": cases})
                    if groups:
                        out = root / "tests" / test_file.name
                        out.write_text(yaml.safe_dump({**test_doc, "tests": groups}))
                        suites.setdefault(label, []).append(str(out))
    return suites


def test_unit_tests_catch_rules_that_never_or_always_fire(tmp_path: Path) -> None:
    """Mutation check: break each rule in turn; its unit tests must fail."""
    suites = _mutation_suite(tmp_path)
    assert len(suites) == 2 * len(RULES), "every rule needs unit tests that exercise it"
    files = [f for fs in suites.values() for f in fs]
    result = run([tool("promtool"), "test", "rules", *files], timeout=300)
    outcome: dict[str, str] = {}
    current = None
    for line in result.stdout.splitlines():
        m = re.match(r"Unit Testing:\s+(\S+)", line)
        if m:
            current = m.group(1)
        elif current and line.strip() in ("SUCCESS", "FAILED:"):
            outcome[current] = line.strip()
            current = None
    assert set(outcome) == set(files), result.stdout[-3000:]
    survivors = [label for label, fs in suites.items() if all(outcome[f] == "SUCCESS" for f in fs)]
    assert survivors == [], "unit tests still pass with these broken rules"


# The metrics the brief lists; the lead's docs test keeps the table complete.
BRIEF_METRICS = {
    "http_requests_total",
    "http_request_duration_seconds",
    "db_query_duration_seconds",
    "cache_hit_rate",
    "cache_requests_total",
    "observatory_spans_accepted_total",
    "observatory_spans_rejected_total",
    "observatory_writer_queue_depth",
    "observatory_writer_batch_commit_seconds",
    "observatory_db_up",
    "observatory_llm_requests_total",
    "observatory_llm_tokens_total",
    "observatory_llm_cost_usd_total",
    "observatory_llm_errors_total",
    "observatory_unknown_model_price_total",
}


def test_metrics_reference_matches_the_server() -> None:
    """docs/MONITORING.md's table: every row is an exported metric with its real type and
    labels, and the brief's metrics are all there."""
    from prometheus_client import Counter, Gauge, Histogram

    from observatory import metrics

    rows = markdown_metric_rows(MONITORING_DOC.read_text())
    assert set(rows) >= BRIEF_METRICS
    declared = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            declared[value._name + ("_total" if isinstance(value, Counter) else "")] = value
    assert set(rows) <= set(declared), sorted(set(rows) - set(declared))
    for name, (mtype, labels, meaning) in rows.items():
        metric = declared[name]
        assert mtype == metric._type, name
        documented = [] if labels == "—" else [label.strip() for label in labels.split(",")]
        assert documented == list(metric._labelnames), name
        assert meaning, name
