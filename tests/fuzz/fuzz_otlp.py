"""Coverage-guided fuzzing (atheris/libFuzzer) of the OTLP decoders and the whole ingest pipeline.

Run: .venv/bin/python tests/fuzz/fuzz_otlp.py -runs=100000 -rss_limit_mb=1024
Any exception other than the documented decode errors is a crash and fails the run.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports(include=["observatory"]):
    from observatory.ingest import otlp
    from observatory.ingest.pipeline import JSON, PROTOBUF, Policy, TooManySpans, prepare
    from observatory.ingest.redact import build_redactor

POLICY = Policy(
    redactor=build_redactor({"detectors": {"email": True, "credit_card": True}}, b"key")
)


def test_one(data: bytes) -> None:
    if not data:
        return
    kind = JSON if data[0] & 1 else PROTOBUF
    with contextlib.suppress(otlp.OtlpDecodeError, TooManySpans):
        prepare(data[1:], kind, 1, POLICY)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
