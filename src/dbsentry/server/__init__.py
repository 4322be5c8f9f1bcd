"""dbsentry.server."""
