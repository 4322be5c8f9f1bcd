"""MySQL and MariaDB: the wire codec and authentication (``wire``), beside PostgreSQL's."""
