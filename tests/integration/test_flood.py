"""A flood of tiny ingest requests (wrk, as many as this machine can make) must not starve health
checks or other clients."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.otlp_builder import SpanSpec, agent_trace, protobuf_request


def test_flood_of_tiny_requests(
    server_factory: Callable[..., Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed (scripts/test-setup.sh installs it)"
    server = server_factory(env={"OBSERVATORY_RATE_LIMIT_KEY_REQUESTS_PER_MINUTE": "0"})
    body = protobuf_request([SpanSpec(1, 1)]).hex()
    script = tmp_path / "post.lua"
    # Each request carries the same tiny span: retries of one span, stored once.
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Authorization"] = "Bearer {server.admin_key}"\n'
        'wrk.headers["Content-Type"] = "application/x-protobuf"\n'
        f'local hex = "{body}"\n'
        'wrk.body = (hex:gsub("..", function(cc) return string.char(tonumber(cc, 16)) end))\n'
    )
    probes: list[tuple[str, int, float]] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(
            base_url=server.base_url,
            timeout=10,
            headers={"Authorization": f"Bearer {server.admin_key}"},
        ) as client:
            n = 100
            while not done.is_set():
                for name, call in (
                    ("live", lambda: client.get("/health/live")),
                    ("query", lambda: client.get("/api/v1/traces", params={"limit": 5})),
                    (
                        "ingest",
                        lambda n=n: client.post(  # type: ignore[misc]
                            "/v1/traces",
                            content=protobuf_request(agent_trace(n, 2)),
                            headers={"Content-Type": "application/x-protobuf"},
                        ),
                    ),
                ):
                    started = time.monotonic()
                    status = call().status_code
                    probes.append((name, status, time.monotonic() - started))
                n += 1
                time.sleep(0.2)

    thread = threading.Thread(target=probe)
    thread.start()
    result = subprocess.run(
        [
            wrk,
            "-t2",
            "-c100",
            "-d8s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{server.base_url}/v1/traces",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    done.set()
    thread.join(30)
    assert result.returncode == 0, result.stderr
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    # Health and queries always answer; other clients' ingest is served or shed with 503 +
    # Retry-After (load shedding), never failed or hung.
    assert probes and all(status == 200 for name, status, _ in probes if name != "ingest"), probes
    assert {status for name, status, _ in probes if name == "ingest"} <= {200, 503}
    assert {name for name, _, _ in probes} == {"live", "query", "ingest"}
    with server.client() as client:
        spans = client.get("/api/v1/spans", params={"name": "span", "limit": 10}).json()["data"]
        assert len(spans) == 1  # a thousand retries of one span, stored once
    with capsys.disabled():
        slowest = max(seconds for _, _, seconds in probes)
        shed = sum(1 for name, status, _ in probes if name == "ingest" and status == 503)
        not_ok = non_2xx.group(1) if non_2xx else 0
        print(
            f"\n[flood] wrk {rate:.0f} requests/s for 8 s ({not_ok} shed with 503); "
            f"{len(probes)} probes: health and queries all 200, {shed} ingest probes shed; "
            f"slowest probe {slowest * 1000:.0f} ms"
        )
