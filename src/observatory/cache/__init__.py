"""Two-level cache for hot dashboard queries: in-process first, then Redis when configured.

Entries are keyed by the project's data generation, which every committed ingest batch bumps,
so a cached answer never outlives new data for longer than the bump takes to propagate
(immediately in-process; through Redis for the other servers of a cluster).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson

from observatory import metrics
from observatory.cache.memory import MemoryCache
from observatory.cache.redis import RedisCache

log = logging.getLogger(__name__)


class QueryCache:
    def __init__(self, redis_url: str | None, ttl_seconds: float) -> None:
        self.memory = MemoryCache()
        self.redis = RedisCache(redis_url) if redis_url else None
        self.ttl = ttl_seconds
        self._counts = {"memory": [0, 0], "redis": [0, 0]}
        self._lock = threading.Lock()
        self._local_generation: dict[int, int] = {}

    def _count(self, level: str, hit: bool) -> None:
        with self._lock:
            pair = self._counts[level]
            pair[0 if hit else 1] += 1
            total = pair[0] + pair[1]
            metrics.cache_hit_rate.labels(level).set(pair[0] / total if total else 0.0)
        metrics.cache_requests_total.labels(level, "hit" if hit else "miss").inc()

    def generation(self, project_id: int) -> str:
        local = self._local_generation.get(project_id, 0)
        if self.redis is not None:
            try:
                value = self.redis.get(f"gen:{project_id}")
            except ConnectionError:
                return f"l{local}"
            return f"r{int(value) if value else 0}.{local}"
        return f"l{local}"

    def bump(self, project_id: int) -> None:
        """New data for the project: cached answers for it are stale."""
        with self._lock:
            self._local_generation[project_id] = self._local_generation.get(project_id, 0) + 1
        if self.redis is not None:
            self.redis.incr(f"gen:{project_id}")

    def get_or_compute(self, project_id: int, key: str, compute: Callable[[], Any]) -> Any:
        if self.ttl <= 0:
            return compute()
        full_key = f"q:{project_id}:{self.generation(project_id)}:{key}"
        hit, value = self.memory.get(full_key)
        self._count("memory", hit)
        if hit:
            return value
        if self.redis is not None:
            try:
                raw = self.redis.get(full_key)
            except ConnectionError:
                raw = None
                metrics.cache_requests_total.labels("redis", "error").inc()
            else:
                self._count("redis", raw is not None)
            if raw is not None:
                value = orjson.loads(raw)
                self.memory.set(full_key, value, self.ttl)
                return value
        value = compute()
        self.memory.set(full_key, value, self.ttl)
        if self.redis is not None:
            self.redis.set(full_key, orjson.dumps(value, default=str), self.ttl)
        return value

    def status(self) -> str:
        if self.redis is None:
            return "memory-only"
        return "ok" if self.redis.ping() else "degraded"
