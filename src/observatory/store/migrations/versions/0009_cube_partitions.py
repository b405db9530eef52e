"""PostgreSQL: the rollup cube partitioned by dimension set, so one query reads adjacent rows.

Revision ID: 0009_cube_partitions
Revises: 0008_rollup_cube
Create Date: 2026-12-07

Compaction writes the cube one hour at a time, all 16 dimension sets of that hour together, so
the rows one query reads (one set, many hours) lay scattered over the table: a 30-day series by
model read 4,181 rows from 2,672 heap pages. One list partition per set (and a DEFAULT partition
for a set added later) keeps each set's hours next to each other. The rows are copied over in
(set, project, hour) order. SQLite keeps the plain table.
"""

from __future__ import annotations

from alembic import op

revision = "0009_cube_partitions"
down_revision = "0008_rollup_cube"
branch_labels = None
depends_on = None

# store/cube.SETS when this was written: every set of at most two of the five dimensions.
SETS = (0, 1, 2, 4, 8, 16, 3, 5, 9, 17, 6, 10, 18, 12, 20, 24)
KEY = (
    "project_id, dims, bucket_start_unix_s, llm, "
    "service_name, provider, model, operation, environment"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE rollups_1h_cube RENAME TO rollups_1h_cube_old")
    op.execute("ALTER INDEX pk_rollups_1h_cube RENAME TO pk_rollups_1h_cube_old")
    op.execute(
        "CREATE TABLE rollups_1h_cube (LIKE rollups_1h_cube_old INCLUDING DEFAULTS) "
        "PARTITION BY LIST (dims)"
    )
    op.execute(f"ALTER TABLE rollups_1h_cube ADD CONSTRAINT pk_rollups_1h_cube PRIMARY KEY ({KEY})")
    for mask in SETS:
        op.execute(
            f"CREATE TABLE rollups_1h_cube_d{mask} PARTITION OF rollups_1h_cube "
            f"FOR VALUES IN ({mask})"
        )
    op.execute("CREATE TABLE rollups_1h_cube_default PARTITION OF rollups_1h_cube DEFAULT")
    op.execute(
        "INSERT INTO rollups_1h_cube SELECT * FROM rollups_1h_cube_old "
        "ORDER BY dims, project_id, bucket_start_unix_s"
    )
    op.execute("DROP TABLE rollups_1h_cube_old")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE rollups_1h_cube RENAME TO rollups_1h_cube_partitioned")
    op.execute("ALTER INDEX pk_rollups_1h_cube RENAME TO pk_rollups_1h_cube_partitioned")
    op.execute("CREATE TABLE rollups_1h_cube (LIKE rollups_1h_cube_partitioned INCLUDING DEFAULTS)")
    op.execute(f"ALTER TABLE rollups_1h_cube ADD CONSTRAINT pk_rollups_1h_cube PRIMARY KEY ({KEY})")
    op.execute("INSERT INTO rollups_1h_cube SELECT * FROM rollups_1h_cube_partitioned")
    op.execute("DROP TABLE rollups_1h_cube_partitioned")
