"""Alembic environment: runs online against the engine passed in ``config.attributes['engine']``."""
from __future__ import annotations

from alembic import context

from dicomnode.db.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` CLI use: sqlalchemy.url from the ini
    from dicomnode.db.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
