"""Checkpoints form a chain (seq, prev_hash, hash); every camera's issued chain head is kept apart from its rows.

- ``checkpoints.seq`` counts checkpoints from 1 without holes and ``prev_hash`` is the SHA-256 of the previous
  checkpoint's body (``hash`` of this one's): version 2 bodies sign both, so a deleted, reordered or edited
  checkpoint shows. Existing (version 1) rows are numbered in creation order.
- ``integrity_findings`` get ``resolved_by``, ``resolution_note`` and ``intact_us``: a finding is resolved only by a
  person with a note (audited); an automatic check that finds the subject intact again only says so (``intact_us``).
- ``camera_chain_heads`` holds the newest seq and link ever issued per camera. The recorder continues from the newest
  of this, its last row, its last tombstone and the newest checkpoint's head, so deleting the newest rows never lets
  a sequence number be issued twice.

Revision ID: 0005
Revises: 0004
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    prev = None
    rows = conn.execute(sa.text("SELECT id, body FROM checkpoints ORDER BY created_us, id")).all()
    for n, (cid, body) in enumerate(rows, start=1):
        digest = hashlib.sha256(body.encode("ascii")).hexdigest()
        conn.execute(
            sa.text("UPDATE checkpoints SET seq = :n, prev_hash = :p, hash = :h WHERE id = :id"),
            {"n": n, "p": prev, "h": digest, "id": cid},
        )
        prev = digest
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.create_index("ux_checkpoints_seq", ["seq"], unique=True)

    with op.batch_alter_table("integrity_findings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("resolution_note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("intact_us", sa.BigInteger(), nullable=True))

    op.create_table(
        "camera_chain_heads",
        sa.Column("camera_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("link", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["camera_id"], ["cameras.id"], name="fk_camera_chain_heads_camera"),
        sa.PrimaryKeyConstraint("camera_id"),
    )
    conn.execute(
        sa.text(
            "INSERT INTO camera_chain_heads (camera_id, seq, link) "
            "SELECT s.camera_id, s.seq, s.link FROM segments s "
            "WHERE s.seq = (SELECT MAX(seq) FROM segments m WHERE m.camera_id = s.camera_id)"
        )
    )
    for cam, seq, link in conn.execute(
        sa.text(
            "SELECT t.camera_id, t.last_seq, t.last_link FROM segment_tombstones t "
            "WHERE t.last_seq = (SELECT MAX(last_seq) FROM segment_tombstones m WHERE m.camera_id = t.camera_id)"
        )
    ).all():
        have = conn.execute(sa.text("SELECT seq FROM camera_chain_heads WHERE camera_id = :c"), {"c": cam}).scalar()
        if have is None:
            conn.execute(
                sa.text("INSERT INTO camera_chain_heads (camera_id, seq, link) VALUES (:c, :s, :l)"),
                {"c": cam, "s": seq, "l": link},
            )
        elif seq > have:
            conn.execute(
                sa.text("UPDATE camera_chain_heads SET seq = :s, link = :l WHERE camera_id = :c"),
                {"c": cam, "s": seq, "l": link},
            )


def downgrade() -> None:
    op.drop_table("camera_chain_heads")
    with op.batch_alter_table("integrity_findings", schema=None) as batch_op:
        batch_op.drop_column("intact_us")
        batch_op.drop_column("resolution_note")
        batch_op.drop_column("resolved_by")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ux_checkpoints_seq")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("seq")
