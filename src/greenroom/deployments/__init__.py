"""Deployments: the serving state of a model per workspace, its versioned configs and status."""
