"""Initial schema: projects, keys, prices, spans, traces, rollups, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

On PostgreSQL the spans table is partitioned by day on start_time_unix_nano (native declarative
partitioning with a DEFAULT partition for stray timestamps), or, when the TimescaleDB extension
is available, a hypertable with compression. Its unique key must include the partition column.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from observatory.store.partitions import setup_spans_postgres
from observatory.store.schema import UsdAmount

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "api_keys",
        sa.Column(
            "key_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=128), server_default="", nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("key_prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_project", "api_keys", ["project_id"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column(
            "audit_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("key_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=64), server_default="", nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=64), server_default="", nullable=False),
        sa.Column("object_id", sa.String(length=256), server_default="", nullable=False),
        sa.Column("remote_addr", sa.String(length=64), server_default="", nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("details", sa.Text(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    op.create_index("ix_audit_project_at", "audit_log", ["project_id", "at"], unique=False)
    op.create_table(
        "model_prices",
        sa.Column(
            "price_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(length=64), server_default="", nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("input_usd_per_mtok", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("output_usd_per_mtok", sa.Numeric(precision=20, scale=10), nullable=False),
        sa.Column("cache_read_usd_per_mtok", sa.Numeric(precision=20, scale=10), nullable=True),
        sa.Column("cache_write_usd_per_mtok", sa.Numeric(precision=20, scale=10), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("price_id"),
        sa.UniqueConstraint("project_id", "provider", "model", name="uq_model_prices"),
    )
    op.create_table(
        "projects",
        sa.Column(
            "project_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settings", sa.Text(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("project_id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "rollups_1m",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket_start_unix_s", sa.BigInteger(), nullable=False),
        sa.Column("service_name", sa.Text(), server_default="", nullable=False),
        sa.Column("provider", sa.Text(), server_default="", nullable=False),
        sa.Column("model", sa.Text(), server_default="", nullable=False),
        sa.Column("operation", sa.Text(), server_default="", nullable=False),
        sa.Column("environment", sa.Text(), server_default="", nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", UsdAmount(), nullable=False),
        sa.Column("duration_ms_sum", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id",
            "bucket_start_unix_s",
            "service_name",
            "provider",
            "model",
            "operation",
            "environment",
            name="pk_rollups_1m",
        ),
    )
    op.create_table(
        "rollups_1m_latency",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket_start_unix_s", sa.BigInteger(), nullable=False),
        sa.Column("service_name", sa.Text(), server_default="", nullable=False),
        sa.Column("provider", sa.Text(), server_default="", nullable=False),
        sa.Column("model", sa.Text(), server_default="", nullable=False),
        sa.Column("operation", sa.Text(), server_default="", nullable=False),
        sa.Column("environment", sa.Text(), server_default="", nullable=False),
        sa.Column("bucket_index", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id",
            "bucket_start_unix_s",
            "service_name",
            "provider",
            "model",
            "operation",
            "environment",
            "bucket_index",
            name="pk_rollups_1m_latency",
        ),
    )
    if bind.dialect.name == "postgresql":
        _create_spans_postgres()
    else:
        _create_spans_sqlite()
    op.create_table(
        "traces",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("start_time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("end_time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("root_span_id", sa.String(length=16), nullable=True),
        sa.Column("root_span_name", sa.Text(), nullable=True),
        sa.Column("span_count", sa.BigInteger(), nullable=False),
        sa.Column("llm_call_count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_cost_usd", UsdAmount(), nullable=True),
        sa.Column("service_name", sa.Text(), nullable=True),
        sa.Column("environment", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "trace_id", name="pk_traces"),
    )
    op.create_index(
        "ix_traces_session",
        "traces",
        ["project_id", "session_id", "start_time_unix_nano"],
        unique=False,
    )
    op.create_index(
        "ix_traces_start", "traces", ["project_id", "start_time_unix_nano"], unique=False
    )
    op.create_index(
        "ix_traces_user", "traces", ["project_id", "user_id", "start_time_unix_nano"], unique=False
    )


def _create_spans_sqlite() -> None:
    op.create_table(
        "spans",
        sa.Column(
            "span_rowid",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=False),
        sa.Column("span_id", sa.String(length=16), nullable=False),
        sa.Column("parent_span_id", sa.String(length=16), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("start_time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("end_time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("service_name", sa.Text(), nullable=True),
        sa.Column("environment", sa.Text(), nullable=True),
        sa.Column("scope_name", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("operation", sa.Text(), nullable=True),
        sa.Column("request_model", sa.Text(), nullable=True),
        sa.Column("response_model", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=True),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=True),
        sa.Column("total_tokens", sa.BigInteger(), nullable=True),
        sa.Column("input_cost_usd", UsdAmount(), nullable=True),
        sa.Column("output_cost_usd", UsdAmount(), nullable=True),
        sa.Column("total_cost_usd", UsdAmount(), nullable=True),
        sa.Column("time_to_first_token_ms", sa.Double(), nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.Column("session_id", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("completion", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("resource_attributes", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("links", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("span_rowid"),
        sa.UniqueConstraint("project_id", "trace_id", "span_id", name="uq_spans_identity"),
    )
    op.create_index(
        "ix_spans_session",
        "spans",
        ["project_id", "session_id", "start_time_unix_nano"],
        unique=False,
    )
    op.create_index("ix_spans_start", "spans", ["project_id", "start_time_unix_nano"], unique=False)
    op.create_index("ix_spans_trace", "spans", ["project_id", "trace_id"], unique=False)
    op.create_index(
        "ix_spans_user", "spans", ["project_id", "user_id", "start_time_unix_nano"], unique=False
    )


SPANS_POSTGRES_COLUMNS = """
    span_rowid BIGSERIAL,
    project_id BIGINT NOT NULL,
    trace_id VARCHAR(32) NOT NULL,
    span_id VARCHAR(16) NOT NULL,
    parent_span_id VARCHAR(16),
    name TEXT NOT NULL,
    kind SMALLINT NOT NULL,
    start_time_unix_nano BIGINT NOT NULL,
    end_time_unix_nano BIGINT NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    status_code SMALLINT NOT NULL,
    status_message TEXT,
    service_name TEXT,
    environment TEXT,
    scope_name TEXT,
    provider TEXT,
    operation TEXT,
    request_model TEXT,
    response_model TEXT,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cache_read_tokens BIGINT,
    cache_write_tokens BIGINT,
    reasoning_tokens BIGINT,
    total_tokens BIGINT,
    input_cost_usd NUMERIC(20, 10),
    output_cost_usd NUMERIC(20, 10),
    total_cost_usd NUMERIC(20, 10),
    time_to_first_token_ms DOUBLE PRECISION,
    finish_reason TEXT,
    session_id TEXT,
    user_id TEXT,
    prompt TEXT,
    completion TEXT,
    attributes TEXT NOT NULL,
    resource_attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL,
    CONSTRAINT uq_spans_identity UNIQUE (project_id, trace_id, span_id, start_time_unix_nano)
"""


def _create_spans_postgres() -> None:
    setup_spans_postgres(op.get_bind(), SPANS_POSTGRES_COLUMNS)
    op.create_index("ix_spans_start", "spans", ["project_id", "start_time_unix_nano"])
    op.create_index(
        "ix_spans_session", "spans", ["project_id", "session_id", "start_time_unix_nano"]
    )
    op.create_index("ix_spans_user", "spans", ["project_id", "user_id", "start_time_unix_nano"])


def downgrade() -> None:
    for table in (
        "audit_log",
        "rollups_1m_latency",
        "rollups_1m",
        "traces",
        "spans",
        "model_prices",
        "api_keys",
        "projects",
    ):
        op.drop_table(table)
