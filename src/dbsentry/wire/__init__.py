"""dbsentry.wire."""
