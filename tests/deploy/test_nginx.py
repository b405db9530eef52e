"""nginx with docker/nginx/* (nginx -t, then a live nginx in front of fake upstreams).

The configuration is rendered by conftest.render_nginx_config: the shipped files with only the
upstream servers, listen ports and log/temp paths replaced, and a self-signed certificate made
here. The live part runs nginx unprivileged, as the container does, and checks what the
configuration promises: HTTPS redirect, TLS 1.2+, security headers, passive health checks with
retries, the OTLP body limit, rate limits, /metrics off the public internet, JSON access logs.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from .conftest import (
    DOCKER,
    NginxConfig,
    private_tmpdir,
    render_nginx_config,
    run,
    stop_process,
    tool,
    wait_until,
)

UI_HOST = "observatory.yourdomain.com"
API_HOST = "api.observatory.yourdomain.com"


class FakeUpstream:
    """An HTTP server standing in for an API server, a collector or Grafana."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status
        self.requests: list[dict[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                record = {
                    "server": upstream.name,
                    "method": self.command,
                    "path": self.path,
                    "x_forwarded_for": self.headers.get("X-Forwarded-For", ""),
                    "x_forwarded_proto": self.headers.get("X-Forwarded-Proto", ""),
                    "body_length": str(length),
                }
                upstream.requests.append(record)
                payload = dict(record)
                if "big" in self.path:
                    payload["padding"] = "x" * 8000
                body = json.dumps(payload).encode()
                self.send_response(upstream.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Frame-Options", "DENY")  # nginx must replace it
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class LiveNginx:
    config: NginxConfig
    api_ok: FakeUpstream
    api_failing: FakeUpstream
    collector_failing: FakeUpstream
    grafana: FakeUpstream

    def client(self, local_address: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=False, local_address=local_address, retries=0)
        return httpx.Client(transport=transport, timeout=10, follow_redirects=False)

    def https(self, path: str) -> str:
        return f"https://127.0.0.1:{self.config.https_port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.config.http_port}{path}"


def test_nginx_t_accepts_the_production_config(tmp_path: Path) -> None:
    config = render_nginx_config(
        tmp_path / "nginx",
        {
            "observatory_api": [
                "127.0.0.1:18001 max_fails=3 fail_timeout=15s",
                "127.0.0.1:18002 max_fails=3 fail_timeout=15s",
            ],
            "observatory_collector": [
                "127.0.0.1:18003 max_fails=3 fail_timeout=15s",
                "127.0.0.1:18002 backup",
            ],
            "observatory_grafana": ["127.0.0.1:18004"],
        },
    )
    proc = run([tool("nginx"), "-t", "-c", str(config.main)], check=False)
    assert proc.returncode == 0, proc.stderr
    assert "syntax is ok" in proc.stderr
    assert "[warn]" not in proc.stderr and "[emerg]" not in proc.stderr, proc.stderr


def test_shipped_upstreams_use_passive_health_checks_and_least_conn() -> None:
    text = (DOCKER / "nginx/includes/upstreams.conf").read_text()
    blocks = dict(re.findall(r"upstream (\w+) \{(.*?)\n\}", text, re.S))
    assert set(blocks) == {"observatory_api", "observatory_collector", "observatory_grafana"}
    assert "least_conn;" in blocks["observatory_api"]
    servers = re.findall(r"^\s*server (\S+) (.*);$", blocks["observatory_api"], re.M)
    assert [s[0] for s in servers] == ["api:8000", "api-server:8000"]
    for _, params in servers:
        assert "max_fails=3" in params and "fail_timeout=" in params
    assert "collector:8000" in blocks["observatory_collector"]
    assert "grafana:3000" in blocks["observatory_grafana"]
    retry = (DOCKER / "nginx/includes/retry.conf").read_text()
    assert "proxy_next_upstream error timeout http_502 http_504;" in retry
    ssl_params = (DOCKER / "nginx/ssl-params.conf").read_text()
    assert re.search(r"^ssl_protocols TLSv1\.2 TLSv1\.3;$", ssl_params, re.M)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveNginx]:
    api_ok = FakeUpstream("api-ok")
    api_failing = FakeUpstream("api-failing", status=502)
    collector_failing = FakeUpstream("collector-failing", status=502)
    grafana = FakeUpstream("grafana")
    # Outside pytest's 0700 base directory: nginx runs as nobody.
    parent = private_tmpdir("obs-deploy-nginx-")
    root = parent / "nginx"
    config = render_nginx_config(
        root,
        {
            "observatory_api": [
                f"127.0.0.1:{api_failing.port} max_fails=3 fail_timeout=15s",
                f"127.0.0.1:{api_ok.port} max_fails=3 fail_timeout=15s",
            ],
            "observatory_collector": [
                f"127.0.0.1:{collector_failing.port} max_fails=3 fail_timeout=15s",
                f"127.0.0.1:{api_ok.port} backup",
            ],
            "observatory_grafana": [f"127.0.0.1:{grafana.port}"],
        },
        owner="nobody",
    )
    stderr = (root / "stderr.log").open("wb")
    # Unprivileged, as in the container (nginxinc/nginx-unprivileged).
    proc = subprocess.Popen(
        [tool("nginx"), "-c", str(config.main), "-g", "daemon off;"],
        user="nobody",
        group="nogroup",
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", config.https_port), timeout=1):
                return True

        try:
            wait_until(listening, 15, "nginx to listen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(root / 'stderr.log').read_text()}") from exc
        yield LiveNginx(config, api_ok, api_failing, collector_failing, grafana)
    finally:
        stop_process(proc)
        stderr.close()
        for upstream in (api_ok, api_failing, collector_failing, grafana):
            upstream.close()
        shutil.rmtree(parent, ignore_errors=True)


def test_http_redirects_to_https_and_serves_the_health_probe(live: LiveNginx) -> None:
    with live.client() as client:
        response = client.get(live.http("/api/v1/traces?limit=5"), headers={"Host": API_HOST})
        assert response.status_code == 301
        assert response.headers["location"] == f"https://{API_HOST}/api/v1/traces?limit=5"
        health = client.get(live.http("/nginx-health"))
        assert health.status_code == 200 and health.text == "ok\n"


def test_tls_versions_and_certificate(live: LiveNginx) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", live.config.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=UI_HOST) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        cipher = tls.cipher()
        assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])
    only_12 = ssl.create_default_context()
    only_12.check_hostname = False
    only_12.verify_mode = ssl.CERT_NONE
    only_12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", live.config.https_port), timeout=5) as raw,
        only_12.wrap_socket(raw, server_hostname=API_HOST) as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_security_headers_on_both_sites(live: LiveNginx) -> None:
    with live.client() as client:
        ui = client.get(live.https("/"), headers={"Host": UI_HOST})
        api = client.get(live.https("/api/v1/traces"), headers={"Host": API_HOST})
    for response in (ui, api):
        assert response.status_code == 200, response.text
        hsts = response.headers["strict-transport-security"]
        assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 31536000  # type: ignore[union-attr]
        assert "includeSubDomains" in hsts
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        # The upstream's own X-Frame-Options is replaced, not duplicated.
        assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
        assert response.headers["server"] == "nginx"
        assert response.headers["x-request-id"]
    assert "default-src 'self'" in ui.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in ui.headers["content-security-policy"]
    assert api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_failed_server_is_retried_on_the_next_and_client_ip_is_forwarded(live: LiveNginx) -> None:
    with live.client() as client:
        for _ in range(4):
            response = client.get(
                live.https("/api/v1/analytics/summary"),
                headers={"Host": UI_HOST, "X-Forwarded-For": "6.6.6.6"},
            )
            assert response.status_code == 200
            body = response.json()
            assert body["server"] == "api-ok"
            # nginx is the edge: a client-supplied X-Forwarded-For is replaced.
            assert body["x_forwarded_for"] == "127.0.0.1"
            assert body["x_forwarded_proto"] == "https"
    assert any(r["server"] == "api-failing" for r in live.api_failing.requests)


def test_otlp_export_is_retried_and_limited_to_20_mib(live: LiveNginx) -> None:
    with live.client() as client:
        headers = {"Host": API_HOST, "Content-Type": "application/x-protobuf"}
        # The collector answers 502: the batch is replayed on the next server (POST, but an
        # OTLP export is idempotent).
        ok = client.post(live.https("/v1/traces"), headers=headers, content=b"\0" * 2_000_000)
        assert ok.status_code == 200, ok.text
        assert ok.json()["server"] == "api-ok"
        assert ok.json()["body_length"] == "2000000"
        assert any(r["path"] == "/v1/traces" for r in live.collector_failing.requests)
        too_big = client.post(
            live.https("/v1/traces"), headers=headers, content=b"\0" * (20 * 1024 * 1024 + 1)
        )
        assert too_big.status_code == 413
        # Everything else keeps the 1 MiB default.
        other = client.post(
            live.https("/api/v1/admin/projects"),
            headers={"Host": API_HOST},
            content=b"{}" * 600_000,
        )
        assert other.status_code == 413


def test_metrics_are_not_public(live: LiveNginx) -> None:
    with live.client() as client:
        allowed = client.get(live.https("/metrics"), headers={"Host": API_HOST})
        assert allowed.status_code == 200
    # 127.0.0.2 stands for any address outside includes/metrics-allow.conf.
    with live.client(local_address="127.0.0.2") as outsider:
        for host in (API_HOST, UI_HOST):
            denied = outsider.get(live.https("/metrics"), headers={"Host": host})
            assert denied.status_code == 403


def test_grafana_is_served_under_a_path(live: LiveNginx) -> None:
    with live.client() as client:
        response = client.get(live.https("/grafana/api/health"), headers={"Host": UI_HOST})
    assert response.status_code == 200
    assert response.json()["server"] == "grafana"
    assert "'unsafe-eval'" in response.headers["content-security-policy"]


def test_gzip_for_json(live: LiveNginx) -> None:
    with live.client() as client:
        response = client.get(
            live.https("/api/v1/big"), headers={"Host": API_HOST, "Accept-Encoding": "gzip"}
        )
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert len(response.json()["padding"]) == 8000


def test_rate_limit_answers_429(live: LiveNginx) -> None:
    def burst(_: int) -> list[int]:
        with live.client(local_address="127.0.0.3") as client:
            return [
                client.get(live.https("/api/v1/traces"), headers={"Host": API_HOST}).status_code
                for _ in range(25)
            ]

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = [status for batch in pool.map(burst, range(16)) for status in batch]
    # 400 requests from one address, far above 30 r/s + a burst of 60.
    assert statuses.count(200) >= 60
    assert statuses.count(429) > 0
    assert set(statuses) <= {200, 429}


def test_access_log_is_json_without_credentials(live: LiveNginx) -> None:
    token = "obs_secret_token_that_must_not_be_logged"
    with live.client() as client:
        client.get(
            live.https("/api/v1/traces"),
            headers={"Host": API_HOST, "Authorization": f"Bearer {token}", "x-api-key": token},
        )

    def logged() -> list[dict[str, object]]:
        lines = live.config.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines]

    entries = wait_until(lambda: len(logged()) > 0 and logged(), 5, "access log lines")
    assert isinstance(entries, list)
    for entry in entries:
        for key in ("time", "remote_addr", "status", "method", "uri", "host", "request_time"):
            assert key in entry
        assert isinstance(entry["status"], int)
    assert token not in live.config.access_log.read_text()
    assert any(e["remote_addr"] == "127.0.0.1" and e["host"] == API_HOST for e in entries)
