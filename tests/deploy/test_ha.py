"""High availability, proven on real processes: the production topology on loopback, broken.

One stack (deploy/local: nginx with TLS, API servers `api` and `api-server`, a `collector`,
PgBouncer, a PostgreSQL primary with a streaming replica, a Redis master with a replica and three
Sentinels), started from the configuration files of docker/, serves every scenario of this
module in turn; each scenario leaves it whole for the next, the database failover comes last.
Exporters (tests/ingest_driver.py) retry on 429/502/503/504 as OTLP exporters do; readers
(ha_helpers.QueryLoad) never retry. Every scenario prints a report with its numbers.

Routing of the shipped nginx configuration, which the scenarios follow:
  https://127.0.0.1:<port>/v1/traces   the API site: OTLP to the collector, `api-server` as backup
  https://localhost:<port>/v1/traces   the UI site (`location /`): to both API servers
  .../api/v1/...                       on both sites: to both API servers (least_conn)
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy.local import render
from deploy.local.postgres import PgNode
from deploy.local.procs import wait_for
from deploy.local.stack import SERVERS, Stack, StackError

from tests.conftest import ARTIFACTS
from tests.ingest_driver import IngestDriver

from .ha_helpers import (
    QueryLoad,
    Report,
    check_spans,
    failed_exports,
    upstream_counts,
    wait_in_rotation,
)

API_SERVERS = ("api", "api-server")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Outside pytest's 0700 temporary directory: PostgreSQL runs as postgres, nginx's workers
    # as nobody.
    directory = Path(tempfile.mkdtemp(prefix="obs-ha-"))
    directory.chmod(0o755)
    stack = Stack(directory)
    try:
        stack.up()
        yield stack
    finally:
        try:
            stack.down(remove=False)
        finally:
            artifacts = ARTIFACTS / "test_ha"
            shutil.rmtree(artifacts, ignore_errors=True)
            for log in stack.logs():
                target = artifacts / log.relative_to(stack.dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)
            shutil.rmtree(directory, ignore_errors=True)


def exporters(stack: Stack, first_trace: int, ui_site: bool = True) -> IngestDriver:
    """Two exporters on the API site (collector) and, with ``ui_site``, one on the UI site
    (API servers): 20 spans per export, 5 traces of an agent and 3 LLM calls."""
    urls = [stack.api_url, stack.api_url] + ([stack.ui_url] if ui_site else [])
    return IngestDriver(
        urls,
        stack.keys["ingest"],
        workers=len(urls),
        first_trace=first_trace,
        verify=stack.tls(),  # type: ignore[arg-type]  # httpx takes an SSLContext
        give_up_after=60,
    ).start()


def readers(stack: Stack) -> QueryLoad:
    return QueryLoad([stack.api_url, stack.ui_url], stack.keys["read"], stack.tls()).start()


def ready(stack: Stack, name: str) -> dict[str, object]:
    response = httpx.get(f"{stack.server_url(name)}/health/ready", timeout=20)
    body: dict[str, object] = response.json()["checks"]
    body["http"] = response.status_code
    return body


def test_ingest_and_queries_spread_across_the_servers(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report("ingest and queries over HTTPS through nginx")
    since = len(stack.access_log_entries())
    driver = exporters(stack, first_trace=1_000_000)
    queries = readers(stack)
    report.step("3 exporters (2 -> API site, 1 -> UI site) and 2 readers (one per site) started")
    driver.wait_for_acks(150, timeout=120)
    ingest = driver.stop()
    queries.stop()
    report.step("stopped after 150 acknowledged exports")
    spans = check_spans(stack.primary, driver)
    otlp_api_site = upstream_counts(stack, since, "/v1/traces", render.API_HOST)
    otlp_ui_site = upstream_counts(stack, since, "/v1/traces", render.UI_HOST)
    reads = upstream_counts(stack, since, "/api/")
    report.ingest(ingest, spans)
    report.add("queries", queries.summary())
    report.add("nginx: OTLP, API site", dict(otlp_api_site))
    report.add("nginx: OTLP, UI site", dict(otlp_ui_site))
    report.add("nginx: queries", dict(reads))
    with capsys.disabled():
        print(report.render())

    assert failed_exports(ingest) == 0 and queries.failed == 0
    assert spans.missing == 0 and spans.duplicated == 0 and spans.acked > 0
    # The API site sends OTLP to the collector; its backup (api-server) is idle while it is up.
    assert otlp_api_site["collector"] > 0 and set(otlp_api_site) <= {"collector", "-"}
    # Everything routed to the API servers is spread over both.
    for counts in (otlp_ui_site, reads):
        assert all(counts[name] > 0 for name in API_SERVERS), counts


def test_sigkill_of_an_api_server_under_load(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report("SIGKILL of API server `api` while clients send traces and read")
    since = len(stack.access_log_entries())
    driver = exporters(stack, first_trace=2_000_000)
    queries = readers(stack)
    driver.wait_for_acks(60, timeout=120)
    victim = stack.procs["api"]
    victim.send(signal.SIGKILL)
    victim.wait(10)
    report.step(f"SIGKILL api (pid {victim.pid}) after {driver.report.acknowledged_requests} acks")
    acked = driver.report.acknowledged_requests
    driver.wait_for_acks(acked + 80, timeout=120)
    report.step(f"{driver.report.acknowledged_requests - acked} exports acknowledged without api")
    restarted = stack.start_server("api")
    report.step(f"api started again (pid {restarted.pid}) and ready")
    waited = wait_in_rotation(stack, "api")
    report.step(f"nginx sends requests to api again ({waited:.1f}s after it was ready)")
    ingest = driver.stop()
    queries.stop()
    report.step("load stopped")
    spans = check_spans(stack.primary, driver)
    entries = stack.access_log_entries()[since:]
    killed = f"127.0.0.1:{stack.ports['api']}"
    retried = sum(
        1
        for e in entries
        if killed in str(e["upstream_addr"]).split(",")[0] and "," in str(e["upstream_addr"])
    )
    post_502 = sum(
        1
        for e in entries
        if e["method"] == "POST" and e["status"] == 502 and e["host"] == render.UI_HOST
    )
    report.ingest(ingest, spans)
    report.add("queries", queries.summary())
    report.add(
        "nginx",
        f"{retried} requests passed on from the killed server to the other one; {post_502} "
        "OTLP POSTs on the UI site answered 502 (`location /` has no non_idempotent: a POST "
        "already sent to the dying server is not passed on) and retried by the exporter",
    )
    report.add("after restart", dict(upstream_counts(stack, since, "/api/")))
    with capsys.disabled():
        print(report.render())

    assert failed_exports(ingest) == 0, ingest.summary()
    assert queries.failed == 0, queries.failures[:10]
    assert spans.missing == 0 and spans.duplicated == 0 and spans.acked > 0
    assert ready(stack, "api")["http"] == 200


def test_sigkill_of_the_collector_moves_ingest_to_the_backup(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report("SIGKILL of the collector while exporters send to the API site")
    driver = exporters(stack, first_trace=3_000_000, ui_site=False)
    driver.wait_for_acks(40, timeout=120)
    since = len(stack.access_log_entries())
    victim = stack.procs["collector"]
    victim.send(signal.SIGKILL)
    victim.wait(10)
    report.step(f"SIGKILL collector (pid {victim.pid})")
    acked = driver.report.acknowledged_requests
    driver.wait_for_acks(acked + 60, timeout=120)
    backup = upstream_counts(stack, since, "/v1/traces", render.API_HOST)
    report.step(f"{driver.report.acknowledged_requests - acked} exports acknowledged without it")
    restarted = stack.start_server("collector")
    report.step(f"collector started again (pid {restarted.pid})")
    waited = wait_in_rotation(stack, "collector")
    report.step(f"nginx sends exports to the collector again ({waited:.1f}s after it was ready)")
    ingest = driver.stop()
    spans = check_spans(stack.primary, driver)
    report.ingest(ingest, spans)
    report.add("nginx: OTLP while down", dict(backup))
    with capsys.disabled():
        print(report.render())

    assert failed_exports(ingest) == 0, ingest.summary()
    assert spans.missing == 0 and spans.duplicated == 0 and spans.acked > 0
    # The backup server of the collector upstream took the exports.
    assert backup["api-server"] > 0, backup


def test_rolling_restart_of_every_server(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    report = Report("rolling restart: SIGTERM, drain, start, one server after the other")
    since = len(stack.access_log_entries())
    driver = exporters(stack, first_trace=4_000_000)
    queries = readers(stack)
    driver.wait_for_acks(40, timeout=120)
    drained = {}
    for name in (*API_SERVERS, "collector"):
        proc = stack.procs[name]
        log = Path(proc.log)
        log_before = len(log.read_text().splitlines())
        started = time.monotonic()
        proc.send(signal.SIGTERM)
        assert proc.wait(60), f"{name} did not exit within 60s of SIGTERM"
        shutdown_log = "\n".join(log.read_text().splitlines()[log_before:])
        # uvicorn ends by raising the SIGTERM it caught again: the exit status is -15.
        drained[name] = (
            proc.popen is not None
            and proc.popen.returncode in (0, -signal.SIGTERM)
            and "draining the writer queue" in shutdown_log
            and "Application shutdown complete." in shutdown_log
        )
        report.step(
            f"SIGTERM {name} (pid {proc.pid}): in-flight requests finished, writer queue "
            f"drained, exited after {time.monotonic() - started:.1f}s"
        )
        new = stack.start_server(name)
        report.step(f"{name} started again (pid {new.pid}) and ready")
        waited = wait_in_rotation(stack, name)
        report.step(f"nginx sends requests to {name} again after {waited:.1f}s; next server")
    ingest = driver.stop()
    queries.stop()
    spans = check_spans(stack.primary, driver)
    entries = stack.access_log_entries()[since:]
    ui_site_posts = [
        e
        for e in entries
        if e["status"] >= 500 and e["method"] == "POST" and e["host"] == render.UI_HOST
    ]
    errors = [e for e in entries if e["status"] >= 500 and e not in ui_site_posts]
    report.ingest(ingest, spans)
    report.add("queries", queries.summary())
    report.add(
        "nginx",
        f"answers >= 500: {len(errors)}, plus {len(ui_site_posts)} OTLP POSTs on the UI site",
    )
    with capsys.disabled():
        print(report.render())

    assert drained == {name: True for name in drained}, drained
    assert failed_exports(ingest) == 0, ingest.summary()
    # Zero failed requests: nginx answered no request with an error, except OTLP POSTs that
    # reached an API server through `location /` (no non_idempotent there: see the report),
    # which the exporters retried.
    assert errors == [], errors[:5]
    assert ingest.transport_errors == 0
    assert queries.failed == 0, queries.failures[:10]
    assert spans.missing == 0 and spans.duplicated == 0 and spans.acked > 0


def trace_reads(node: PgNode) -> int:
    """Trace-list queries (`SELECT traces.…`, GET /api/v1/traces) a server has run, from
    pg_stat_statements (counted when a statement ends, on a standby too)."""
    rows = node.sql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE 'SELECT traces.%' "
        "AND dbid = (SELECT oid FROM pg_database WHERE datname = 'llm_observatory')"
    )
    return int(rows[0][0])


def read_through_nginx(stack: Stack, count: int) -> list[int]:
    """``count`` trace lists through nginx, one after the other (no client retries)."""
    headers = {"Authorization": f"Bearer {stack.keys['read']}"}
    with httpx.Client(headers=headers, verify=stack.tls(), timeout=65) as client:
        return [
            client.get(f"{stack.api_url}/api/v1/traces", params={"limit": 1 + n % 40}).status_code
            for n in range(count)
        ]


def test_queries_use_the_replica_and_fall_back_to_the_primary(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report("reads on the replica (OBSERVATORY_DATABASE_READ_URL), replica stopped")
    report.add("read URL", "PgBouncer database llm_observatory_ro -> the streaming replica")
    primary, replica = stack.primary, stack.standby
    before = trace_reads(replica), trace_reads(primary)
    statuses = read_through_nginx(stack, 30)
    on_replica = trace_reads(replica) - before[0]
    on_primary = trace_reads(primary) - before[1]
    report.step(
        f"30 trace lists through nginx: {statuses.count(200)} answered; trace queries run on "
        f"the replica {on_replica}, on the primary {on_primary}"
    )

    driver = exporters(stack, first_trace=5_000_000)
    queries = readers(stack)
    driver.wait_for_acks(20, timeout=120)
    stack.stop_pg(replica.name, "fast")
    report.step("replica stopped (pg_ctl stop -m fast) under ingest and reads")
    before_outage = trace_reads(primary)
    started = time.monotonic()
    during = read_through_nginx(stack, 30)
    during_seconds = time.monotonic() - started
    fallback = trace_reads(primary) - before_outage
    report.step(
        f"30 trace lists while it is down: {during.count(200)} answered 200 in "
        f"{during_seconds:.1f}s; trace queries run on the primary {fallback}"
    )
    acked = driver.report.acknowledged_requests
    driver.wait_for_acks(acked + 30, timeout=120)
    stack.start_replica(clone=False)
    report.step("replica started again and streaming")
    # The servers try the replica again 5 s (REPLICA_RETRY_SECONDS) after it failed.
    before_return = trace_reads(replica)

    def back_on_replica() -> int:
        read_through_nginx(stack, 5)
        served = trace_reads(replica) - before_return
        return served if served >= 5 else 0

    resumed = wait_for(back_on_replica, 60, "reads to go to the replica again", interval=1)
    report.step(f"reads on the replica again ({resumed} trace queries there)")
    ingest = driver.stop()
    queries.stop()
    spans = check_spans(stack.primary, driver)
    report.ingest(ingest, spans)
    report.add("queries", queries.summary())
    with capsys.disabled():
        print(report.render())

    assert statuses == [200] * 30 and on_replica >= 30
    assert during == [200] * 30, during
    assert fallback >= 30
    assert queries.failed == 0, queries.failures[:10]
    assert failed_exports(ingest) == 0, ingest.summary()
    assert spans.missing == 0 and spans.duplicated == 0


def redis_command_calls(stack: Stack, name: str) -> int:
    """Commands the servers send (cache reads/writes, rate-limit script) counted by a Redis."""
    client = stack.redis(name)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    wanted = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_get", "cmdstat_set", "cmdstat_incr")
    return sum(int(stats[k]["calls"]) for k in wanted if k in stats)


def test_redis_master_failure_sentinel_promotes_the_replica(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report("Redis master SIGKILLed: Sentinel promotes the replica")
    assert stack.redis_master_port() == stack.ports["redis-master"]
    driver = exporters(stack, first_trace=6_000_000)
    queries = readers(stack)
    driver.wait_for_acks(30, timeout=120)
    master = stack.procs["redis-master"]
    master.send(signal.SIGKILL)
    master.wait(10)
    killed_at = time.monotonic()
    report.step(f"SIGKILL redis-master (pid {master.pid})")
    cache_states: set[str] = set()

    def promoted() -> bool:
        for name in SERVERS:
            cache_states.add(str(ready(stack, name)["cache"]))
        return stack.redis_master_port() == stack.ports["redis-replica"]

    wait_for(promoted, 60, "the Sentinels to promote redis-replica", interval=0.5)
    report.step(f"Sentinels report redis-replica as master ({time.monotonic() - killed_at:.1f}s)")
    calls = redis_command_calls(stack, "redis-replica")
    wait_for(
        lambda: redis_command_calls(stack, "redis-replica") > calls + 20,
        60,
        "the servers to use the new master",
    )
    report.step("the servers' cache and rate-limit commands reach the new master")
    wait_for(
        lambda: all(ready(stack, name)["cache"] == "ok" for name in SERVERS),
        60,
        "every server to report its cache ok",
    )
    report.step("every server's /health/ready reports cache ok")
    stack.start_redis("redis-master", "master")
    client = stack.redis("redis-master")
    try:
        wait_for(
            lambda: client.info("replication")["role"] == "slave",
            60,
            "Sentinel to turn the old master into a replica",
        )
    finally:
        client.close()
    report.step("old master started again; Sentinel made it a replica of the new master")
    acked = driver.report.acknowledged_requests
    driver.wait_for_acks(acked + 20, timeout=120)
    ingest = driver.stop()
    queries.stop()
    spans = check_spans(stack.primary, driver)
    report.ingest(ingest, spans)
    report.add("queries", queries.summary())
    report.add("cache states seen", sorted(cache_states))
    with capsys.disabled():
        print(report.render())

    assert failed_exports(ingest) == 0, ingest.summary()
    assert queries.failed == 0, queries.failures[:10]
    assert spans.missing == 0 and spans.duplicated == 0 and spans.acked > 0


def test_primary_failure_failover_and_recovery(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report("PostgreSQL primary killed: failover to the replica, then recovery")
    # Asynchronous replication (the shipped setting) can lose the commits of the last moments
    # before a crash that had not reached the replica; acknowledged spans survive a failover
    # only with synchronous replication, set here in postgresql.local.conf.
    stack.set_synchronous_standby("replica_1")
    wait_for(lambda: stack.sync_state() == "sync", 30, "the replica to be synchronous")
    report.step("synchronous_standby_names = 'replica_1' (postgresql.local.conf), reloaded")
    pids = {name: stack.procs[name].pid for name in SERVERS}
    old, new = stack.primary, stack.standby
    # While the old primary still answers as a primary the script refuses: two primaries.
    with pytest.raises(StackError, match="still answers as a primary"):
        stack.failover()
    assert new.in_recovery() and stack.primary.name == old.name
    report.step("failover-db.sh refused to promote while the primary was up")
    driver = exporters(stack, first_trace=7_000_000)
    queries = readers(stack)
    driver.wait_for_acks(60, timeout=120)
    stack.crash_pg(old.name)
    report.step(f"every process of the primary ({old.name}) killed with SIGKILL")
    time.sleep(2)  # the outage: exporters get 503 + Retry-After, or 502 from nginx
    output = stack.failover()
    report.step("scripts/failover-db.sh promote:")
    report.steps += [f"         {line}" for line in output.strip().splitlines()]
    driver.mark("failover")
    acked = driver.report.acknowledged_requests
    driver.wait_for_acks(acked + 60, timeout=120)
    report.step(
        f"exports acknowledged again {driver.report.first_ack_after.get('failover', 0):.1f}s "
        "after the script finished; no server restarted"
    )
    rebuilt = stack.start_replica(clone=True)
    report.step(f"recovery: {rebuilt.name} cloned from {new.name} (pg_basebackup), streaming")
    report.steps += [
        f"         {line}" for line in stack.repoint_reads(rebuilt).strip().splitlines()
    ]
    stack.set_synchronous_standby("replica_1")
    wait_for(lambda: stack.sync_state() == "sync", 30, "the rebuilt replica to be synchronous")
    report.step("synchronous replication on again, to the rebuilt replica")
    for name in SERVERS:
        wait_in_rotation(stack, name)
    report.step("nginx sends requests to every server again")
    ingest = driver.stop()
    queries.stop()
    spans = check_spans(stack.primary, driver)
    health = {name: ready(stack, name) for name in SERVERS}
    report.ingest(ingest, spans)
    report.add("queries", queries.summary())
    report.add(
        "servers", {n: f"pid {stack.procs[n].pid}, ready {h['http']}" for n, h in health.items()}
    )
    with capsys.disabled():
        print(report.render())

    assert stack.primary.name == new.name and not new.in_recovery()
    assert (
        f"host=127.0.0.1 port={new.port} dbname=llm_observatory" in stack.pgbouncer_ini.read_text()
    )
    # The servers reconnected on their own: same processes, ready, database ok.
    assert {name: stack.procs[name].pid for name in SERVERS} == pids
    assert all(stack.procs[name].alive() for name in SERVERS)
    assert all(h["http"] == 200 and h["database"] == "ok" for h in health.values()), health
    assert failed_exports(ingest) == 0, ingest.summary()
    assert spans.missing == 0 and spans.duplicated == 0 and spans.acked > 0
    assert stack.replication_state() == "streaming" and stack.sync_state() == "sync"
    assert read_through_nginx(stack, 10) == [200] * 10
