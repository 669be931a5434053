"""The worker: claims tasks under a lease (`leases`), runs them through a task handler (`loop`)."""
