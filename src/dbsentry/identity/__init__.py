"""dbsentry.identity."""
