"""PostgreSQL: per-hour rollup totals kept by triggers, for the rollup cube's validity check.

Revision ID: 0010_rollup_hour_totals
Revises: 0009_cube_partitions
Create Date: 2026-12-07

Before it reads the cube, a dashboard query compares each hour's stamp with the hour's current
``rollups_1h`` totals; at 10 M spans that meant adding up ~25,000 rows per 30-day query (~8 ms).
``rollups_1h_totals`` holds those totals, one row per (project, hour), kept by statement triggers
on ``rollups_1h`` in the same transaction as every change to it (ingest, retention), so the check
reads 720 rows. A row goes when its hour's rollups do. SQLite keeps adding up the rows (its
dashboards are small enough).
"""

from __future__ import annotations

from alembic import op

revision = "0010_rollup_hour_totals"
down_revision = "0009_cube_partitions"
branch_labels = None
depends_on = None

SUMS = ("requests", "errors", "input_tokens", "output_tokens")
_KEY = "project_id, bucket_start_unix_s"


def _apply(select: str) -> str:
    """Add the per-hour deltas ``select`` yields (project, hour, *SUMS) to the totals."""
    sums = ", ".join(f"sum({c})::bigint" for c in SUMS)
    update = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in SUMS)
    return (
        f"INSERT INTO rollups_1h_totals AS t ({_KEY}, {', '.join(SUMS)}) "
        f"SELECT {_KEY}, {sums} FROM ({select}) d GROUP BY {_KEY} ORDER BY {_KEY} "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET {update};"
    )


def _rows(table: str, sign: str = "") -> str:
    return f"SELECT {_KEY}, {', '.join(f'{sign}{c} AS {c}' for c in SUMS)} FROM {table}"


FUNCTION = f"""
CREATE FUNCTION rollups_1h_totals_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_apply(_rows("new_rows"))}
    ELSIF TG_OP = 'UPDATE' THEN
        {_apply(_rows("new_rows") + " UNION ALL " + _rows("old_rows", "-"))}
    ELSE
        {_apply(_rows("old_rows", "-"))}
        -- Every rollup row counts at least one request: no requests left, no rows left.
        DELETE FROM rollups_1h_totals t USING (SELECT DISTINCT {_KEY} FROM old_rows) o
        WHERE t.project_id = o.project_id AND t.bucket_start_unix_s = o.bucket_start_unix_s
          AND t.requests <= 0;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # No change to rollups_1h may slip between the first totals and the triggers.
    op.execute("LOCK TABLE rollups_1h IN SHARE ROW EXCLUSIVE MODE")
    op.execute(
        "CREATE TABLE rollups_1h_totals (project_id BIGINT NOT NULL, "
        "bucket_start_unix_s BIGINT NOT NULL, "
        + ", ".join(f"{c} BIGINT NOT NULL" for c in SUMS)
        + f", CONSTRAINT pk_rollups_1h_totals PRIMARY KEY ({_KEY}))"
    )
    op.execute(
        f"INSERT INTO rollups_1h_totals ({_KEY}, {', '.join(SUMS)}) "
        f"SELECT {_KEY}, {', '.join(f'sum({c})::bigint' for c in SUMS)} FROM rollups_1h "
        f"GROUP BY {_KEY}"
    )
    op.execute(FUNCTION)
    for event, referencing in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER rollups_1h_totals_{event.lower()} AFTER {event} ON rollups_1h "
            f"REFERENCING {referencing} FOR EACH STATEMENT "
            "EXECUTE FUNCTION rollups_1h_totals_track()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER rollups_1h_totals_{event} ON rollups_1h")
    op.execute("DROP FUNCTION rollups_1h_totals_track()")
    op.execute("DROP TABLE rollups_1h_totals")
