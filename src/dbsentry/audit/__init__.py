"""dbsentry.audit."""
