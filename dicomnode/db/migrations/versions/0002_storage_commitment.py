"""storage commitment columns on deliveries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('commit_transaction_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('commit_requested_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('committed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('commit_timeouts', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index(batch_op.f('ix_deliveries_commit_transaction_uid'), ['commit_transaction_uid'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_commit_transaction_uid'))
        batch_op.drop_column('commit_timeouts')
        batch_op.drop_column('committed_at')
        batch_op.drop_column('commit_requested_at')
        batch_op.drop_column('commit_transaction_uid')
