"""Unified identity login (api.oidc): pending browser logins and each identity-provider account's link.

- ``oidc_login_states``: one row per browser login begun at the provider (hashed state, nonce, PKCE verifier,
  where to go afterwards), single-use and expiring, so a login survives the request with several API workers.
- ``oidc_links``: per identity-provider user, the provider's access and refresh tokens from the newest browser
  login, used to check at the provider that the account still exists and is enabled.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "oidc_login_states",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("state_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("browser_hash", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=100), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("return_to", sa.String(length=500), nullable=True),
        sa.Column("client_addr", sa.String(length=64), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.Column("used_us", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_oidc_login_states_expires_us", "oidc_login_states", ["expires_us"])
    op.create_index("ix_oidc_login_states_client_addr", "oidc_login_states", ["client_addr", "expires_us"])
    op.create_table(
        "oidc_links",
        sa.Column("user_id", BigId, sa.ForeignKey("users.id"), primary_key=True, autoincrement=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("access_expires_us", sa.BigInteger(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("linked_us", sa.BigInteger(), nullable=False),
        sa.Column("checked_us", sa.BigInteger(), nullable=True),
        sa.Column("refreshing_us", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("oidc_links")
    op.drop_index("ix_oidc_login_states_client_addr", table_name="oidc_login_states")
    op.drop_index("ix_oidc_login_states_expires_us", table_name="oidc_login_states")
    op.drop_table("oidc_login_states")
