"""PII and secret redaction, applied at ingest before anything is stored.

A project's ``settings["redaction"]`` configures it:

```
{"enabled": true,                       # master switch for the detectors
 "detectors": {"email": true, ...},      # on/off per built-in detector (defaults below)
 "custom": [{"name": "ticket", "pattern": "TCK-[0-9]{6}"}],
 "action": "mask" | "hash" | "drop",     # typed placeholder, keyed hash, or remove the content
 "store_content": true}                  # false: keep no prompts/completions at all
```

Redaction covers the prompt and completion (structured message lists included), every span,
resource, event and link attribute, and the span's name and status message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ahocorasick_rs

from observatory import semconv
from observatory.model import Span

ACTIONS = ("mask", "hash", "drop")

# name → (pattern, on by default). Secrets are on by default; personal data is opt-in.
DETECTORS: dict[str, tuple[str, bool]] = {
    "private_key": (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        True,
    ),
    "jwt": (r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}", True),
    "bearer_token": (r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{16,}", True),
    "api_key": (
        r"\b(?:sk-ant-[A-Za-z0-9_-]{20,}|sk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}"
        r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"
        r"|AIza[0-9A-Za-z_-]{35}|xox[abprs]-[A-Za-z0-9-]{10,}|[rs]k_live_[0-9A-Za-z]{20,}"
        r"|obs_[A-Za-z0-9_-]{30,})",
        True,
    ),
    "email": (r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", False),
    "credit_card": (r"\b(?:\d[ -]?){12,18}\d\b", False),
    "us_ssn": (r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b", False),
    "phone": (
        r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}[\s.-]?\d{3,4}[\s.-]?\d{3,4}"
        r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?!\w)",
        False,
    ),
    "ip_address": (
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])"
        r"|(?<![\w:])[0-9A-Fa-f]{0,4}::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}(?![\w:])",
        False,
    ),
}
# Literal substrings without which a detector cannot match. When every enabled detector has
# them (the default, secrets-only policy), a string containing none of them is skipped without
# running the regular expression — most attribute values and prompts.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "private_key": ("PRIVATE KEY-----",),
    "jwt": ("eyJ",),
    "bearer_token": ("earer", "EARER"),
    "api_key": (
        "sk-",
        "k_live_",
        "AKIA",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "AIza",
        "xox",
        "obs_",
    ),
    "email": ("@",),
}
# Detectors whose matches are checked further before they count.
_VALIDATORS: dict[str, Callable[[str], bool]] = {}


# A JSON \\u escape; "\\u" alone also occurs by chance in the binary ids of protobuf bodies.
_JSON_ESCAPE = re.compile(rb"\\u[0-9A-Fa-f]{4}")


@functools.lru_cache(maxsize=32)
def _trigger_scanner(triggers: tuple[str, ...]) -> ahocorasick_rs.BytesAhoCorasick:
    return ahocorasick_rs.BytesAhoCorasick([t.encode() for t in triggers])


def luhn_ok(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


_VALIDATORS["credit_card"] = luhn_ok
_VALIDATORS["ip_address"] = _ip_ok


class RedactionConfigError(ValueError):
    """A project's redaction settings are not usable (bad regex, unknown detector, …)."""


@dataclass
class Redactor:
    """A compiled redaction policy for one project."""

    detectors: list[str]
    custom: list[tuple[str, str]]
    action: str
    store_content: bool
    hash_key: bytes
    pattern: re.Pattern[str] | None = field(init=False, default=None)
    _triggers: tuple[str, ...] | None = field(init=False, default=None)
    _groups: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        triggers: set[str] = set()
        for name in self.detectors:
            triggers.update(TRIGGERS.get(name, ("",)))
        # "" is in every string: a detector without literal triggers disables the shortcut.
        self._triggers = tuple(sorted(triggers)) if "" not in triggers and not self.custom else None
        parts = []
        for index, name in enumerate(self.detectors):
            group = f"d{index}"
            self._groups[group] = name
            parts.append(f"(?P<{group}>{DETECTORS[name][0]})")
        for index, (name, regex) in enumerate(self.custom):
            group = f"c{index}"
            self._groups[group] = name
            parts.append(f"(?P<{group}>{regex})")
        if parts:
            self.pattern = re.compile("|".join(parts))

    @property
    def active(self) -> bool:
        return self.pattern is not None or not self.store_content

    def _replace(self, match: re.Match[str]) -> str:
        group = match.lastgroup or ""
        name = self._groups.get(group, "custom")
        text = match.group(0)
        validator = _VALIDATORS.get(name)
        if validator is not None and not validator(text):
            return text
        if self.action == "hash":
            digest = hmac.new(self.hash_key, text.encode(), hashlib.sha256).hexdigest()[:16]
            return f"[{name.upper()}:{digest}]"
        return f"[REDACTED:{name.upper()}]"

    @property
    def screens_serialized(self) -> bool:
        """Whether :meth:`serialized` may stand in for :meth:`apply`: masking or hashing with
        detectors that all have literal triggers, and content kept."""
        return (
            self.pattern is not None
            and self._triggers is not None
            and self.action != "drop"
            and self.store_content
        )

    def text(self, value: str) -> str:
        if self.pattern is None or not value:
            return value
        if self._triggers is not None and not any(t in value for t in self._triggers):
            return value
        return self.pattern.sub(self._replace, value)

    def clean_body(self, body: bytes, *, has_bytes: bool) -> bool:
        """Whether no detector can match anything decoded from this request body.

        Every string of an OTLP request is in its body as UTF-8 (protobuf) or JSON text, so a
        body without any trigger holds no string a detector could match: one scan of the body
        then replaces a scan per span. Not when a string might be hidden from the scan: JSON
        ``\\u`` escapes (also inside JSON-encoded attribute values such as message lists)
        and protobuf bytes values (stored as base64 text).
        """
        if self._triggers is None or has_bytes or _JSON_ESCAPE.search(body):
            return False
        return not _trigger_scanner(self._triggers).find_matches_as_indexes(body)

    def fires(self, value: str) -> bool:
        """Whether a detector may match in ``value`` (a trigger occurs, or there are none)."""
        if self.pattern is None:
            return False
        if self._triggers is None:
            return True
        return bool(_trigger_scanner(self._triggers).find_matches_as_indexes(value.encode()))

    def serialized(self, value: Any, encoded: bytes, dumps: Callable[[Any], bytes]) -> bytes:
        """``encoded`` is ``dumps(value)``; return the encoding of the redacted value.

        When no trigger occurs anywhere in the encoded bytes (keys included), no detector can
        match any string in ``value`` and the bytes are returned as they are: one multi-pattern
        scan instead of a search per string. JSON escaping cannot hide a trigger, as triggers
        hold no character that JSON escapes. Only for :attr:`screens_serialized` redactors.
        """
        assert self._triggers is not None
        if not _trigger_scanner(self._triggers).find_matches_as_indexes(encoded):
            return encoded
        return dumps(self.value(value))

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def contains(self, value: Any) -> bool:
        """Whether any detector matches (used by the "drop" action)."""
        if self.pattern is None:
            return False
        if isinstance(value, str):
            return any(self._replace(m) != m.group(0) for m in self.pattern.finditer(value))
        if isinstance(value, list):
            return any(self.contains(v) for v in value)
        if isinstance(value, dict):
            return any(self.contains(v) for v in value.values())
        return False

    def apply(self, span: Span) -> Span:
        """Redact a normalised span in place."""
        if not self.store_content:
            span.prompt = None
            span.completion = None
            span.attributes = strip_content(span.attributes)
            span.events = [
                {**e, "attributes": strip_content(e.get("attributes") or {})}
                if e.get("name", "").startswith("gen_ai.")
                else e
                for e in span.events
            ]
        if self.pattern is None:
            return span
        if self.action == "drop":
            return self._drop(span)
        span.prompt = self.value(span.prompt)
        span.completion = self.value(span.completion)
        span.attributes = self.value(span.attributes)
        span.resource_attributes = self.value(span.resource_attributes)
        span.events = self.value(span.events)
        span.links = self.value(span.links)
        span.name = self.text(span.name)
        if span.status_message:
            span.status_message = self.text(span.status_message)
        for attr in ("user_id", "session_id"):
            current = getattr(span, attr)
            if current:
                setattr(span, attr, self.text(current))
        return span

    def _drop(self, span: Span) -> Span:
        """Remove any content in which a detector fires (whole prompt/completion, values)."""
        if self.contains(span.prompt):
            span.prompt = None
        if self.contains(span.completion):
            span.completion = None
        span.attributes = {
            k: ("[REDACTED]" if self.contains(v) else v) for k, v in span.attributes.items()
        }
        span.resource_attributes = {
            k: ("[REDACTED]" if self.contains(v) else v)
            for k, v in span.resource_attributes.items()
        }
        for event in span.events:
            attrs = event.get("attributes") or {}
            event["attributes"] = {
                k: ("[REDACTED]" if self.contains(v) else v) for k, v in attrs.items()
            }
        span.links = [
            {
                **link,
                "attributes": {
                    k: ("[REDACTED]" if self.contains(v) else v)
                    for k, v in (link.get("attributes") or {}).items()
                },
            }
            for link in span.links
        ]
        if self.contains(span.name):
            span.name = "[REDACTED]"
        if span.status_message and self.contains(span.status_message):
            span.status_message = "[REDACTED]"
        for attr in ("user_id", "session_id"):
            if self.contains(getattr(span, attr)):
                setattr(span, attr, "[REDACTED]")
        return span


_CONTENT_KEYS = frozenset(
    semconv.INPUT_MESSAGES
    + semconv.OUTPUT_MESSAGES
    + semconv.SYSTEM_INSTRUCTIONS
    + semconv.INPUT_VALUE
    + semconv.OUTPUT_VALUE
    + ("content", "message", "gen_ai.event.content", "tool_calls")
)
_CONTENT_PREFIXES = (
    semconv.OPENLLMETRY_PROMPT_PREFIX,
    semconv.OPENLLMETRY_COMPLETION_PREFIX,
    semconv.OPENINFERENCE_INPUT_PREFIX,
    semconv.OPENINFERENCE_OUTPUT_PREFIX,
)


def strip_content(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes without any that carry prompt or completion content."""
    return {
        k: v
        for k, v in attributes.items()
        if k not in _CONTENT_KEYS and not k.startswith(_CONTENT_PREFIXES)
    }


def default_policy() -> dict[str, Any]:
    return {
        "enabled": True,
        "detectors": {name: default for name, (_, default) in DETECTORS.items()},
        "custom": [],
        "action": "mask",
        "store_content": True,
    }


def validate_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Check a redaction policy and fill in defaults; raise RedactionConfigError if unusable."""
    merged = default_policy()
    unknown = set(policy) - set(merged)
    if unknown:
        raise RedactionConfigError(f"unknown redaction settings: {', '.join(sorted(unknown))}")
    merged["enabled"] = bool(policy.get("enabled", True))
    detectors = policy.get("detectors") or {}
    if not isinstance(detectors, Mapping):
        raise RedactionConfigError("detectors must be an object of name: true/false")
    for name, on in detectors.items():
        if name not in DETECTORS:
            raise RedactionConfigError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
        merged["detectors"][name] = bool(on)
    custom = policy.get("custom") or []
    if not isinstance(custom, list) or len(custom) > 50:
        raise RedactionConfigError("custom must be a list of at most 50 {name, pattern} objects")
    checked = []
    for item in custom:
        if not isinstance(item, Mapping) or not isinstance(item.get("pattern"), str):
            raise RedactionConfigError("each custom detector needs a name and a pattern")
        name = str(item.get("name") or "custom")[:32]
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise RedactionConfigError(
                f"custom detector name {name!r}: letters, digits, _ and - only"
            )
        pattern = item["pattern"]
        if len(pattern) > 500:
            raise RedactionConfigError(f"custom pattern {name!r} is longer than 500 characters")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise RedactionConfigError(
                f"custom pattern {name!r} is not a valid regex: {exc}"
            ) from exc
        if compiled.search("") is not None:
            raise RedactionConfigError(f"custom pattern {name!r} matches the empty string")
        if compiled.groups:
            pattern = re.sub(r"\((?!\?)", "(?:", pattern)  # named groups are ours
        checked.append({"name": name, "pattern": pattern})
    merged["custom"] = checked
    action = policy.get("action", "mask")
    if action not in ACTIONS:
        raise RedactionConfigError(f"action must be one of {', '.join(ACTIONS)}")
    merged["action"] = action
    merged["store_content"] = bool(policy.get("store_content", True))
    return merged


def build_redactor(policy: Mapping[str, Any] | None, hash_key: bytes) -> Redactor:
    merged = validate_policy(policy or {})
    detectors = [n for n, on in merged["detectors"].items() if on] if merged["enabled"] else []
    custom = [(c["name"], c["pattern"]) for c in merged["custom"]] if merged["enabled"] else []
    return Redactor(detectors, custom, merged["action"], merged["store_content"], hash_key)
