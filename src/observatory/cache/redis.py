"""The shared second cache level in Redis (or Redis behind Sentinel).

Every call degrades instead of failing: while Redis is unreachable the cache answers "miss",
writes are dropped and the next attempt is made after a short back-off, so ingest and queries go
on without it and use it again as soon as it is back, without a restart.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

log = logging.getLogger(__name__)
RETRY_SECONDS = 2.0


def connect(url: str, timeout: float = 0.5) -> redis.Redis:  # type: ignore[type-arg]
    """``redis://…`` or ``redis+sentinel://:pass@h1:26379,h2:26379/service/db``."""
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    netloc = parts.netloc
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1]) if ":" in auth else unquote(auth)
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or item, int(port) if port else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(
            "redis+sentinel URLs need the service name: redis+sentinel://h:26379/mymaster/0"
        )
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(
        hosts,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # Sentinels protected with requirepass take the same password as the data nodes.
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "password": password,
        },
        password=password,
        db=db,
    )
    return sentinel.master_for(service, socket_timeout=timeout, socket_connect_timeout=timeout)


class RedisCache:
    """Bytes in, bytes out; errors become misses."""

    def __init__(self, url: str, prefix: str = "obs:") -> None:
        self.client = connect(url)
        self.prefix = prefix
        self._down_until = 0.0
        self.available = True

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, exc: Exception) -> None:
        if self.available:
            log.warning("redis unavailable, continuing without it: %s", exc.__class__.__name__)
        self.available = False
        self._down_until = time.monotonic() + RETRY_SECONDS

    def ok(self) -> None:
        if not self.available:
            log.info("redis is back")
        self.available = True

    def get(self, key: str) -> bytes | None:
        if not self.usable():
            raise ConnectionError("redis is unavailable")
        try:
            value: Any = self.client.get(self.prefix + key)
        except (redis.RedisError, OSError) as exc:
            self.failed(exc)
            raise ConnectionError("redis is unavailable") from exc
        self.ok()
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl: float) -> None:
        if not self.usable():
            return
        try:
            self.client.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))
        except (redis.RedisError, OSError) as exc:
            self.failed(exc)
            return
        self.ok()

    def incr(self, key: str) -> int | None:
        if not self.usable():
            return None
        try:
            value = int(self.client.incr(self.prefix + key))
        except (redis.RedisError, OSError) as exc:
            self.failed(exc)
            return None
        self.ok()
        return value

    def ping(self) -> bool:
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            self.failed(exc)
            return False
        self.ok()
        return True
