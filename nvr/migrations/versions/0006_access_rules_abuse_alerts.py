"""Access rules that hold against one insider: two-admin user changes, login throttling, aggregated anonymous
denials, single-use playback tickets, abnormal-use alerts, identity-provider accounts.

- ``users`` gain ``auth_source`` (local | oidc), ``oidc_subject`` and ``tokens_valid_after_us`` (tokens made before
  it are refused: re-enabling a user never revives an old session).
- ``playback_tickets`` gain ``used_us`` and ``used_addr``: a ticket is claimed by one stream.
- New tables ``user_changes``, ``login_throttle``, ``denial_tally`` and ``alerts``.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auth_source", sa.String(length=20), server_default="local", nullable=False))
        batch_op.add_column(sa.Column("oidc_subject", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("tokens_valid_after_us", sa.BigInteger(), nullable=True))
        batch_op.create_unique_constraint("uq_users_oidc_subject", ["oidc_subject"])
    with op.batch_alter_table("playback_tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("used_us", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("used_addr", sa.String(length=100), nullable=True))
    op.create_table(
        "user_changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("requested_by", BigId, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("requested_by_name", sa.String(length=200), nullable=False),
        sa.Column("requested_us", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("decided_by", BigId, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("decided_us", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index("ix_user_changes_state", "user_changes", ["state"])
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=200), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_us", sa.BigInteger(), nullable=False),
        sa.Column("locked_until_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "denial_tally",
        sa.Column("bucket_us", sa.BigInteger(), primary_key=True),
        sa.Column("client_addr", sa.String(length=100), primary_key=True),
        sa.Column("code", sa.String(length=64), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_us", sa.BigInteger(), nullable=False),
        sa.Column("last_us", sa.BigInteger(), nullable=False),
        sa.Column("summarised", sa.Boolean(), server_default="0", nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(length=40), nullable=False),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("raised_us", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("suspended_grants", sa.Text(), server_default="", nullable=False),
        sa.Column("reviewed_by", BigId, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("reviewed_us", sa.BigInteger(), nullable=True),
        sa.Column("review_note", sa.Text(), nullable=True),
    )
    op.create_index("ix_alerts_user_rule_state", "alerts", ["user_id", "rule", "state"])


def downgrade() -> None:
    op.drop_index("ix_alerts_user_rule_state", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("denial_tally")
    op.drop_table("login_throttle")
    op.drop_index("ix_user_changes_state", table_name="user_changes")
    op.drop_table("user_changes")
    with op.batch_alter_table("playback_tickets", schema=None) as batch_op:
        batch_op.drop_column("used_addr")
        batch_op.drop_column("used_us")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("uq_users_oidc_subject", type_="unique")
        batch_op.drop_column("tokens_valid_after_us")
        batch_op.drop_column("oidc_subject")
        batch_op.drop_column("auth_source")
