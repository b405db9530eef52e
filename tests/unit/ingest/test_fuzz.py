"""Run the atheris fuzzer for a bounded number of inputs, seeded with real OTLP payloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.otlp_builder import SpanSpec, agent_trace, json_request, llm_attributes, protobuf_request

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_otlp.py"


def test_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [
        protobuf_request(agent_trace(1, 2)),
        protobuf_request(
            [SpanSpec(2, 1, attributes=llm_attributes(**{"gen_ai.input.messages": "[]"}))]
        ),
    ]
    for i, seed in enumerate(seeds):
        (corpus / f"pb{i}").write_bytes(b"\x00" + seed)
    (corpus / "json").write_bytes(b"\x01" + json_request(agent_trace(3, 1)))
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            str(corpus),
            "-runs=20000",
            "-max_total_time=60",
            "-rss_limit_mb=1024",
            "-max_len=8192",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=HARNESS.parents[2],
        env={"PYTHONPATH": str(HARNESS.parents[2]), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr or "DONE" in result.stderr, result.stderr[-1000:]
    assert not list(tmp_path.glob("crash-*"))
