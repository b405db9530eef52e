"""Static guarantees of the web UI: autoescaped templates with no inline script (the CSP forbids
it), only local assets, and vendored files that match the manifest scripts/vendor-ui.sh wrote."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from observatory.ui import render
from tests.integration.conftest import App

TEMPLATES = sorted(render.TEMPLATES.glob("*.html"))
VENDOR = render.STATIC / "vendor"


def test_templates_never_mark_data_safe_or_run_inline_code() -> None:
    assert len(TEMPLATES) >= 10
    env = render.environment()
    assert env.autoescape is True
    for path in TEMPLATES:
        text = path.read_text()
        assert "|safe" not in text.replace(" ", ""), path.name
        assert "autoescape false" not in text and "Markup(" not in text, path.name
        # Inline event handlers and inline scripts are blocked by script-src 'self'.
        assert not re.search(r"\son[a-z]+\s*=", text), path.name
        for attrs in re.findall(r"<script([^>]*)>", text):
            assert "src=" in attrs or 'type="application/json"' in attrs, (path.name, attrs)
        # No CDN: every asset is served by this server.
        assert not re.search(r'(src|href)="(https?:)?//', text), path.name


def test_vendored_assets_match_their_manifest() -> None:
    manifest = (VENDOR / "VENDORED.txt").read_text().splitlines()
    hashes = dict(reversed(line.split()) for line in manifest if re.match(r"^[0-9a-f]{64}\s", line))
    assert set(hashes) == {
        "htmx.min.js",
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "inter-latin-wght-normal.woff2",
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    }
    for name, digest in hashes.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    script = Path(__file__).resolve().parents[2] / "scripts" / "vendor-ui.sh"
    assert "npm pack" in script.read_text()


def test_assets_are_served_without_a_session(
    app_factory: Callable[..., App], tmp_path: Path
) -> None:
    ui = app_factory(f"sqlite:///{tmp_path / 'static.db'}")
    for name, kind in (
        ("app.css", "text/css"),
        ("app.js", "javascript"),
        ("vendor/htmx.min.js", "javascript"),
        ("vendor/uPlot.iife.min.js", "javascript"),
        ("favicon.svg", "image/svg+xml"),
    ):
        response = ui.client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["content-type"], name
        assert response.headers["x-content-type-options"] == "nosniff"
    assert ui.client.get("/static/../app.py").status_code == 404
    login_page = ui.client.get("/login")
    csp = login_page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
