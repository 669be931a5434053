"""Runtime: where replicas run (local processes or Ray Serve) and how they are reconciled."""
