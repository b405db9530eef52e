"""OTLP log records and GenAI metric data points.

Revision ID: 0002_logs_metrics
Revises: 0001
Create Date: 2026-11-27

Plain tables on both databases (no partitioning): log records are deleted by time by the
retention job (``store.logs.delete_logs_before``), metric points are few (one per series per
export interval).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_logs_metrics"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "log_records",
        sa.Column("log_rowid", _ID, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("observed_time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("span_id", sa.String(length=16), nullable=True),
        sa.Column("severity_number", sa.SmallInteger(), nullable=False),
        sa.Column("severity_text", sa.Text(), nullable=True),
        sa.Column("event_name", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("resource_attributes", sa.Text(), nullable=False),
        sa.Column("scope_name", sa.Text(), nullable=True),
        sa.Column("service_name", sa.Text(), nullable=True),
        sa.Column("flags", sa.BigInteger(), nullable=False),
        sa.Column("record_hash", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("log_rowid"),
        sa.UniqueConstraint("project_id", "record_hash", name="uq_log_records_hash"),
    )
    op.create_index("ix_log_records_time", "log_records", ["project_id", "time_unix_nano"])
    op.create_index("ix_log_records_trace", "log_records", ["project_id", "trace_id", "span_id"])
    op.create_table(
        "genai_metric_points",
        sa.Column("point_rowid", _ID, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("metric_name", sa.Text(), nullable=False),
        sa.Column("metric_type", sa.String(length=32), nullable=False),
        sa.Column("unit", sa.Text(), server_default="", nullable=False),
        sa.Column("temporality", sa.SmallInteger(), nullable=False),
        sa.Column("series_key", sa.String(length=32), nullable=False),
        sa.Column("service_name", sa.Text(), server_default="", nullable=False),
        sa.Column("provider", sa.Text(), server_default="", nullable=False),
        sa.Column("model", sa.Text(), server_default="", nullable=False),
        sa.Column("request_model", sa.Text(), nullable=True),
        sa.Column("response_model", sa.Text(), nullable=True),
        sa.Column("operation", sa.Text(), server_default="", nullable=False),
        sa.Column("token_type", sa.Text(), server_default="", nullable=False),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("start_time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("time_unix_nano", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=True),
        sa.Column("sum", sa.Double(), nullable=True),
        sa.Column("min", sa.Double(), nullable=True),
        sa.Column("max", sa.Double(), nullable=True),
        sa.Column("bucket_counts", sa.Text(), nullable=True),
        sa.Column("explicit_bounds", sa.Text(), nullable=True),
        sa.Column("delta_count", sa.BigInteger(), nullable=True),
        sa.Column("delta_sum", sa.Double(), nullable=True),
        sa.Column("delta_bucket_counts", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("resource_attributes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("point_rowid"),
        sa.UniqueConstraint(
            "project_id",
            "series_key",
            "start_time_unix_nano",
            "time_unix_nano",
            name="uq_genai_metric_points",
        ),
    )
    op.create_index(
        "ix_genai_metric_points_time",
        "genai_metric_points",
        ["project_id", "metric_name", "time_unix_nano"],
    )


def downgrade() -> None:
    op.drop_table("genai_metric_points")
    op.drop_table("log_records")
