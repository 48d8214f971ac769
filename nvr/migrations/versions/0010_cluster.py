"""Several recorder nodes on one PostgreSQL (nvr.cluster): nodes and leases with fencing tokens.

``nodes`` holds every node's heartbeat in database time; ``leases`` says which node records each camera and which
runs each once-per-cluster job, with a token that only grows. ``volumes`` gains the node that owns (writes) it.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("instance", sa.String(length=36), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("api_url", sa.Text(), nullable=True),
        sa.Column("labels", sa.Text(), nullable=False, server_default=""),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_us", sa.BigInteger(), nullable=False),
        sa.Column("cameras", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("clock_skew_us", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("lease_timeout_us", sa.BigInteger(), nullable=False, server_default="15000000"),
    )
    op.create_table(
        "leases",
        sa.Column("resource", sa.String(length=200), primary_key=True),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("acquired_us", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_us", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("placement", sa.Text(), nullable=True),
    )
    op.create_index("ix_leases_node_id", "leases", ["node_id"])
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_column("node_id")
    op.drop_index("ix_leases_node_id", table_name="leases")
    op.drop_table("leases")
    op.drop_table("nodes")
