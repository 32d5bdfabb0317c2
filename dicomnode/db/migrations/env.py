"""Alembic environment: runs online against the engine passed in ``config.attributes['engine']``."""
from __future__ import annotations

from alembic import context

from dicomnode.db.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` CLI use: sqlalchemy.url from the ini
    from dicomnode.db.engine import make_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic: sqlalchemy.url is not set and no engine was passed")
    engine = make_engine(url)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
