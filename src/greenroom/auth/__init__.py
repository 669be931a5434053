"""Tokens, scopes and the principal of a request (api/auth.md)."""
