"""Token-bucket rate limits shared by every server through Redis, in-process when it is down.

The Redis bucket is updated by one Lua script (atomic, using Redis' own clock so servers with
skewed clocks agree). While Redis is unreachable each process enforces the same limit on its
own, so limits stay in force, only looser by the number of processes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import redis as redis_lib

from observatory.cache.redis import RedisCache

_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - ts) / 1000 * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # bucket size
    remaining: int
    retry_after_seconds: int  # 0 when allowed
    reset_seconds: int  # until the bucket is full again


class _LocalBucket:
    __slots__ = ("tokens", "ts")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.ts = time.monotonic()


class RateLimiter:
    """``check(key, rate_per_second, burst, cost)`` against Redis or, failing that, locally."""

    def __init__(self, redis_cache: RedisCache | None) -> None:
        self.redis = redis_cache
        self._script = redis_cache.client.register_script(_SCRIPT) if redis_cache else None
        self._local: dict[str, _LocalBucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str, rate_per_second: float, burst: float, cost: float = 1.0) -> Decision:
        if self.redis is not None and self._script is not None and self.redis.usable():
            try:
                allowed, tokens = self._script(
                    keys=[self.redis.prefix + "rl:" + key], args=[rate_per_second, burst, cost]
                )
            except (redis_lib.RedisError, OSError) as exc:
                self.redis.failed(exc)
            else:
                self.redis.ok()
                granted = bool(int(allowed))
                return self._decision(granted, float(tokens), rate_per_second, burst, cost)
        return self._check_local(key, rate_per_second, burst, cost)

    def _check_local(self, key: str, rate: float, burst: float, cost: float) -> Decision:
        with self._lock:
            bucket = self._local.get(key)
            if bucket is None:
                if len(self._local) > 100_000:
                    self._local.clear()
                bucket = self._local[key] = _LocalBucket(burst)
            now = time.monotonic()
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.ts) * rate)
            bucket.ts = now
            allowed = bucket.tokens >= cost
            if allowed:
                bucket.tokens -= cost
            return self._decision(allowed, bucket.tokens, rate, burst, cost)

    @staticmethod
    def _decision(allowed: bool, tokens: float, rate: float, burst: float, cost: float) -> Decision:
        retry = 0 if allowed else max(1, math.ceil((min(cost, burst) - tokens) / rate))
        reset = math.ceil(max(0.0, burst - tokens) / rate)
        return Decision(allowed, int(burst), max(0, int(tokens)), retry, reset)
