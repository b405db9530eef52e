"""The Jinja environment (autoescaped; never ``|safe`` on data), formatting filters, rendering."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from starlette.responses import HTMLResponse

from observatory import __version__
from observatory.ui import conversation

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
NO_STORE = {"cache-control": "no-store", "vary": "Cookie"}


def fmt_int(value: Any) -> str:
    if value is None:
        return "—"
    return f"{int(value):,}"


def fmt_compact(value: Any) -> str:
    """1234 → 1.2k, 2_500_000 → 2.5M (for tiles and charts' neighbours)."""
    if value is None:
        return "—"
    number = float(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            scaled = number / limit
            return f"{scaled:.1f}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{int(number):,}" if number == int(number) else f"{number:.1f}"


def fmt_usd(value: Any) -> str:
    if value is None or value == "":
        return "—"
    amount = Decimal(str(value))
    if amount == 0:
        return "$0"
    if abs(amount) >= 1000:
        return f"${amount:,.0f}"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    if abs(amount) >= Decimal("0.01"):
        text = f"{amount:.4f}".rstrip("0")
        return "$" + (text + "0" if len(text.split(".")[1]) < 2 else text)
    # Small amounts: three significant digits.
    digits = max(2, -amount.adjusted() + 2)
    return f"${amount:.{digits}f}".rstrip("0").rstrip(".")


def fmt_ms(value: Any) -> str:
    if value is None:
        return "—"
    ms = float(value)
    if math.isnan(ms):
        return "—"
    if ms == 0:
        return "0"
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(ms / 1000, 60)
    if minutes < 60:
        return f"{int(minutes)}m {int(seconds)}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h {int(minutes)}m"


def fmt_pct(value: Any) -> str:
    if value is None:
        return "—"
    pct = float(value) * 100
    if pct == 0:
        return "0%"
    if pct < 0.1:
        return "<0.1%"
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def iso_ns(value: Any) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(int(value) / 1e9, tz=UTC).isoformat(timespec="milliseconds")


def utc_ns(value: Any) -> str:
    if value is None:
        return "—"
    return datetime.fromtimestamp(int(value) / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_dt(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def utc_dt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def short_id(value: Any, length: int = 8) -> str:
    text = str(value or "")
    return text if len(text) <= length + 1 else text[:length] + "…"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template; prompts and completions are untrusted
        undefined=jinja2.Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt_int,
        compact=fmt_compact,
        usd=fmt_usd,
        ms=fmt_ms,
        pct=fmt_pct,
        iso_ns=iso_ns,
        utc_ns=utc_ns,
        iso_dt=iso_dt,
        utc_dt=utc_dt,
        short_id=short_id,
        pretty=conversation.pretty,
    )
    env.globals["version"] = __version__
    env.globals["messages"] = conversation.messages
    env.globals["preview"] = conversation.preview
    return env


class Renderer:
    def __init__(self) -> None:
        self.env = environment()

    def render(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        session = context.get("session")
        base = {
            "request": request,
            "session": session,
            "csrf_token": session.csrf_token if session is not None else "",
            "path": request.url.path,
            "url": lambda **changes: url_with(request, **changes),
            "static": static_url,
            "nav": context.get("nav", ""),
            "carry": carry_query(request),
        }
        html = self.env.get_template(name).render({**base, **context})
        return HTMLResponse(html, status_code=status_code, headers={**NO_STORE, **(headers or {})})


def static_url(name: str) -> str:
    return f"/static/{name}?v={__version__}"


# Parameters that follow the user from page to page (time range and scope).
CARRIED = ("range", "start", "end", "environment", "service")


def carry_query(request: Request) -> str:
    items = [(k, request.query_params[k]) for k in CARRIED if request.query_params.get(k)]
    return ("?" + urlencode(items)) if items else ""


def url_with(request: Request, **changes: Any) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    path = changes.pop("_path", None) or request.url.path
    params = {k: v for k, v in request.query_params.items() if v != ""}
    for name, value in changes.items():
        if value is None or value == "":
            params.pop(name, None)
        else:
            params[name] = str(value)
    return path + ("?" + urlencode(params) if params else "")
