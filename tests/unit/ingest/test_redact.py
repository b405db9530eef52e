"""The default (secrets-only) policy skips strings without trigger substrings; it must still
catch every secret, and leave ordinary text alone."""

from __future__ import annotations

import pytest

from observatory.ingest.redact import build_redactor, luhn_ok

SECRETS = {
    "api_key": [
        "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt",
        "AKIAABCDEFGHIJKLMNOP",
        "ghp_" + "a" * 36,
        "AIza" + "b" * 35,
        "xoxb-1234567890-abc",
        "sk_live_" + "c" * 24,
        "obs_" + "d" * 40,
    ],
    "bearer_token": ["Bearer abcdefghijklmnopqrstuvwxyz012345", "BEARER abcdefghijklmnopqrstuvwx"],
    "jwt": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9Pl"],
    "private_key": ["-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"],
}


@pytest.mark.parametrize(("detector", "secret"), [(d, s) for d, ss in SECRETS.items() for s in ss])
def test_default_policy_redacts_every_secret(detector: str, secret: str) -> None:
    redactor = build_redactor(None, b"key")
    assert redactor._triggers is not None  # the shortcut is in use
    out = redactor.text(f"config: {secret} end")
    assert secret not in out and f"[REDACTED:{detector.upper()}]" in out


def test_ordinary_text_is_untouched_and_cards_need_luhn() -> None:
    redactor = build_redactor(None, b"key")
    text = "The quick brown fox, high through the night, paid 4111 1111 1111 1111."
    assert redactor.text(text) == text  # cards are opt-in
    assert luhn_ok("4111 1111 1111 1111") and not luhn_ok("4111 1111 1111 1112")
    cards = build_redactor({"detectors": {"credit_card": True}}, b"key")
    assert cards._triggers is None
    assert "[REDACTED:CREDIT_CARD]" in cards.text(text)
