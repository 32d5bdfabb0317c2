"""deliveries carry any payload, not only a DICOM object: payload_key (what a destination is never queued twice:
the SOP Instance UID of a DICOM object, a message's id) and media_type; SOP Instance/Class UID nullable (a message
has none). Existing rows keep their values: payload_key is their SOP Instance UID, media_type application/dicom.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('payload_key', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('media_type', sa.String(length=64), nullable=False,
                                      server_default='application/dicom'))
    op.execute("UPDATE deliveries SET payload_key = sop_instance_uid")
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('payload_key', existing_type=sa.String(length=128), nullable=False)
        batch_op.alter_column('object_kind', existing_type=sa.String(length=8), type_=sa.String(length=16),
                              existing_nullable=False)
        batch_op.alter_column('sop_instance_uid', existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column('sop_class_uid', existing_type=sa.String(length=64), nullable=True)
        batch_op.drop_constraint('uq_deliveries_destination_sop', type_='unique')
        batch_op.create_unique_constraint('uq_deliveries_destination_payload', ['destination', 'payload_key'])


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE sop_instance_uid IS NULL")
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_constraint('uq_deliveries_destination_payload', type_='unique')
        batch_op.create_unique_constraint('uq_deliveries_destination_sop', ['destination', 'sop_instance_uid'])
        batch_op.alter_column('sop_class_uid', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('sop_instance_uid', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('object_kind', existing_type=sa.String(length=16), type_=sa.String(length=8),
                              existing_nullable=False)
        batch_op.drop_column('media_type')
        batch_op.drop_column('payload_key')
