"""Grant Grafana's read-only role SELECT on the dashboard tables, where that role exists.

Revision ID: 0007_grafana_reader
Revises: 0006_hourly_rollups
Create Date: 2026-11-27

The production stack creates ``grafana_reader`` (docker/compose/scripts/db-init.sh) without any
table grants, so key hashes and the audit log are never readable by Grafana. Selecting from the
partitioned ``spans`` table needs no grant on its partitions.
"""

from __future__ import annotations

from alembic import op

revision = "0007_grafana_reader"
down_revision = "0006_hourly_rollups"
branch_labels = None
depends_on = None

TABLES = (
    "projects",
    "spans",
    "traces",
    "rollups_1m",
    "rollups_1m_latency",
    "rollups_1h",
    "rollups_1h_latency",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') THEN "
        f"GRANT SELECT ON {', '.join(TABLES)} TO grafana_reader; END IF; END $$"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') THEN "
        f"REVOKE SELECT ON {', '.join(TABLES)} FROM grafana_reader; END IF; END $$"
    )
