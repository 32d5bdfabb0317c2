"""Node state: models, engine/session factory, job states and alembic migrations."""
from dicomnode.db.engine import is_sqlite, make_engine, make_session_factory
from dicomnode.db.migrate import upgrade_database
from dicomnode.db.models import AuditEvent, Base, Delivery, Instance, Job, Study, utcnow
from dicomnode.db.states import DeliveryState, JobState

__all__ = [
    "AuditEvent", "Base", "Delivery", "DeliveryState", "Instance", "Job", "JobState", "Study",
    "is_sqlite", "make_engine", "make_session_factory", "upgrade_database", "utcnow",
]
