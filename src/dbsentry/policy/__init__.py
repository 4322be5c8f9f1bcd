"""dbsentry.policy."""
