"""In-app alert rules and their history.

Revision ID: 0004_alerts
Revises: 0001
Create Date: 2026-11-28

Plain tables on both databases. Thresholds and measured values are exact decimal strings.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_alerts"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("rule_id", _ID, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("comparison", sa.String(length=2), nullable=False),
        sa.Column("threshold", sa.String(length=64), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("filters", sa.Text(), server_default="{}", nullable=False),
        sa.Column("channels", sa.Text(), server_default="[]", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="ok", nullable=False),
        sa.Column("last_value", sa.String(length=64), nullable=True),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rule_id"),
        sa.UniqueConstraint("project_id", "name", name="uq_alert_rules_name"),
    )
    op.create_table(
        "alert_events",
        sa.Column("event_id", _ID, autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=True),
        sa.Column("threshold", sa.String(length=64), nullable=False),
        sa.Column("notifications", sa.Text(), server_default="[]", nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_alert_events_rule", "alert_events", ["rule_id", "event_id"])
    op.create_index("ix_alert_events_project_at", "alert_events", ["project_id", "at"])


def downgrade() -> None:
    op.drop_table("alert_events")
    op.drop_table("alert_rules")
