"""Table definitions (SQLAlchemy Core). The same names and columns on SQLite and PostgreSQL.

Times of spans are BIGINT unix nanoseconds (as in OTLP), rollup buckets BIGINT unix seconds.
Money is exact: NUMERIC(20,10) on PostgreSQL, an integer count of 1e-10 USD on SQLite (which has
no exact decimal type), both read back as ``Decimal``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from observatory.store.histogram import PERCENTILE_NAMES

USD_SCALE = Decimal("1e10")


class UsdAmount(TypeDecorator[Decimal]):
    """Exact USD amount: NUMERIC(20,10) on PostgreSQL, integer 1e-10 USD units on SQLite."""

    impl = Numeric(20, 10)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, 10, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return int((Decimal(value) * USD_SCALE).to_integral_value())
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)) / USD_SCALE
        return Decimal(value)


Id = BigInteger().with_variant(Integer(), "sqlite")
metadata = MetaData()

projects = Table(
    "projects",
    metadata,
    Column("project_id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("settings", Text, nullable=False, server_default="{}"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Id, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("name", String(128), nullable=False, server_default=""),
    Column("role", String(16), nullable=False),
    Column("key_prefix", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Index("ix_api_keys_project", "project_id"),
)

model_prices = Table(
    "model_prices",
    metadata,
    Column("price_id", Id, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("provider", String(64), nullable=False, server_default=""),
    Column("model", String(256), nullable=False),
    Column("input_usd_per_mtok", Numeric(20, 10), nullable=False),
    Column("output_usd_per_mtok", Numeric(20, 10), nullable=False),
    Column("cache_read_usd_per_mtok", Numeric(20, 10)),
    Column("cache_write_usd_per_mtok", Numeric(20, 10)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("project_id", "provider", "model", name="uq_model_prices"),
)

# Columns of spans in insertion order (the COPY/staging column list).
SPAN_COLUMNS: tuple[str, ...] = (
    "project_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "duration_ms",
    "status_code",
    "status_message",
    "service_name",
    "environment",
    "scope_name",
    "provider",
    "operation",
    "request_model",
    "response_model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "input_cost_usd",
    "output_cost_usd",
    "total_cost_usd",
    "time_to_first_token_ms",
    "finish_reason",
    "session_id",
    "user_id",
    "prompt",
    "completion",
    "attributes",
    "resource_attributes",
    "events",
    "links",
)

spans = Table(
    "spans",
    metadata,
    Column("span_rowid", Id, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("span_id", String(16), nullable=False),
    Column("parent_span_id", String(16)),
    Column("name", Text, nullable=False),
    Column("kind", SmallInteger, nullable=False),
    Column("start_time_unix_nano", BigInteger, nullable=False),
    Column("end_time_unix_nano", BigInteger, nullable=False),
    Column("duration_ms", Double, nullable=False),
    Column("status_code", SmallInteger, nullable=False),
    Column("status_message", Text),
    Column("service_name", Text),
    Column("environment", Text),
    Column("scope_name", Text),
    Column("provider", Text),
    Column("operation", Text),
    Column("request_model", Text),
    Column("response_model", Text),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("cache_read_tokens", BigInteger),
    Column("cache_write_tokens", BigInteger),
    Column("reasoning_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("input_cost_usd", UsdAmount),
    Column("output_cost_usd", UsdAmount),
    Column("total_cost_usd", UsdAmount),
    Column("time_to_first_token_ms", Double),
    Column("finish_reason", Text),
    Column("session_id", Text),
    Column("user_id", Text),
    Column("prompt", Text),
    Column("completion", Text),
    Column("attributes", Text, nullable=False),
    Column("resource_attributes", Text, nullable=False),
    Column("events", Text, nullable=False),
    Column("links", Text, nullable=False),
    # SQLite only; on PostgreSQL the migration creates a partitioned table whose unique key
    # must include the partition column (start_time_unix_nano).
    UniqueConstraint("project_id", "trace_id", "span_id", name="uq_spans_identity"),
    Index("ix_spans_trace", "project_id", "trace_id"),
    Index("ix_spans_start", "project_id", "start_time_unix_nano"),
)

traces = Table(
    "traces",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("start_time_unix_nano", BigInteger, nullable=False),
    Column("end_time_unix_nano", BigInteger, nullable=False),
    Column("duration_ms", Double, nullable=False),
    Column("root_span_id", String(16)),
    Column("root_span_name", Text),
    Column("span_count", BigInteger, nullable=False),
    Column("llm_call_count", BigInteger, nullable=False),
    Column("error_count", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("total_cost_usd", UsdAmount),
    Column("service_name", Text),
    Column("environment", Text),
    Column("user_id", Text),
    Column("session_id", Text),
    PrimaryKeyConstraint("project_id", "trace_id", name="pk_traces"),
    Index("ix_traces_start", "project_id", "start_time_unix_nano"),
    Index("ix_traces_session", "project_id", "session_id", "start_time_unix_nano"),
    Index("ix_traces_user", "project_id", "user_id", "start_time_unix_nano"),
)

ROLLUP_DIMENSIONS: tuple[str, ...] = (
    "service_name",
    "provider",
    "model",
    "operation",
    "environment",
)
ROLLUP_KEY: tuple[str, ...] = ("project_id", "bucket_start_unix_s", *ROLLUP_DIMENSIONS)
ROLLUP_SUMS: tuple[str, ...] = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "duration_ms_sum",
)


def _rollup_key_columns() -> list[Column[Any]]:
    return [
        Column("project_id", BigInteger, nullable=False),
        Column("bucket_start_unix_s", BigInteger, nullable=False),
        *[Column(d, Text, nullable=False, server_default="") for d in ROLLUP_DIMENSIONS],
    ]


def _sum_columns() -> list[Column[Any]]:
    return [
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),
        Column("input_tokens", BigInteger, nullable=False),
        Column("output_tokens", BigInteger, nullable=False),
        Column("cache_read_tokens", BigInteger, nullable=False),
        Column("cache_write_tokens", BigInteger, nullable=False),
        Column("reasoning_tokens", BigInteger, nullable=False),
        Column("cost_usd", UsdAmount, nullable=False),
        Column("duration_ms_sum", Double, nullable=False),
    ]


def _rollup_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        *_rollup_key_columns(),
        *_sum_columns(),
        PrimaryKeyConstraint(*ROLLUP_KEY, name=f"pk_{name}"),
    )


def _latency_table(name: str) -> Table:
    return Table(
        name,
        metadata,
        *_rollup_key_columns(),
        Column("bucket_index", SmallInteger, nullable=False),
        Column("count", BigInteger, nullable=False),
        PrimaryKeyConstraint(*ROLLUP_KEY, "bucket_index", name=f"pk_{name}"),
    )


# Per minute (bucket_start_unix_s a multiple of 60) and per hour (a multiple of 3600); both are
# written in the same transaction from the same rows, so an hourly row always equals the sum of
# its minutes. Long ranges read hours, their edges minutes (store/queries.rollup_segments).
rollups_1m = _rollup_table("rollups_1m")
rollups_1m_latency = _latency_table("rollups_1m_latency")
rollups_1h = _rollup_table("rollups_1h")
rollups_1h_latency = _latency_table("rollups_1h_latency")

# Hourly rollups pre-merged per dimension set (store/cube.py): one row per hour and value
# combination of at most two rollup dimensions (``dims``, a bit mask over ROLLUP_DIMENSIONS; the
# dimensions outside it are ''), split by ``llm`` (model != ''): the sums, and the latency
# histogram packed (store/histogram.to_stored): ``lo`` is its first bucket, ``counts`` the
# 8-byte little-endian counts from there; ``p50`` … its percentiles (histogram.QUANTILES), so an
# hourly series need not compute them. Derived from rollups_1h_latency after the hour, and
# trusted only for hours whose totals still match the stamp in rollups_1h_cube_hours.
rollups_1h_cube = Table(
    "rollups_1h_cube",
    metadata,
    Column("project_id", BigInteger, nullable=False),
    Column("dims", SmallInteger, nullable=False),
    Column("bucket_start_unix_s", BigInteger, nullable=False),
    Column("llm", SmallInteger, nullable=False),
    *[Column(d, Text, nullable=False, server_default="") for d in ROLLUP_DIMENSIONS],
    *_sum_columns(),
    *[Column(name, Double) for name in PERCENTILE_NAMES],
    Column("lo", SmallInteger, nullable=False),
    Column("counts", LargeBinary, nullable=False),
    PrimaryKeyConstraint(
        "project_id",
        "dims",
        "bucket_start_unix_s",
        "llm",
        *ROLLUP_DIMENSIONS,
        name="pk_rollups_1h_cube",
    ),
)
# The rollups_1h totals an hour's cube rows are stamped with.
CUBE_STAMP_SUMS: tuple[str, ...] = ("requests", "errors", "input_tokens", "output_tokens")


def _hour_totals_table(name: str) -> Table:
    """One row per (project, hour) of CUBE_STAMP_SUMS."""
    return Table(
        name,
        metadata,
        Column("project_id", BigInteger, nullable=False),
        Column("bucket_start_unix_s", BigInteger, nullable=False),
        *[Column(column, BigInteger, nullable=False) for column in CUBE_STAMP_SUMS],
        PrimaryKeyConstraint("project_id", "bucket_start_unix_s", name=f"pk_{name}"),
    )


# PostgreSQL only: the current rollups_1h totals of every (project, hour) that has rollups, kept
# by statement triggers on rollups_1h (migration 0010), so the cube's validity check reads one
# row per hour instead of adding up the hour's rollup rows.
rollups_1h_totals = _hour_totals_table("rollups_1h_totals")
# The totals of each hour when its cube rows were built (the stamp).
rollups_1h_cube_hours = _hour_totals_table("rollups_1h_cube_hours")

audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("project_id", BigInteger),
    Column("key_id", BigInteger),
    Column("actor", String(64), nullable=False, server_default=""),
    Column("action", String(64), nullable=False),
    Column("object_type", String(64), nullable=False, server_default=""),
    Column("object_id", String(256), nullable=False, server_default=""),
    Column("remote_addr", String(64), nullable=False, server_default=""),
    Column("outcome", String(32), nullable=False),
    Column("details", Text, nullable=False, server_default="{}"),
    Index("ix_audit_project_at", "project_id", "at"),
)

# --- OTLP logs and GenAI metrics (migration 0002_logs_metrics) ---------------------------------

# One OTLP log record. ``time_unix_nano`` is the record's time, or its observed time when the
# record has none ("If [time_unix_nano] is 0 ... use observed_time_unix_nano"). ``record_hash``
# identifies a record's content so a retried export is not stored twice.
log_records = Table(
    "log_records",
    metadata,
    Column("log_rowid", Id, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("time_unix_nano", BigInteger, nullable=False),
    Column("observed_time_unix_nano", BigInteger, nullable=False),
    Column("trace_id", String(32)),
    Column("span_id", String(16)),
    Column("severity_number", SmallInteger, nullable=False),
    Column("severity_text", Text),
    Column("event_name", Text),
    Column("body", Text),
    Column("attributes", Text, nullable=False),
    Column("resource_attributes", Text, nullable=False),
    Column("scope_name", Text),
    Column("service_name", Text),
    Column("flags", BigInteger, nullable=False),
    Column("record_hash", String(32), nullable=False),
    UniqueConstraint("project_id", "record_hash", name="uq_log_records_hash"),
    Index("ix_log_records_time", "project_id", "time_unix_nano"),
    Index("ix_log_records_trace", "project_id", "trace_id", "span_id"),
)

# One data point of a ``gen_ai.*`` OTLP metric. ``delta_count``/``delta_sum`` (and
# ``delta_bucket_counts``) hold what the point adds over the previous point of its series, so
# cumulative and delta temporality are summed the same way.
genai_metric_points = Table(
    "genai_metric_points",
    metadata,
    Column("point_rowid", Id, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("metric_name", Text, nullable=False),
    Column("metric_type", String(32), nullable=False),
    Column("unit", Text, nullable=False, server_default=""),
    Column("temporality", SmallInteger, nullable=False),
    Column("series_key", String(32), nullable=False),
    Column("service_name", Text, nullable=False, server_default=""),
    Column("provider", Text, nullable=False, server_default=""),
    Column("model", Text, nullable=False, server_default=""),
    Column("request_model", Text),
    Column("response_model", Text),
    Column("operation", Text, nullable=False, server_default=""),
    Column("token_type", Text, nullable=False, server_default=""),
    Column("error_type", Text),
    Column("start_time_unix_nano", BigInteger, nullable=False),
    Column("time_unix_nano", BigInteger, nullable=False),
    Column("count", BigInteger),
    Column("sum", Double),
    Column("min", Double),
    Column("max", Double),
    Column("bucket_counts", Text),
    Column("explicit_bounds", Text),
    Column("delta_count", BigInteger),
    Column("delta_sum", Double),
    Column("delta_bucket_counts", Text),
    Column("attributes", Text, nullable=False),
    Column("resource_attributes", Text, nullable=False),
    UniqueConstraint(
        "project_id",
        "series_key",
        "start_time_unix_nano",
        "time_unix_nano",
        name="uq_genai_metric_points",
    ),
    Index("ix_genai_metric_points_time", "project_id", "metric_name", "time_unix_nano"),
)

# --- in-app alert rules and their history (migration 0004_alerts) ------------------------------

# One alert rule of a project. ``threshold`` and ``last_value`` are exact decimal strings (cost
# thresholds must not go through binary floating point); ``filters`` and ``channels`` are JSON.
# ``state`` is ``ok`` or ``firing``; only the evaluator writes the ``state``/``last_*`` columns.
alert_rules = Table(
    "alert_rules",
    metadata,
    Column("rule_id", Id, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("name", String(128), nullable=False),
    Column("metric", String(32), nullable=False),
    Column("comparison", String(2), nullable=False),
    Column("threshold", String(64), nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("filters", Text, nullable=False, server_default="{}"),
    Column("channels", Text, nullable=False, server_default="[]"),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False, server_default="ok"),
    Column("last_value", String(64)),
    Column("last_evaluated_at", DateTime(timezone=True)),
    Column("last_changed_at", DateTime(timezone=True)),
    Column("last_notified_at", DateTime(timezone=True)),
    UniqueConstraint("project_id", "name", name="uq_alert_rules_name"),
)

# The history: one row per state change (``firing``, ``resolved``) or reminder, with the outcome
# of every notification sent for it (JSON list of {channel, target, outcome, error}).
alert_events = Table(
    "alert_events",
    metadata,
    Column("event_id", Id, primary_key=True, autoincrement=True),
    Column("rule_id", BigInteger, nullable=False),
    Column("project_id", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("value", String(64)),
    Column("threshold", String(64), nullable=False),
    Column("notifications", Text, nullable=False, server_default="[]"),
    Index("ix_alert_events_rule", "rule_id", "event_id"),
    Index("ix_alert_events_project_at", "project_id", "at"),
)
