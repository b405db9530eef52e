"""The benchmark instruments work: ``python -m bench --quick`` against real servers.

This checks that the bench produces a sensible report (load was driven, every acked span is
readable in the database, memory was sampled, query latencies were recorded); it never asserts
a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.report import render
from bench.workload import Workload, WorkloadConfig, trace_ids_of

ROOT = Path(__file__).resolve().parents[2]


def test_workload_is_seeded_and_ids_are_fresh_per_request() -> None:
    config = WorkloadConfig(spans_per_request=60, templates=2, seed=3)
    first, second = Workload(config), Workload(config)
    now = time.time_ns()
    assert first.body(5, now) == second.body(5, now)
    ids = [trace_ids_of(first.body(seq, now)) for seq in range(4)]
    assert all(len(batch) == 60 for batch in ids)
    prefixes = {tid[:16] for batch in ids for tid in batch}
    assert prefixes == {first.trace_prefix(seq).hex() for seq in range(4)}
    # Two requests from the same template share no trace id.
    assert not set(ids[0]) & set(ids[2])


def test_quick_bench_produces_a_sensible_report(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    work_dir = tmp_path / "work"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--suites",
        "ingest-pg,ingest-sqlite,query-sqlite",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--exporters",
        "2",
        "--spans-per-request",
        "200",
        "--sqlite-spans",
        "3000",
        "--query-requests",
        "3",
        "--results-dir",
        str(results_dir),
        "--work-dir",
        str(work_dir),
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    files = list(results_dir.glob("*.json"))
    assert len(files) == 1
    document = json.loads(files[0].read_text())
    assert document["errors"] == {}
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["postgresql"]

    for suite, database in (("ingest-pg", "postgresql"), ("ingest-sqlite", "sqlite")):
        result = document["results"][suite]
        assert result["database"] == database
        driver = result["driver"]
        assert driver["requests"] > 0
        assert driver["spans_acked"] > 0
        assert driver["spans_per_s"] > 0
        assert driver["attempt_latency"]["count"] >= driver["requests"]
        verify = result["verify"]
        assert verify["ok"] is True
        assert verify["readable_acked_spans"] == verify["acked_spans"]
        assert verify["stored_spans"] >= verify["acked_spans"]
        resources = result["resources"]
        assert resources["samples"] > 0
        assert resources["max_rss_mib_per_process"] > 10

    query = document["results"]["query-sqlite"]
    assert query["load"]["spans"] >= 3000
    assert query["trace_ids_sampled"] > 0
    for label in ("cold", "warm"):
        for kind in ("analytics_summary", "analytics_timeseries", "trace_list", "trace_detail"):
            stats = query[label][kind]
            assert stats["failed"] == 0, (label, kind)
            assert stats["count"] == 3
            assert stats["p95_ms"] is not None
            if kind != "trace_list":  # two filters may legitimately match nothing
                assert stats["rows_returned"] > 0, (label, kind)

    table = render(document)
    assert "ingest pg" in table and "trace_detail cold" in table
    assert "ingest pg" in done.stdout
