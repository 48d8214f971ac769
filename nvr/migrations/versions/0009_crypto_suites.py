"""Crypto suites and encryption (docs/decisions/0009-commercial-cryptography.md): every record names its algorithm.

``segments`` gains ``hash_alg`` (``sha256`` for every existing row), and for encrypted segments ``plain_digest``
and ``encryption``; ``audit_events`` gains ``hash_alg`` (None: SHA-256); ``volumes`` gains ``encryption`` (the
cipher new segments there use, None for plain); ``export_requests`` gains the recipient key a bundle is
encrypted to.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hash_alg", sa.String(length=16), server_default="sha256", nullable=False))
        batch_op.add_column(sa.Column("plain_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("encryption", sa.String(length=40), nullable=True))
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hash_alg", sa.String(length=16), nullable=True))
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("encryption", sa.String(length=40), nullable=True))
    with op.batch_alter_table("export_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recipient_key_pem", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("recipient_key_type", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("recipient_key_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_requests", schema=None) as batch_op:
        batch_op.drop_column("recipient_key_fingerprint")
        batch_op.drop_column("recipient_key_type")
        batch_op.drop_column("recipient_key_pem")
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_column("encryption")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("hash_alg")
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.drop_column("encryption")
        batch_op.drop_column("plain_digest")
        batch_op.drop_column("hash_alg")
