"""Alembic environment: every package's tables share one metadata."""

from __future__ import annotations

from alembic import context

from ingest.schema import metadata
from storage.db import make_engine

config = context.config


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
