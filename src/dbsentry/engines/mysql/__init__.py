"""MySQL and MariaDB: the wire codec and authentication (``wire``) and the SQL analysis (``sql``), beside PostgreSQL's."""
