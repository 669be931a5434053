"""The audit log: every control-plane write, who made it, what it targeted and how it ended."""
