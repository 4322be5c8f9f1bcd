"""dbsentry.wire.pg."""
