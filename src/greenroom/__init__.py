"""greenroom: a control plane and serving gateway for text-embedding models."""

__version__ = "0.1.0"
