"""Database engines: each speaks one engine's wire protocol and SQL, and turns them into
the engine-neutral facts that ``dbsentry.governance`` and the policy rule on."""
