"""In-process application fixtures: the real app and database, through Starlette's client."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from observatory.app import create_app
from observatory.config import Settings, load_settings
from tests.conftest import free_port
from tests.integration.alert_receivers import SmtpReceiver, WebhookReceiver


class App:
    def __init__(self, client: TestClient, admin_key: str, settings: Any) -> None:
        self.client = client
        self.admin_key = admin_key
        self.settings = settings
        self.state = client.app.state.obs  # type: ignore[attr-defined]

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}", **extra}

    def get(self, path: str, key: str | None = None, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.headers(key), **kwargs)

    def ingest(
        self,
        body: bytes,
        key: str | None = None,
        content_type: str = "application/x-protobuf",
        **headers: str,
    ) -> Any:
        return self.client.post(
            "/v1/traces",
            content=body,
            headers=self.headers(key, **{"Content-Type": content_type}, **headers),
        )

    def create_key(self, role: str, key: str | None = None) -> str:
        response = self.client.post(
            "/api/v1/admin/keys", json={"role": role}, headers=self.headers(key)
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., App]]:
    clients: list[TestClient] = []

    def factory(database_url: str, **overrides: Any) -> App:
        data_dir = tmp_path / f"data{len(clients)}"
        defaults: dict[str, Any] = {
            "data_dir": str(data_dir),
            "database_url": database_url,
            "initial_admin_key": "obs_admin_" + "x" * 20 + str(len(clients)),
            # Fixed timestamps in the past: the scheduled retention must not run under them.
            "retention_interval_seconds": 0,
            # In-process apps prepare ingest in threads (the same code, without starting worker
            # processes for every test); the worker processes are exercised by the server
            # process tests and tests/integration/test_ingest_workers.py.
            "ingest_processes": 0,
        }
        # Several apps run at once in the tests: none may take the default gRPC port.
        if "grpc_port" in {f.name for f in dataclasses.fields(Settings)}:
            defaults["grpc_port"] = free_port()
        settings = load_settings({**defaults, **overrides}, env={})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        key = client.app.state.initial_admin_key or settings.initial_admin_key  # type: ignore[attr-defined]
        return App(client, key, settings)

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def app(app_factory: Callable[..., App], database_url: str) -> App:
    """The application on SQLite and on PostgreSQL (parametrised by ``database_url``)."""
    return app_factory(database_url)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A local HTTP receiver for alert webhooks (and Slack-compatible ones)."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """A local SMTP server recording the alert e-mails."""
    receiver = SmtpReceiver()
    yield receiver
    receiver.close()
