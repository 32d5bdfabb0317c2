"""triage: the priority a job's results raised (inference.triage; NULL: no reasoning record) and why, on the job,
and the newest one on its study (the dashboard's column and filter). Existing rows keep their values (NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('triage_priority', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('triage_reason', sa.Text(), nullable=True))
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('triage_priority', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_studies_triage_priority', ['triage_priority'])


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_triage_priority')
        batch_op.drop_column('triage_priority')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('triage_reason')
        batch_op.drop_column('triage_priority')
