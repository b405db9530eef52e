"""Server memory while streaming a large export (issue: "a 1-million-span export keeps the
server's memory flat").

    .venv/bin/python -m bench.export_mem [--spans 1000000] [--format jsonl|csv|parquet]
        [--database-url postgresql://…]   (default: a fresh SQLite file)

Loads the spans through the same bulk path as the query benchmarks, starts a real
``observatory serve``, downloads ``GET /api/v1/export/spans`` in full while sampling the server's
RSS every half second, checks the number of exported spans, and prints a JSON report (also written
to bench/results/export-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.loader import LoadPlan, load, setup_database
from bench.servers import ResourceSampler, start_observatory

RESULTS = Path(__file__).resolve().parent / "results"


def run(spans: int, fmt: str, database_url: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="obs-export-mem-"))
    try:
        url = database_url or f"sqlite:///{work / 'observatory.db'}"
        key = "obs_bench_" + secrets.token_urlsafe(24)
        project_id = setup_database(url, work / "data", key)
        loaded = load(LoadPlan(database_url=url, spans=spans, processes=1), project_id)
        server = start_observatory(work / "data", url, key)
        try:
            sampler = ResourceSampler([server.pid], interval=0.5).start()
            received = 0
            lines = 0
            chunks = 0
            started = time.monotonic()
            with httpx.stream(
                "GET",
                f"{server.base_url}/api/v1/export/spans",
                params={"format": fmt},
                headers={"Authorization": f"Bearer {key}"},
                timeout=None,
            ) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    chunks += 1
                    received += len(chunk)
                    if fmt != "parquet":
                        lines += chunk.count(b"\n")
            seconds = time.monotonic() - started
            resources = sampler.stop()
        finally:
            server.stop()
        exported = lines - (1 if fmt == "csv" else 0) if fmt != "parquet" else None
        return {
            "spans_loaded": loaded.get("spans", spans),
            "format": fmt,
            "database": "postgresql" if url.startswith("postgresql") else "sqlite",
            "spans_exported": exported,
            "bytes": received,
            "chunks": chunks,
            "seconds": round(seconds, 1),
            "spans_per_s": round(spans / seconds) if seconds else None,
            "server_resources": resources,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export_mem", description=__doc__)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    report = run(args.spans, args.format, args.database_url)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"export-{stamp}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
