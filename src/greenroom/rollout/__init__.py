"""The green rollout: the deploy task's ordered, persisted, resumable steps; and the delete task."""
