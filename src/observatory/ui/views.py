"""The web UI (server-rendered). Installed on the API role only."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

_LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLM Observatory</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>LLM Observatory</h1>
<p>The API is at <a href="/docs">/docs</a>; OTLP/HTTP traces go to <code>/v1/traces</code>.</p>
</main></body></html>"""


def install_ui(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def landing() -> HTMLResponse:
        return HTMLResponse(_LANDING)
