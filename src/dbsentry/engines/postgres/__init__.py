"""PostgreSQL: the wire codec and authentication (``wire``), SQL analysis with PostgreSQL's
own parser (``sql``) and the per-connection session state machine (``session``)."""
