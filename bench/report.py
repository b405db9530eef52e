"""The printed table: every figure next to the issue's target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MIB_PER_MB = 1_000_000 / 1_048_576  # targets are in MB; we measure MiB
RSS_LIMIT_MIB = 400 * MIB_PER_MB
# "Flat" over the soak: the fitted trend of the total RSS stays under this many MiB per minute.
FLAT_SLOPE_MIB_PER_MIN = 2.0

Row = tuple[str, str, str, str, str]


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        text = f"{value:,.{digits}f}"
        return f"{text} {unit}".strip()
    return str(value)


def _check(value: Any, ok: Callable[[Any], bool]) -> str:
    if value is None:
        return "?"
    return "yes" if ok(value) else "NO"


def _ingest_rows(name: str, r: dict[str, Any], min_rate: float | None) -> list[Row]:
    d = r["driver"]
    rate = d["spans_per_s"]
    p99 = d["attempt_latency"]["p99_ms"]
    res = r["resources"]
    rows: list[Row] = [
        (
            name,
            "spans/s (acked = readable)",
            _fmt(rate),
            f">= {min_rate:,.0f}" if min_rate else "",
            _check(rate, lambda v: v >= min_rate) if min_rate else "",
        ),
        (
            name,
            "request latency p50/p95/p99",
            f"{_fmt(d['attempt_latency']['p50_ms'])}/{_fmt(d['attempt_latency']['p95_ms'])}/"
            f"{_fmt(p99)} ms",
            "p99 <= 500 ms" if r["database"] == "postgresql" else "",
            _check(p99, lambda v: v <= 500) if r["database"] == "postgresql" else "",
        ),
        (
            name,
            "requests ok/failed, retried",
            f"{d['requests'] - d['requests_failed']}/{d['requests_failed']}, "
            f"{d['retried_attempts']}",
            "",
            "",
        ),
        (
            name,
            "acked spans readable",
            f"{r['verify']['readable_acked_spans']:,}/{r['verify']['acked_spans']:,}",
            "all",
            "yes" if r["verify"]["ok"] else "NO",
        ),
        (
            name,
            "server RSS max (per process)",
            _fmt(res["max_rss_mib_per_process"], "MiB"),
            "<= 400 MB",
            _check(res["max_rss_mib_per_process"], lambda v: v <= RSS_LIMIT_MIB),
        ),
        (
            name,
            "RSS trend; server CPU; driver CPU",
            f"{_fmt(res['slope_mib_per_min_total'], 'MiB/min', 1)}; "
            f"{_fmt(res['cpu_cores_busy'], 'cores', 2)}; "
            f"{_fmt(r.get('driver_cpu_seconds'), 's', 1)}",
            "",
            "",
        ),
    ]
    return rows


QUERY_TARGETS_PG = {
    "analytics_summary": 100,
    "analytics_timeseries": 100,
    "trace_list": 100,
    "trace_detail": 20,
}
QUERY_TARGETS_SQLITE = dict.fromkeys(QUERY_TARGETS_PG, 200)


def _query_rows(name: str, r: dict[str, Any], targets: dict[str, float]) -> list[Row]:
    rows: list[Row] = []
    if "load" in r:
        load = r["load"]
        rows.append(
            (
                name,
                "bulk load",
                f"{load['spans']:,} spans in {load['seconds']:,.0f} s "
                f"({load['spans_per_s']:,.0f}/s), analyze {load['analyze_seconds']} s",
                "",
                "",
            )
        )
    for label in ("cold", "warm"):
        part = r.get(label)
        if not part:
            continue
        for kind, stats in part.items():
            if not isinstance(stats, dict) or "p95_ms" not in stats:
                continue
            limit = targets.get(kind)
            rows.append(
                (
                    name,
                    f"{kind} {label} p50/p95/p99",
                    f"{_fmt(stats['p50_ms'], digits=1)}/{_fmt(stats['p95_ms'], digits=1)}/"
                    f"{_fmt(stats['p99_ms'], digits=1)} ms"
                    + (f" ({stats['failed']} failed)" if stats.get("failed") else ""),
                    f"p95 <= {limit} ms" if limit else "",
                    _check(stats["p95_ms"], lambda v, lim=limit: v <= lim) if limit else "",
                )
            )
    return rows


def rows_for(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "ingest-pg" in results:
        rows += _ingest_rows("ingest pg", results["ingest-pg"], 20_000)
    if "ingest-sqlite" in results:
        rows += _ingest_rows("ingest sqlite", results["ingest-sqlite"], 10_000)
    if "scaling" in results:
        s = results["scaling"]
        rows += _ingest_rows("pg 2 servers", s["two_processes"], None)
        rows += _ingest_rows("pg 1 srv x2 wrk", s["one_server_two_workers"], None)
        rows.append(
            ("scaling", "2 servers / 1 (spans/s)", _fmt(s["ratio_two_processes"], "x", 2), "", "")
        )
        if "ratio_two_processes_one_core" in s:
            rows += _ingest_rows("pg 1 srv 1 core", s["one_process_one_core"], None)
            rows += _ingest_rows("pg 2 srv 1 core", s["two_processes_one_core"], None)
            rows.append(
                (
                    "scaling",
                    "2 servers / 1, ingest in-process",
                    _fmt(s["ratio_two_processes_one_core"], "x", 2),
                    ">= 1.6x",
                    _check(s["ratio_two_processes_one_core"], lambda v: v >= 1.6),
                )
            )
        rows.append(("scaling", "--workers 2 / 1", _fmt(s["ratio_two_workers"], "x", 2), "", ""))
    if "query-pg" in results:
        rows += _query_rows("query pg", results["query-pg"], QUERY_TARGETS_PG)
    if "query-sqlite" in results:
        rows += _query_rows("query sqlite", results["query-sqlite"], QUERY_TARGETS_SQLITE)
    if "soak" in results:
        soak = results["soak"]
        rows += _ingest_rows("soak pg", soak, None)
        slope = soak["resources"]["slope_mib_per_min_after_first_fifth"]
        rows.append(
            (
                "soak pg",
                "RSS trend after the first fifth",
                _fmt(slope, "MiB/min", 2),
                f"<= {FLAT_SLOPE_MIB_PER_MIN} MiB/min",
                _check(slope, lambda v: v <= FLAT_SLOPE_MIB_PER_MIN),
            )
        )
    if "peer" in results:
        p = results["peer"]
        for database, entry in p["databases"].items():
            ours = entry["observatory"]["driver"]["spans_per_s"]
            ph = entry["phoenix"]
            rows.append(("peer " + database, "observatory spans/s", _fmt(ours), "", ""))
            rows.append(
                (
                    "peer " + database,
                    f"phoenix {p.get('phoenix_version')} readable spans/s",
                    _fmt(ph["readable_spans_per_s"], digits=1),
                    "",
                    "",
                )
            )
            rows.append(
                (
                    "peer " + database,
                    "phoenix acked spans/s, all readable after",
                    f"{_fmt(ph['acked_spans_per_s'])}, "
                    + (
                        f"{ph['all_acked_readable_after_s']} s"
                        if ph["all_acked_readable_after_s"] is not None
                        else f"not within {ph['drain_timeout_s']:.0f} s"
                    ),
                    "",
                    "",
                )
            )
            rows.append(
                (
                    "peer " + database,
                    "ratio observatory / phoenix",
                    _fmt(entry["ratio"], "x", 1),
                    ">= 100x",
                    _check(entry["ratio"], lambda v: v >= 100),
                )
            )
    return rows


def render(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, PostgreSQL "
        f"{m['postgresql']}, Python {m['python']}, commit {m.get('git_commit')}",
        f"load average at start {m['load_average_at_start']}, at end "
        f"{m.get('load_average_at_end')}",
    ]
    if m.get("postgresql_settings"):
        lines.append(
            "postgresql: " + ", ".join(f"{k}={v}" for k, v in m["postgresql_settings"].items())
        )
    lines.append("")
    rows = rows_for(document["results"])
    header: Row = ("suite", "metric", "value", "target", "met")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for suite, error in document.get("errors", {}).items():
        lines.append(f"{suite}: FAILED: {error}")
    return "\n".join(lines)
