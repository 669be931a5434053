"""Embedding migrations: the stage of each served name that moves to a model whose vectors
differ (docs/api/migrations.md), its sample texts, the routers' shadow summaries and the
fitted adapters."""
