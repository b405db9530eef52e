"""Percentiles, trends and the machine description."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = q * (len(data) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max in milliseconds."""
    out: dict[str, Any] = {"count": len(seconds)}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        value = percentile(seconds, q)
        out[f"{name}_ms"] = None if value is None else round(value * 1000, 2)
    out["mean_ms"] = round(sum(seconds) / len(seconds) * 1000, 2) if seconds else None
    return out


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value units per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def machine_info(pg_dsn: str | None = None) -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python, PostgreSQL server version and the load average."""
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "postgresql": None,
    }
    if pg_dsn:
        try:
            import psycopg

            with psycopg.connect(pg_dsn, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                info["postgresql"] = row[0] if row else None
                names = (
                    "shared_buffers",
                    "work_mem",
                    "effective_cache_size",
                    "max_wal_size",
                    "synchronous_commit",
                )
                info["postgresql_settings"] = {
                    name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                    for name in names
                }
        except Exception as exc:
            info["postgresql"] = f"unreachable ({exc.__class__.__name__})"
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info
