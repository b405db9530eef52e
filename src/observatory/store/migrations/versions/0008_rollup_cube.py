"""Hourly latency histograms pre-merged per dimension set, for 30-day dashboards.

Revision ID: 0008_rollup_cube
Revises: 0007_grafana_reader
Create Date: 2026-11-27

A 30-day percentile series read ~800,000 ``rollups_1h_latency`` rows at 10 M spans; the cube
(store/cube.py) keeps the sums and one packed histogram per hour and value combination of at most
two dimensions, so the same series reads a few thousand. The tables start empty: the server's
compaction job fills them for past hours (``observatory rollups compact`` does it at once), and
until it has, queries read the per-dimension rows as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from observatory.store.schema import UsdAmount

revision = "0008_rollup_cube"
down_revision = "0007_grafana_reader"
branch_labels = None
depends_on = None

DIMENSIONS = ("service_name", "provider", "model", "operation", "environment")
COUNTS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def upgrade() -> None:
    op.create_table(
        "rollups_1h_cube",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("dims", sa.SmallInteger(), nullable=False),
        sa.Column("bucket_start_unix_s", sa.BigInteger(), nullable=False),
        sa.Column("llm", sa.SmallInteger(), nullable=False),
        *[sa.Column(d, sa.Text(), server_default="", nullable=False) for d in DIMENSIONS],
        *[sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTS],
        sa.Column("cost_usd", UsdAmount(), nullable=False),
        sa.Column("duration_ms_sum", sa.Double(), nullable=False),
        *[sa.Column(name, sa.Double(), nullable=True) for name in ("p50", "p90", "p95", "p99")],
        sa.Column("lo", sa.SmallInteger(), nullable=False),
        sa.Column("counts", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id",
            "dims",
            "bucket_start_unix_s",
            "llm",
            *DIMENSIONS,
            name="pk_rollups_1h_cube",
        ),
    )
    op.create_table(
        "rollups_1h_cube_hours",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("bucket_start_unix_s", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "project_id", "bucket_start_unix_s", name="pk_rollups_1h_cube_hours"
        ),
    )


def downgrade() -> None:
    op.drop_table("rollups_1h_cube_hours")
    op.drop_table("rollups_1h_cube")
