"""Playback sessions (HTTP Range): a player's range requests of one viewing share one read pin, one stream of the
grant's ``max_streams`` and one ``playback.start`` / ``playback.end`` pair (api.footage, "Playback sessions").

``read_pins`` gains the session's state: ``kind`` (``stream`` for one request's stream or an export job's read,
``session``), the ticket or bearer key it is found by and the client address it is bound to, the requests running
and answered, the bytes sent, until when an idle session stays open, its start event, why it must end, and the
context its end event is written with.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("read_pins", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="stream", nullable=False))
        batch_op.add_column(sa.Column("ticket_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("session_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("client_addr", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("active", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("requests", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("bytes_sent", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("idle_until_us", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("start_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("end_outcome", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("end_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("audit_context", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_read_pins_ticket_id"), ["ticket_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_read_pins_session_key"), ["session_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("read_pins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_read_pins_session_key"))
        batch_op.drop_index(batch_op.f("ix_read_pins_ticket_id"))
        for column in (
            "audit_context",
            "end_reason",
            "end_outcome",
            "start_seq",
            "idle_until_us",
            "bytes_sent",
            "requests",
            "active",
            "client_addr",
            "session_key",
            "ticket_id",
            "kind",
        ):
            batch_op.drop_column(column)
