"""Serving: the router (live revision per served name, batching) and /v1/embeddings."""
