"""Embedding models: where their weights come from, what they produce, their content hash."""
