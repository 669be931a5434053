"""Workloads: revisions (immutable snapshots of what a deployment runs) and their phases."""
