"""dbsentry: an identity-aware database proxy."""

__version__ = "0.1.0"
