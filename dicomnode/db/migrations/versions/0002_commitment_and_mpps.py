"""storage commitment columns on deliveries, index on their SOP Instance UID (loop guard); performed procedure
steps (MPPS)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('performed_procedure_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('instance_uids', sa.JSON(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('calling_aet', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('acted_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('performed_procedure_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performed_procedure_steps_study_instance_uid'), ['study_instance_uid'],
                              unique=False)
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('commit_transaction_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('commit_requested_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('committed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('commit_timeouts', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index(batch_op.f('ix_deliveries_commit_transaction_uid'), ['commit_transaction_uid'],
                              unique=False)
        batch_op.create_index('ix_deliveries_sop_instance_uid', ['sop_instance_uid'], unique=False)


def downgrade() -> None:
    op.drop_table('performed_procedure_steps')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_sop_instance_uid')
        batch_op.drop_index(batch_op.f('ix_deliveries_commit_transaction_uid'))
        batch_op.drop_column('commit_timeouts')
        batch_op.drop_column('committed_at')
        batch_op.drop_column('commit_requested_at')
        batch_op.drop_column('commit_transaction_uid')
