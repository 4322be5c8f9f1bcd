"""dbsentry.sql."""
