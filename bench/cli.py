"""``python -m bench``: run the suites, print a table, write bench/results/<timestamp>.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loader, peer, queries, report
from bench.driver import DriverConfig, DriverResult, run_load
from bench.servers import (
    DEFAULT_PG_ADMIN_URL,
    ResourceSampler,
    create_database,
    drop_database,
    observatory_servers,
    reset_database,
)
from bench.stats import machine_info
from bench.verify import count_acked
from bench.workload import Workload, WorkloadConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SUITES = ("ingest-pg", "ingest-sqlite", "scaling", "query-pg", "query-sqlite")
ALL_SUITES = (*DEFAULT_SUITES, "soak", "peer")


@dataclass(frozen=True)
class Options:
    suites: tuple[str, ...]
    duration_s: float
    warmup_s: float
    exporters: int
    gzip: bool
    spans_per_request: int
    templates: int
    seed: int
    pg_spans: int
    sqlite_spans: int
    days: int
    load_processes: int
    query_requests: int
    soak_s: float
    drain_timeout_s: float
    database_url: str | None
    pg_admin_url: str
    skip_load: bool
    sqlite_path: Path | None
    work_dir: Path
    keep_work_dir: bool
    results_dir: Path
    phoenix_venv: Path
    quick: bool


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="LLM Observatory benchmarks: ingest, scaling, dashboard queries, memory soak "
        "and the Phoenix comparison. Extra flags can come from BENCH_ARGS via `make bench`.",
    )
    p.add_argument(
        "--suites",
        help=f"comma list from {','.join(ALL_SUITES)} (default: {','.join(DEFAULT_SUITES)}; "
        "--soak and --peer select theirs)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    p.add_argument("--soak", action="store_true", help="run only the 10-minute memory soak")
    p.add_argument(
        "--peer",
        action="store_true",
        help="run Phoenix and ours on the same workload (ingest on SQLite and PostgreSQL)",
    )
    p.add_argument("--duration", type=float, help="sustained ingest seconds (default 60)")
    p.add_argument("--warmup", type=float, help="ingest seconds before measuring (default 5)")
    p.add_argument("--exporters", type=int, default=4, help="concurrent exporters (default 4)")
    p.add_argument("--gzip", action="store_true", help="gzip request bodies")
    p.add_argument("--spans-per-request", type=int, default=1000)
    p.add_argument("--templates", type=int, help="distinct request templates (default 8)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--pg-spans", type=float, help="spans loaded for PostgreSQL queries (10e6)")
    p.add_argument("--sqlite-spans", type=float, help="spans loaded for SQLite queries (1e6)")
    p.add_argument("--days", type=int, default=30, help="time range of the loaded data")
    p.add_argument("--load-processes", type=int, default=2, help="PostgreSQL loader processes")
    p.add_argument("--query-requests", type=int, help="requests per query kind (default 200)")
    p.add_argument("--soak-duration", type=float, help="soak seconds (default 600)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        help="peer: seconds to wait for acked spans to become readable (default 600)",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="PostgreSQL database to use instead of fresh ones (BENCH_DATABASE_URL). "
        "It is EMPTIED before every suite unless --skip-load keeps the loaded data.",
    )
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL),
        help="server on which fresh databases are created and dropped",
    )
    p.add_argument(
        "--skip-load",
        action="store_true",
        help="query suites: use the data already in --database-url / --sqlite-path",
    )
    p.add_argument("--sqlite-path", type=Path, help="SQLite file for query-sqlite (kept)")
    p.add_argument(
        "--work-dir",
        type=Path,
        help="scratch directory for server data, logs and SQLite files (default: a temporary "
        "directory, removed at the end)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--phoenix-venv", type=Path, default=peer.DEFAULT_VENV)
    a = p.parse_args(argv)
    quick = a.quick
    if a.suites:
        suites = tuple(s.strip() for s in a.suites.split(",") if s.strip())
        unknown = set(suites) - set(ALL_SUITES)
        if unknown:
            p.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    elif a.soak:
        suites = ("soak",)
    elif a.peer:
        suites = ("peer",)
    else:
        suites = DEFAULT_SUITES

    def pick(value: float | None, full: float, small: float) -> float:
        return value if value is not None else (small if quick else full)

    return Options(
        suites=suites,
        duration_s=pick(a.duration, 60, 4),
        warmup_s=pick(a.warmup, 5, 1),
        exporters=a.exporters,
        gzip=a.gzip,
        spans_per_request=a.spans_per_request,
        templates=int(pick(a.templates, 8, 2)),
        seed=a.seed,
        pg_spans=int(pick(a.pg_spans, 10_000_000, 20_000)),
        sqlite_spans=int(pick(a.sqlite_spans, 1_000_000, 10_000)),
        days=a.days,
        load_processes=a.load_processes,
        query_requests=int(pick(a.query_requests, 200, 10)),
        soak_s=pick(a.soak_duration, 600, 10),
        drain_timeout_s=pick(a.drain_timeout, 600, 20),
        database_url=a.database_url,
        pg_admin_url=a.pg_admin_url,
        skip_load=a.skip_load,
        sqlite_path=a.sqlite_path,
        work_dir=a.work_dir or Path(tempfile.mkdtemp(prefix="observatory-bench-")),
        keep_work_dir=a.work_dir is not None,
        results_dir=a.results_dir,
        phoenix_venv=a.phoenix_venv,
        quick=quick,
    )


class Bench:
    """Runs suites; every suite adds one entry to ``self.results``."""

    def __init__(self, opts: Options, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.log = log
        self.admin_key = "obs_bench_" + secrets.token_urlsafe(24)
        self.results: dict[str, Any] = {}
        self._workload: Workload | None = None

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def workload(self) -> Workload:
        if self._workload is None:
            started = time.monotonic()
            self._workload = Workload(
                WorkloadConfig(
                    seed=self.opts.seed,
                    spans_per_request=self.opts.spans_per_request,
                    templates=self.opts.templates,
                )
            )
            self.log(
                f"workload: {self.opts.templates} templates in {time.monotonic() - started:.1f}s"
            )
        return self._workload

    def driver_config(self, targets: list[str], duration_s: float | None = None) -> DriverConfig:
        return DriverConfig(
            targets=targets,
            api_key=self.admin_key,
            exporters=self.opts.exporters,
            duration_s=duration_s if duration_s is not None else self.opts.duration_s,
            warmup_s=self.opts.warmup_s,
            gzip=self.opts.gzip,
        )

    @contextlib.contextmanager
    def pg(self, prefix: str, keep_data: bool = False) -> Iterator[str]:
        """A PostgreSQL database for one suite: the given one (emptied) or a fresh one."""
        if self.opts.database_url:
            if not keep_data:
                reset_database(self.opts.database_url)
            yield self.opts.database_url
            return
        url = create_database(self.opts.pg_admin_url, prefix)
        try:
            yield url
        finally:
            drop_database(self.opts.pg_admin_url, url)

    def suite_dir(self, name: str) -> Path:
        path = self.opts.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- ingest ----------------------------------------------------------------------------------

    def ingest(
        self,
        database_url: str,
        name: str,
        *,
        servers: int = 1,
        workers: int = 1,
        duration_s: float | None = None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start the server(s), drive load, sample memory, verify every acked span."""
        workload = self.workload
        with observatory_servers(
            servers, self.suite_dir(name), database_url, self.admin_key, workers=workers, env=env
        ) as procs:
            sampler = ResourceSampler([s.pid for s in procs]).start()
            config = self.driver_config([s.base_url for s in procs], duration_s)
            self.log(
                f"{name}: {config.exporters} exporters x {config.warmup_s:.0f}+"
                f"{config.duration_s:.0f}s against {servers} server(s) x {workers} worker(s)"
            )
            cpu_before = time.process_time()
            result = asyncio.run(run_load(workload, config))
            driver_cpu = time.process_time() - cpu_before
            resources = sampler.stop()
            logs = "".join(s.log_tail(2000) for s in procs) if self._failed(result) else ""
        verify = self.verify(database_url, workload, result)
        summary = result.summary()
        self.log(
            f"{name}: {summary['spans_per_s']:,.0f} spans/s, p99 "
            f"{summary['attempt_latency']['p99_ms']} ms, max RSS "
            f"{resources['max_rss_mib_per_process']} MiB, verified={verify['ok']}"
        )
        out = {
            "database": "postgresql" if database_url.startswith("postgres") else "sqlite",
            "servers": servers,
            "workers_per_server": workers,
            "env": env or {},
            "exporters": config.exporters,
            "gzip": config.gzip,
            "spans_per_request": self.opts.spans_per_request,
            "driver": summary,
            "driver_cpu_seconds": round(driver_cpu, 1),
            "verify": verify,
            "resources": resources,
        }
        if logs:
            out["server_log_tail"] = logs
        return out

    @staticmethod
    def _failed(result: DriverResult) -> bool:
        return any(r.final_status != 200 for r in result.records)

    @staticmethod
    def verify(database_url: str, workload: Workload, result: DriverResult) -> dict[str, Any]:
        acked = result.acked_spans()
        prefixes = [workload.trace_prefix(r.seq).hex() for r in result.records if r.acked_spans]
        counts = count_acked(database_url, prefixes)
        return {
            **counts,
            "acked_spans": acked,
            # Rejected (partial_success) spans are not acked; everything acked must be there.
            "ok": counts["readable_acked_spans"] >= acked and acked > 0,
        }

    def suite_ingest_pg(self) -> None:
        with self.pg("obs_bench_ingest") as url:
            self.results["ingest-pg"] = self.ingest(url, "ingest-pg")

    def suite_ingest_sqlite(self) -> None:
        directory = self.suite_dir("ingest-sqlite-db")
        url = f"sqlite:///{directory / 'observatory.db'}"
        self.results["ingest-sqlite"] = self.ingest(url, "ingest-sqlite")

    def suite_scaling(self) -> None:
        out: dict[str, Any] = {}
        base = self.results.get("ingest-pg")
        if base is None:
            with self.pg("obs_bench_scale1") as url:
                base = self.ingest(url, "scaling-1proc")
        out["one_process"] = base
        with self.pg("obs_bench_scale2") as url:
            out["two_processes"] = self.ingest(url, "scaling-2proc", servers=2)
        with self.pg("obs_bench_scalew") as url:
            out["one_server_two_workers"] = self.ingest(url, "scaling-2workers", workers=2)
        one = base["driver"]["spans_per_s"] or 1e-9
        out["ratio_two_processes"] = round(out["two_processes"]["driver"]["spans_per_s"] / one, 2)
        out["ratio_two_workers"] = round(
            out["one_server_two_workers"]["driver"]["spans_per_s"] / one, 2
        )
        # One server process already keeps both cores of this machine busy (its ingest worker
        # processes); whether ingest scales across server processes shows with one core each.
        single = {"OBSERVATORY_INGEST_PROCESSES": "0"}
        with self.pg("obs_bench_scale1c") as url:
            out["one_process_one_core"] = self.ingest(url, "scaling-1proc-1core", env=single)
        with self.pg("obs_bench_scale2c") as url:
            out["two_processes_one_core"] = self.ingest(
                url, "scaling-2proc-1core", servers=2, env=single
            )
        one_core = out["one_process_one_core"]["driver"]["spans_per_s"] or 1e-9
        out["ratio_two_processes_one_core"] = round(
            out["two_processes_one_core"]["driver"]["spans_per_s"] / one_core, 2
        )
        self.results["scaling"] = out

    def suite_soak(self) -> None:
        with self.pg("obs_bench_soak") as url:
            self.results["soak"] = self.ingest(url, "soak", duration_s=self.opts.soak_s)

    # --- queries ---------------------------------------------------------------------------------

    def query_suite(self, database_url: str, name: str, spans: int) -> dict[str, Any]:
        directory = self.suite_dir(name)
        out: dict[str, Any] = {}
        if not self.opts.skip_load:
            project_id = loader.setup_database(database_url, directory, self.admin_key)
            plan = loader.LoadPlan(
                database_url,
                spans,
                days=self.opts.days,
                processes=self.opts.load_processes,
                seed=self.opts.seed,
            )
            self.log(f"{name}: loading {spans:,} spans over {self.opts.days} days")
            out["load"] = loader.load(plan, project_id)
            out["load"]["cube_seconds"] = loader.compact(database_url)
            out["load"]["analyze_seconds"] = loader.analyze(database_url)
            self.log(
                f"{name}: loaded in {out['load']['seconds']}s "
                f"({out['load']['spans_per_s']:,.0f} spans/s), rollup cube "
                f"{out['load']['cube_seconds']}s, analyze {out['load']['analyze_seconds']}s"
            )
        else:
            loader.setup_database(database_url, directory, self.admin_key)
            loader.compact(database_url)
        trace_ids = queries.sample_trace_ids(database_url, 200, self.opts.seed)
        out["trace_ids_sampled"] = len(trace_ids)
        requests = self.opts.query_requests
        for label, env, pool in (
            ("cold", {"OBSERVATORY_CACHE_TTL_SECONDS": "0"}, 0),
            ("warm", {}, 8),
        ):
            with observatory_servers(
                1, directory / label, database_url, self.admin_key, env=env
            ) as procs:
                plan_q = queries.QueryPlan(
                    requests=requests, days=self.opts.days, seed=self.opts.seed, param_pool=pool
                )
                sampler = ResourceSampler([procs[0].pid]).start()
                out[label] = queries.run_queries(
                    procs[0].base_url, self.admin_key, trace_ids, plan_q
                )
                out[label]["resources"] = sampler.stop()
            self.log(
                f"{name} {label}: "
                + ", ".join(
                    f"{kind} p95 {v['p95_ms']} ms"
                    for kind, v in out[label].items()
                    if isinstance(v, dict) and "p95_ms" in v
                )
            )
        return out

    def suite_query_pg(self) -> None:
        with self.pg("obs_bench_query", keep_data=self.opts.skip_load) as url:
            self.results["query-pg"] = self.query_suite(url, "query-pg", self.opts.pg_spans)

    def suite_query_sqlite(self) -> None:
        if self.opts.sqlite_path is not None:
            path = self.opts.sqlite_path.resolve()
            if not self.opts.skip_load:
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        Path(f"{path}{suffix}").unlink()
        else:
            path = self.suite_dir("query-sqlite-db") / "observatory.db"
        url = f"sqlite:///{path}"
        self.results["query-sqlite"] = self.query_suite(url, "query-sqlite", self.opts.sqlite_spans)

    # --- peer ------------------------------------------------------------------------------------

    def suite_peer(self) -> None:
        version = peer.phoenix_version(self.opts.phoenix_venv)
        out: dict[str, Any] = {"phoenix_version": version, "databases": {}, "errors": {}}
        self.results["peer"] = out  # filled as it goes: one database may fail, not both
        self.log(f"peer: Phoenix {version} from {self.opts.phoenix_venv}")
        for database in ("sqlite", "postgresql"):
            try:
                out["databases"][database] = self.peer_database(database)
            except Exception as exc:
                out["errors"][database] = f"{exc.__class__.__name__}: {exc}"
                self.log(f"peer {database} FAILED: {exc}\n{traceback.format_exc()}")
        if out["errors"]:
            raise RuntimeError(f"peer failed on {', '.join(out['errors'])}")

    def peer_database(self, database: str) -> dict[str, Any]:
        """Ours, then Phoenix, on one kind of database with the same workload."""
        workload = self.workload
        entry: dict[str, Any] = {}
        # Ours first, same workload and duration, same run.
        if database == "sqlite":
            directory = self.suite_dir("peer-ours-sqlite")
            entry["observatory"] = self.ingest(
                f"sqlite:///{directory / 'observatory.db'}", "peer-ours-sqlite"
            )
        else:
            with self.pg("obs_bench_peer_ours") as url:
                entry["observatory"] = self.ingest(url, "peer-ours-pg")
        config = self.driver_config(["http://placeholder"])
        self.log(f"peer: phoenix on {database}")
        if database == "sqlite":
            entry["phoenix"] = peer.run_phoenix(
                workload,
                config,
                self.opts.phoenix_venv,
                self.opts.work_dir / "phoenix-sqlite",
                None,
                self.opts.drain_timeout_s,
            )
        else:
            url = create_database(self.opts.pg_admin_url, "obs_bench_phoenix")
            try:
                entry["phoenix"] = peer.run_phoenix(
                    workload,
                    config,
                    self.opts.phoenix_venv,
                    self.opts.work_dir / "phoenix-pg",
                    url,
                    self.opts.drain_timeout_s,
                )
            finally:
                drop_database(self.opts.pg_admin_url, url)
        ours = entry["observatory"]["driver"]["spans_per_s"]
        theirs = entry["phoenix"]["readable_spans_per_s"]
        entry["ratio"] = round(ours / theirs, 1) if theirs else None
        self.log(
            f"peer {database}: ours {ours:,.0f} spans/s, phoenix {theirs:,.1f} readable "
            f"spans/s, ratio {entry['ratio']}"
        )
        return entry

    # --- driver ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        errors: dict[str, str] = {}
        for suite in self.opts.suites:
            method = getattr(self, "suite_" + suite.replace("-", "_"))
            started = time.monotonic()
            try:
                method()
            except Exception as exc:
                errors[suite] = f"{exc.__class__.__name__}: {exc}"
                self.log(f"{suite} FAILED: {exc}\n{traceback.format_exc()}")
            self.log(f"{suite}: {time.monotonic() - started:.0f}s")
        return errors


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)

    def log(message: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    machine = machine_info(opts.database_url or opts.pg_admin_url)
    log(
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"PostgreSQL {machine['postgresql']}, load average {machine['load_average_at_start']}"
    )
    bench = Bench(opts, log)
    started = datetime.now(tz=UTC)
    try:
        errors = bench.run()
    finally:
        if not opts.keep_work_dir:
            shutil.rmtree(opts.work_dir, ignore_errors=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    document = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(tz=UTC).isoformat(),
        "machine": machine,
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(replace(opts)).items()
            if k not in ("database_url",)
        },
        "results": bench.results,
        "errors": errors,
    }
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    path = opts.results_dir / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(report.render(document))
    print(f"\nresults: {path}")
    return 1 if errors else 0
