"""dbsentry.session."""
