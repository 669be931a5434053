"""The store's plumbing: engine, sessions and the Alembic scripts of every domain's tables."""
