"""Hourly rollups beside the per-minute ones, for dashboards over long ranges.

Revision ID: 0006_hourly_rollups
Revises: 0001
Create Date: 2026-11-27

A 30-day dashboard over per-minute rollups reads ~43,000 buckets per dimension combination (and
~20 latency-histogram rows for each); the hourly tables cut that by 60. Existing per-minute rows
are folded into the new tables, so upgraded databases answer the same as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from observatory.store.schema import UsdAmount

revision = "0006_hourly_rollups"
down_revision = "0001"
branch_labels = None
depends_on = None

DIMENSIONS = ("service_name", "provider", "model", "operation", "environment")
KEY = ("project_id", "bucket_start_unix_s", *DIMENSIONS)
SUMS = (
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


def _key_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket_start_unix_s", sa.BigInteger(), nullable=False),
        *[sa.Column(d, sa.Text(), server_default="", nullable=False) for d in DIMENSIONS],
    ]


def upgrade() -> None:
    op.create_table(
        "rollups_1h",
        *_key_columns(),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", UsdAmount(), nullable=False),
        sa.Column("duration_ms_sum", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, name="pk_rollups_1h"),
    )
    op.create_table(
        "rollups_1h_latency",
        *_key_columns(),
        sa.Column("bucket_index", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, "bucket_index", name="pk_rollups_1h_latency"),
    )
    dims = ", ".join(DIMENSIONS)
    hour = "(bucket_start_unix_s / 3600) * 3600"
    op.execute(
        f"INSERT INTO rollups_1h (project_id, bucket_start_unix_s, {dims}, {', '.join(SUMS)}) "
        f"SELECT project_id, {hour}, {dims}, {', '.join(f'sum({c})' for c in SUMS)} "
        f"FROM rollups_1m GROUP BY project_id, {hour}, {dims}"
    )
    op.execute(
        f"INSERT INTO rollups_1h_latency (project_id, bucket_start_unix_s, {dims}, bucket_index, "
        f"count) SELECT project_id, {hour}, {dims}, bucket_index, sum(count) "
        f"FROM rollups_1m_latency GROUP BY project_id, {hour}, {dims}, bucket_index"
    )


def downgrade() -> None:
    op.drop_table("rollups_1h_latency")
    op.drop_table("rollups_1h")
