"""Delivering alert notifications: JSON webhook, Slack-compatible webhook and SMTP e-mail.

Everything here is blocking I/O with a timeout; callers run it in a worker thread. A channel that
fails never raises: its outcome (``sent``, ``failed``, ``blocked``, ``not_configured``) is
returned, counted in ``observatory_alert_notifications_total`` and stored in the history.

Webhook URLs are chosen by project admins and the server requests them, so they are a
server-side request forgery vector (docs/ALERTS.md): only http(s) URLs are accepted, redirects
are never followed, and ``OBSERVATORY_ALERT_WEBHOOK_BLOCK_PRIVATE`` refuses destinations that
resolve to loopback, private, link-local or otherwise reserved addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from observatory import __version__, metrics
from observatory.alerting.rules import channel_target, describe, window_text
from observatory.config import Settings
from observatory.store.alerts import AlertRule

log = logging.getLogger(__name__)

# Time ranges of the UI's overview page; a link opens the smallest one covering the window.
UI_RANGES = (("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800), ("30d", 2592000))
STATE_TITLES = {
    "firing": "FIRING",
    "resolved": "RESOLVED",
    "reminder": "STILL FIRING",
    "test": "TEST",
}


class Blocked(Exception):
    """The destination is not allowed (OBSERVATORY_ALERT_WEBHOOK_BLOCK_PRIVATE)."""


@dataclass(frozen=True)
class Delivery:
    """How notifications leave the server (from the settings)."""

    base_url: str
    timeout_seconds: float = 10.0
    block_private: bool = False
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "observatory@localhost"
    smtp_starttls: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Delivery:
        base = settings.alert_base_url
        if not base:
            host = settings.host
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 # nosec B104 - checked, not bound
                host = "127.0.0.1"
            base = f"http://{host}:{settings.port}"
        return cls(
            base_url=base.rstrip("/"),
            timeout_seconds=settings.alert_timeout_seconds,
            block_private=settings.alert_webhook_block_private,
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_username=settings.smtp_username,
            smtp_password=settings.smtp_password,
            smtp_from=settings.smtp_from,
            smtp_starttls=settings.smtp_starttls,
        )


@dataclass(frozen=True)
class Notice:
    """One thing to tell people about a rule."""

    state: str  # firing | resolved | reminder | test
    rule: AlertRule
    value: str | None
    at: datetime


def link(notice: Notice, delivery: Delivery) -> str:
    """The UI's overview over (at least) the rule's window, with the rule's filters."""
    key = next((k for k, s in UI_RANGES if s >= notice.rule.window_seconds), UI_RANGES[-1][0])
    query: dict[str, str] = {"range": key}
    for name in ("environment", "service"):
        if notice.rule.filters.get(name):
            query[name] = notice.rule.filters[name]
    return f"{delivery.base_url}/?{urlencode(query)}"


def summary(notice: Notice) -> str:
    rule = notice.rule
    value = notice.value if notice.value is not None else "no data"
    head = f"{STATE_TITLES[notice.state]}: {rule.name}"
    where = f"project {rule.project_name}"
    if notice.state == "test":
        return f"{head} — a test notification from LLM Observatory ({describe(rule)}, {where})"
    if notice.state == "resolved":
        return (
            f"{head} — {rule.metric} is {value}, no longer {rule.comparison} {rule.threshold} "
            f"over {window_text(rule.window_seconds)} ({where})"
        )
    return (
        f"{head} — {rule.metric} is {value}, {rule.comparison} {rule.threshold} "
        f"over {window_text(rule.window_seconds)} ({where})"
    )


def webhook_payload(notice: Notice, delivery: Delivery) -> dict[str, Any]:
    rule = notice.rule
    return {
        "version": "1",
        "state": notice.state,
        "summary": summary(notice),
        "rule": {
            "rule_id": rule.rule_id,
            "name": rule.name,
            "metric": rule.metric,
            "comparison": rule.comparison,
            "threshold": rule.threshold,
            "window_seconds": rule.window_seconds,
            "filters": rule.filters,
        },
        "value": notice.value,
        "threshold": rule.threshold,
        "window_seconds": rule.window_seconds,
        "project": {"project_id": rule.project_id, "name": rule.project_name},
        "at": notice.at.isoformat(),
        "link": link(notice, delivery),
    }


def _mrkdwn(text: str) -> str:
    # Slack's three control characters in message text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(notice: Notice, delivery: Delivery) -> dict[str, Any]:
    """A Slack incoming-webhook message (also understood by Mattermost, Rocket.Chat, …)."""
    rule = notice.rule
    text = summary(notice)
    value = notice.value if notice.value is not None else "no data"
    fields = [
        f"*Metric*\n{_mrkdwn(rule.metric)}",
        f"*Value*\n{_mrkdwn(value)}",
        f"*Threshold*\n{_mrkdwn(rule.comparison)} {_mrkdwn(rule.threshold)}",
        f"*Window*\n{window_text(rule.window_seconds)}",
    ]
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*{STATE_TITLES[notice.state]}*: {_mrkdwn(rule.name)}",
                },
            },
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"project {_mrkdwn(rule.project_name)} · "
                        f"<{link(notice, delivery)}|Open LLM Observatory>",
                    }
                ],
            },
        ],
    }


def email_message(notice: Notice, to: list[str], delivery: Delivery) -> EmailMessage:
    rule = notice.rule
    message = EmailMessage()
    message["Subject"] = f"[LLM Observatory] {summary(notice)}"[:250]
    message["From"] = delivery.smtp_from
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(notice.at)
    message["Message-ID"] = make_msgid(domain="llm-observatory")
    value = notice.value if notice.value is not None else "no data"
    filters = ", ".join(f"{k}={v}" for k, v in sorted(rule.filters.items())) or "none"
    message.set_content(
        f"{summary(notice)}\n\n"
        f"Rule:      {rule.name} (id {rule.rule_id})\n"
        f"Project:   {rule.project_name}\n"
        f"Metric:    {rule.metric}\n"
        f"Value:     {value}\n"
        f"Threshold: {rule.comparison} {rule.threshold}\n"
        f"Window:    {window_text(rule.window_seconds)}\n"
        f"Filters:   {filters}\n"
        f"At:        {notice.at.isoformat()}\n\n"
        f"{link(notice, delivery)}\n"
    )
    return message


# --- transports ---------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead the request somewhere the URL check never saw."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _check_destination(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        ):
            raise Blocked(f"{host} resolves to {address}, which is not allowed")


def post_json(url: str, body: dict[str, Any], delivery: Delivery) -> None:
    """POST ``body`` as JSON; raises on anything but a 2xx answer."""
    if delivery.block_private:
        _check_destination(url)
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s)
        url,
        data=orjson.dumps(body),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"llm-observatory/{__version__}",
        },
    )
    with _opener.open(request, timeout=delivery.timeout_seconds) as response:
        response.read(65536)
        if not 200 <= response.status < 300:
            raise OSError(f"HTTP {response.status}")


def send_email(message: EmailMessage, delivery: Delivery) -> None:
    assert delivery.smtp_host is not None
    timeout = delivery.timeout_seconds
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if delivery.smtp_port == 465:  # implicit TLS (SMTPS)
        smtp = smtplib.SMTP_SSL(delivery.smtp_host, 465, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(delivery.smtp_host, delivery.smtp_port, timeout=timeout)
    with smtp:
        if delivery.smtp_port != 465 and delivery.smtp_starttls:
            smtp.starttls(context=context)
        if delivery.smtp_username:
            smtp.login(delivery.smtp_username, delivery.smtp_password or "")
        smtp.send_message(message)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"connection failed: {exc.reason}"[:300]
    return f"{exc.__class__.__name__}: {exc}"[:300]


def send(notice: Notice, channel: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
    """Deliver one notice to one channel; never raises. Returns the outcome for the history."""
    kind = str(channel.get("type"))
    outcome = {
        "channel": kind,
        "target": channel_target(channel),
        "outcome": "sent",
        "error": None,
    }
    try:
        if kind == "webhook":
            post_json(str(channel["url"]), webhook_payload(notice, delivery), delivery)
        elif kind == "slack":
            post_json(str(channel["url"]), slack_payload(notice, delivery), delivery)
        elif kind == "email":
            if not delivery.smtp_host:
                outcome.update(outcome="not_configured", error="OBSERVATORY_SMTP_HOST is not set")
            else:
                to = list(channel.get("to") or [])
                send_email(email_message(notice, to, delivery), delivery)
        else:
            outcome.update(outcome="failed", error=f"unknown channel type {kind!r}")
    except Blocked as exc:
        outcome.update(outcome="blocked", error=str(exc))
    except Exception as exc:
        outcome.update(outcome="failed", error=_error_text(exc))
    if outcome["outcome"] != "sent":
        log.warning(
            "alert notification not delivered",
            extra={
                "rule_id": notice.rule.rule_id,
                "channel": kind,
                "target": outcome["target"],
                "outcome": outcome["outcome"],
                "error": outcome["error"],
            },
        )
    label = kind if kind in ("webhook", "slack", "email") else "unknown"
    metrics.alerts_notifications_total.labels(label, str(outcome["outcome"])).inc()
    return outcome


def deliver(notice: Notice, delivery: Delivery) -> list[dict[str, Any]]:
    """Send ``notice`` to every channel of its rule, one after another."""
    return [send(notice, channel, delivery) for channel in notice.rule.channels]
