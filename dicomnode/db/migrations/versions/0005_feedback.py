"""feedback: the HL7 ORU^R01 messages the feedback listener received (stored before they are acknowledged) and the
per-finding verdicts of the compared reports; an index on studies.accession_number (reports are matched by it).

Revision ID: 0005_feedback
Revises: 0004 (triage)
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0005_feedback'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('feedback_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('peer', sa.String(length=128), nullable=True),
    sa.Column('sending_application', sa.String(length=180), nullable=True),
    sa.Column('sending_facility', sa.String(length=180), nullable=True),
    sa.Column('control_id', sa.String(length=199), nullable=True),
    sa.Column('dedup_key', sa.String(length=600), nullable=True),
    sa.Column('message_type', sa.String(length=32), nullable=True),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('result_status', sa.String(length=8), nullable=True),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('study_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('compared_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedup_key')
    )
    with op.batch_alter_table('feedback_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_messages_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_messages_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_messages_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_messages_study_id'), ['study_id'], unique=False)

    op.create_table('feedback_verdicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('finding', sa.String(length=64), nullable=False),
    sa.Column('radiologist', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=16), nullable=True),
    sa.Column('agreement', sa.String(length=16), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=80), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=True),
    sa.Column('reported_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.ForeignKeyConstraint(['message_id'], ['feedback_messages.id'], ),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', 'finding', name='uq_feedback_verdicts_message_finding')
    )
    with op.batch_alter_table('feedback_verdicts', schema=None) as batch_op:
        batch_op.create_index('ix_feedback_verdicts_finding_reported', ['finding', 'reported_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_verdicts_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_verdicts_study_id'), ['study_id'], unique=False)

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))
    op.drop_table('feedback_verdicts')
    op.drop_table('feedback_messages')
