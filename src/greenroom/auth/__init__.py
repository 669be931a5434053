"""Tokens, scopes and the principal of a request (docs/api/auth.md)."""
