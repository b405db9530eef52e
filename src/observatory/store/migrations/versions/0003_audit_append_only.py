"""The audit log is append-only, enforced by the database.

Revision ID: 0003_audit_append_only
Revises: 0001
Create Date: 2026-11-27

PostgreSQL: a row trigger refuses UPDATE always and DELETE unless the transaction set
``observatory.audit_retention`` to ``on`` (``SET LOCAL``, done only by the retention job in
``store/retention.py``); a statement trigger refuses TRUNCATE. SQLite has no session settings:
a trigger refuses UPDATE, DELETE stays possible for retention.
"""

from __future__ import annotations

from alembic import op

revision = "0003_audit_append_only"
down_revision = "0001"
branch_labels = None
depends_on = None

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION observatory_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND coalesce(current_setting('observatory.audit_retention', true), '') = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit entries are removed only by the retention job';
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION observatory_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION observatory_audit_append_only()"
        )
        return
    op.execute(
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE is not allowed'); END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS observatory_audit_append_only()")
        return
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
